package efiboot

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The GUID 6d2b7e0a-1c3f-4b5a-9e8d-112233445566 as GPT and UEFI store it.
var espGUID = [16]byte{0x0a, 0x7e, 0x2b, 0x6d, 0x3f, 0x1c, 0x5a, 0x4b, 0x9e, 0x8d, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	var h []string
	for _, line := range strings.Split(s, "\n") {
		line, _, _ = strings.Cut(line, "#")
		h = append(h, strings.Fields(line)...)
	}
	b, err := hex.DecodeString(strings.Join(h, ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The encoding, byte for byte, of the entry efibootmgr shows as
//
//	Boot0003* airlock	HD(2,GPT,6d2b7e0a-...,0x1000,0x1f800)/File(\EFI\BOOT\BOOTX64.EFI)
//
// laid out by hand from the UEFI specification (EFI_LOAD_OPTION §3.1.3,
// hard drive media path §10.3.5.1, file path §10.3.5.4, end §10.3.1).
func TestLoadOptionBytes(t *testing.T) {
	path, err := DiskPath(HardDrive{Partition: 2, Start: 0x1000, Size: 0x1f800, GUID: espGUID}, `\EFI\BOOT\BOOTX64.EFI`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := LoadOption{Attributes: LoadOptionActive, Description: "airlock", Path: path}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := unhex(t, `
		01000000                                  # attributes: active
		5e00                                      # file path list: 42 + 48 + 4 = 94 bytes
		6100 6900 7200 6c00 6f00 6300 6b00 0000   # "airlock" UTF-16LE, NUL
		04 01 2a00                                # media, hard drive, 42 bytes
		02000000                                  # partition 2
		0010000000000000                          # start LBA 0x1000
		00f8010000000000                          # size 0x1f800
		0a7e2b6d3f1c5a4b9e8d112233445566          # partition GUID (mixed endian)
		02 02                                     # GPT, GUID signature
		04 04 3000                                # media, file path, 4 + 2 * (21 + 1) bytes
		5c00 4500 4600 4900 5c00 4200 4f00 4f00 5400 5c00 4200 4f00 4f00 5400 5800 3600 3400 2e00 4500 4600 4900 0000
		7f ff 0400                                # end of the entire path`)
	if !bytes.Equal(got, want) {
		t.Fatalf("load option\n got %x\nwant %x", got, want)
	}
	o, err := ParseLoadOption(got)
	if err != nil {
		t.Fatal(err)
	}
	if s := o.String(); s != `* airlock	HD(2,GPT,6d2b7e0a-1c3f-4b5a-9e8d-112233445566,0x1000,0x1f800)/File(\EFI\BOOT\BOOTX64.EFI)` {
		t.Fatalf("as efibootmgr -v shows it: %q", s)
	}
	if o.Path.IsNetwork() {
		t.Fatal("a disk path counted as a network one")
	}
}

// A network boot entry as OVMF makes one: PciRoot(0x0)/Pci(0x2,0x0)/
// MAC(525400123456,0x1)/IPv4(0.0.0.0,0x0,DHCP,...).
func ovmfPXEPath(t *testing.T) DevicePath {
	return DevicePath(unhex(t, `
		02 01 0c00 d041030a 00000000
		01 01 0600 00 02
		03 0b 2500 525400123456 0000000000000000000000000000000000000000000000000000 01
		03 0c 1b00 00000000 00000000 0000 0000 0000 00 00000000 00000000
		7f ff 0400`))
}

func TestNetworkPathsAreRecognised(t *testing.T) {
	p := ovmfPXEPath(t)
	if !p.IsNetwork() {
		t.Fatalf("%s not seen as a network path", p)
	}
	if !strings.Contains(p.String(), "MAC(525400123456,1)") {
		t.Fatalf("rendered %s", p)
	}
	for _, bad := range []string{"", "7f", "04 04 0200 7fff0400", "04 04 ff00 7fff0400", "04 04 0400"} {
		if _, err := DevicePath(unhex(t, bad)).nodes(); !errors.Is(err, ErrBadPath) {
			t.Errorf("path %q: %v, want ErrBadPath", bad, err)
		}
	}
	if _, err := ParseLoadOption(unhex(t, "01000000 0800 6100")); err == nil {
		t.Error("an unterminated description parsed")
	}
	if _, err := ParseLoadOption(unhex(t, "01000000 0800 61000000 7fff0400")); err == nil {
		t.Error("a path list longer than the option parsed")
	}
}

func writeVar(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	b := append([]byte{7, 0, 0, 0}, data...)
	if err := os.WriteFile(filepath.Join(dir, name+"-"+GlobalGUID), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func option(t *testing.T, attrs uint32, desc string, p DevicePath) []byte {
	t.Helper()
	b, err := LoadOption{Attributes: attrs, Description: desc, Path: p}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The variables OVMF leaves on a machine that network-booted with a blank
// disk: the setup menu, the PXE entry, the built-in shell. The disk's
// entry goes right behind the PXE entry (before the shell, which would
// otherwise run when iPXE exits), with the lowest free number; a second
// install overwrites it rather than adding another.
func TestAddBootEntryBehindTheNetwork(t *testing.T) {
	dir := t.TempDir()
	fv := DevicePath(unhex(t, "04 07 1400 00000000000000000000000000000000 04 06 1400 00000000000000000000000000000000 7fff0400"))
	writeVar(t, dir, "Boot0000", option(t, LoadOptionActive|LoadOptionHidden|LoadOptionCategoryApp, "UiApp", fv))
	writeVar(t, dir, "Boot0001", option(t, LoadOptionActive, "UEFI PXEv4 (MAC:525400123456)", ovmfPXEPath(t)))
	writeVar(t, dir, "Boot0002", option(t, LoadOptionActive, "EFI Internal Shell", fv))
	writeVar(t, dir, "Boot0004", option(t, LoadOptionActive, "UEFI Misc Device", fv))
	writeVar(t, dir, "BootOrder", []byte{0, 0, 1, 0, 2, 0, 4, 0})
	// Another vendor's variable that looks like a boot entry is left alone.
	if err := os.WriteFile(filepath.Join(dir, "Boot0003-00000000-0000-0000-0000-000000000000"), []byte{7, 0, 0, 0, 1}, 0o644); err != nil {
		t.Fatal(err)
	}
	v := Vars{Dir: dir}
	path, err := DiskPath(HardDrive{Partition: 2, Start: 4096, Size: 129024, GUID: espGUID}, FallbackLoader)
	if err != nil {
		t.Fatal(err)
	}
	e, err := v.AddBootEntry("airlock installed system", path)
	if err != nil {
		t.Fatal(err)
	}
	if e.Number != 3 || e.Reused || !slices.Equal(e.Order, []uint16{0, 1, 3, 2, 4}) {
		t.Fatalf("entry %+v (order %s), want Boot0003 in 0000,0001,0003,0002,0004", e, FormatOrder(e.Order))
	}
	raw, err := os.ReadFile(filepath.Join(dir, "Boot0003-"+GlobalGUID))
	if err != nil {
		t.Fatal(err)
	}
	if binary.LittleEndian.Uint32(raw) != 7 || !bytes.Equal(raw[4:], option(t, LoadOptionActive, "airlock installed system", path)) {
		t.Fatalf("Boot0003 holds %x", raw)
	}
	if order, err := v.BootOrder(); err != nil || FormatOrder(order) != "0000,0001,0003,0002,0004" {
		t.Fatalf("BootOrder %s, %v", FormatOrder(order), err)
	}

	// A reinstall (another image: another loader path) takes the same number.
	path2, _ := DiskPath(HardDrive{Partition: 1, Start: 2048, Size: 1000, GUID: espGUID}, `\EFI\debian\shimx64.efi`)
	e, err = v.AddBootEntry("airlock installed system", path2)
	if err != nil {
		t.Fatal(err)
	}
	if e.Number != 3 || !e.Reused || FormatOrder(e.Order) != "0000,0001,0003,0002,0004" {
		t.Fatalf("second install: %+v (order %s)", e, FormatOrder(e.Order))
	}
	if o, err := v.BootOption(3); err != nil || !strings.Contains(o.Path.String(), `File(\EFI\debian\shimx64.efi)`) {
		t.Fatalf("Boot0003 after the reinstall: %v %v", o, err)
	}
}

// Without BootOrder or network entries the entry is appended.
func TestAddBootEntryWithoutNetworkEntries(t *testing.T) {
	v := Vars{Dir: t.TempDir()}
	path, _ := DiskPath(HardDrive{Partition: 1, Start: 2048, Size: 2048, GUID: espGUID}, FallbackLoader)
	e, err := v.AddBootEntry("airlock", path)
	if err != nil || e.Number != 0 || FormatOrder(e.Order) != "0000" {
		t.Fatalf("%+v %v", e, err)
	}
}

func need(t *testing.T, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Fatalf("%s is needed: apt-get install %s", tool, pkg)
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// fatImage makes a FAT filesystem of kib KiB with mkfs.vfat (fatBits 12,
// 16 or 32) holding files (paths with / and their contents) via mtools.
func fatImage(t *testing.T, kib, fatBits int, files map[string]string) string {
	t.Helper()
	need(t, "mkfs.vfat", "dosfstools")
	need(t, "mcopy", "mtools")
	dir := t.TempDir()
	img := filepath.Join(dir, "fat.img")
	args := []string{"-C", "-n", "ESP"}
	if fatBits != 0 {
		args = append(args, "-F", string(rune('0'+fatBits/10))+string(rune('0'+fatBits%10)))
	}
	if fatBits >= 16 && kib < 16<<10 {
		args = append(args, "-s", "1")
	}
	run(t, "mkfs.vfat", append(args, img, itoa(kib))...)
	made := map[string]bool{}
	names := make([]string, 0, len(files))
	for p := range files {
		names = append(names, p)
	}
	slices.Sort(names)
	for _, p := range names {
		parts := strings.Split(p, "/")
		for i := 1; i < len(parts); i++ {
			d := strings.Join(parts[:i], "/")
			if !made[d] {
				run(t, "mmd", "-i", img, "::/"+d)
				made[d] = true
			}
		}
		src := filepath.Join(dir, "src")
		if err := os.WriteFile(src, []byte(files[p]), 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, "mcopy", "-i", img, src, "::/"+p)
	}
	return img
}

func itoa(n int) string {
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

// The loader is found on FAT12, FAT16 and FAT32 filesystems that
// mkfs.vfat and mtools made, in the case they store it; the removable
// path wins over a vendor's directory; a partition without a loader or
// without FAT says so.
func TestFindLoader(t *testing.T) {
	loader := strings.Repeat("MZ", 3000) // a few clusters
	for _, c := range []struct {
		name    string
		kib     int
		bits    int
		files   map[string]string
		want    string
		wantErr error
	}{
		{"fat12 removable path", 2048, 12, map[string]string{"EFI/BOOT/BOOTX64.EFI": loader}, `\EFI\BOOT\BOOTX64.EFI`, nil},
		{"fat16 as the node image", 63 * 1024, 16, map[string]string{"EFI/BOOT/BOOTX64.EFI": loader, "EFI/BOOT/grub.cfg": "x"}, `\EFI\BOOT\BOOTX64.EFI`, nil},
		{"fat32 lower case", 40 * 1024, 32, map[string]string{"efi/boot/bootx64.efi": loader}, `\efi\boot\bootx64.efi`, nil},
		{"vendor shim", 2048, 12, map[string]string{"EFI/debian/grubx64.efi": loader, "EFI/debian/shimx64.efi": loader, "EFI/zz/grubx64.efi": loader}, `\EFI\debian\shimx64.efi`, nil},
		{"many files with long names", 8192, 16, manyFiles(40, loader), `\EFI\BOOT\BOOTX64.EFI`, nil},
		{"empty loader ignored", 2048, 12, map[string]string{"EFI/BOOT/BOOTX64.EFI": "", "EFI/ubuntu/grubx64.efi": loader}, `\EFI\ubuntu\grubx64.efi`, nil},
		{"no loader", 2048, 12, map[string]string{"EFI/BOOT/README.TXT": "x"}, "", ErrNoLoader},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := fatImage(t, c.kib, c.bits, c.files)
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, _ := f.Stat()
			got, err := FindLoader(f, 0, st.Size())
			if !errors.Is(err, c.wantErr) || got != c.want {
				t.Fatalf("FindLoader = %q, %v; want %q, %v", got, err, c.want, c.wantErr)
			}
		})
	}
	if _, err := FindLoader(bytes.NewReader(make([]byte, 1<<20)), 0, 1<<20); !errors.Is(err, ErrNotFAT) {
		t.Fatalf("zeros: %v, want ErrNotFAT", err)
	}
}

func manyFiles(n int, loader string) map[string]string {
	m := map[string]string{"EFI/BOOT/BOOTX64.EFI": loader}
	for i := 0; i < n; i++ {
		m["EFI/BOOT/a rather long file name number "+itoa(i+1)+".txt"] = "x"
	}
	return m
}

// On a GPT disk as the node image lays it out (bios_grub, ESP, root), the
// entry names the ESP by number, GUID, start and size, and the loader on it.
func TestLoaderOnDisk(t *testing.T) {
	need(t, "sfdisk", "fdisk")
	disk := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 64<<20); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sfdisk", "--quiet", "--label", "gpt", disk)
	cmd.Stdin = strings.NewReader("start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios\n" +
		"start=4096, size=40960, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=6D2B7E0A-1C3F-4B5A-9E8D-112233445566, name=esp\n" +
		"start=45056, type=linux, name=root\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	img := fatImage(t, 20*1024, 16, map[string]string{"EFI/BOOT/BOOTX64.EFI": "MZ loader"})
	run(t, "dd", "if="+img, "of="+disk, "bs=512", "seek=4096", "conv=notrunc", "status=none")
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := LoaderOnDisk(f)
	if err != nil {
		t.Fatal(err)
	}
	if want := `HD(2,GPT,6d2b7e0a-1c3f-4b5a-9e8d-112233445566,0x1000,0xa000)/File(\EFI\BOOT\BOOTX64.EFI)`; p.String() != want {
		t.Fatalf("path %s, want %s", p, want)
	}
	// Without an ESP.
	cmd = exec.Command("sfdisk", "--quiet", "--label", "gpt", disk)
	cmd.Stdin = strings.NewReader("start=2048, type=linux\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	if _, err := LoaderOnDisk(f); !errors.Is(err, ErrNoESP) {
		t.Fatalf("no ESP: %v", err)
	}
}

// Decoding arbitrary bytes never panics.
func FuzzParseLoadOption(f *testing.F) {
	p, _ := DiskPath(HardDrive{Partition: 1, Start: 1, Size: 1, GUID: espGUID}, FallbackLoader)
	b, _ := LoadOption{Attributes: 1, Description: "x", Path: p}.Marshal()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		if o, err := ParseLoadOption(b); err == nil {
			_ = o.String()
			_ = o.Path.IsNetwork()
		}
	})
}

// Reading a partition of arbitrary bytes as FAT never panics nor runs
// away (directory chains are bounded).
func FuzzFindLoader(f *testing.F) {
	need := func(tool string) bool { _, err := exec.LookPath(tool); return err == nil }
	if !need("mkfs.vfat") || !need("mcopy") {
		f.Fatal("mkfs.vfat and mcopy are needed: apt-get install dosfstools mtools")
	}
	dir := f.TempDir()
	img, src := filepath.Join(dir, "fat.img"), filepath.Join(dir, "BOOTX64.EFI")
	os.WriteFile(src, []byte("MZ"), 0o644)
	for _, c := range [][]string{{"mkfs.vfat", "-C", img, "256"}, {"mmd", "-i", img, "::/EFI", "::/EFI/BOOT"}, {"mcopy", "-i", img, src, "::/EFI/BOOT/BOOTX64.EFI"}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			f.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	b, err := os.ReadFile(img)
	if err != nil {
		f.Fatal(err)
	}
	if p, err := FindLoader(bytes.NewReader(b), 0, int64(len(b))); err != nil || p != FallbackLoader {
		f.Fatalf("seed image: %q %v", p, err)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		FindLoader(bytes.NewReader(b), 0, int64(len(b)))
	})
}
