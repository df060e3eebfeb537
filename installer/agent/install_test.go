package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"airlock.dev/airlock/installer/agent/efiboot"
	"airlock.dev/airlock/installer/agent/provision"
	"airlock.dev/airlock/installer/lab/testkit"
	"airlock.dev/airlock/installer/seed"
	"airlock.dev/airlock/services/agentapi"
)

func sh(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// An install order, carried out by the agent's Installer on a real loop
// device: the image (a GPT disk made with sfdisk, zstd-compressed, served
// over plain HTTP) lands on the pinned disk, the seed (over TLS, asked for
// with the boot's token) in a partition of its own at the disk's end that
// sfdisk accepts, and a seed whose digest does not match its order fails
// before the disk is touched.
func TestInstallOrderOnALoopDevice(t *testing.T) {
	raw, zimg := testkit.DiskImage(t, 16<<20)
	in, seedImg, seeds := orderServer(t, "m-test-1", map[string][]byte{"os.img.zst": zimg})

	// The disk: 64 MiB, on a loop device.
	_, backing := testkit.LoopDevice(t, 64<<20)
	order := agentapi.Order{ID: "o-7", Kind: agentapi.OrderInstall, Install: &agentapi.InstallOrder{
		Disk:  agentapi.DiskPin{Serial: backing, SizeBytes: 64 << 20},
		Image: agentapi.Artifact{Path: "/files/os.img.zst", Size: int64(len(raw)), SHA256: digest(raw)},
		Seed:  agentapi.Artifact{Path: "/seeds/m-test-1", Size: int64(len(seedImg)), SHA256: digest(seedImg)},
	}}

	// A seed that is not the one ordered: refused before the disk is touched.
	bad := order
	badInstall := *order.Install
	badInstall.Seed.SHA256 = strings.Repeat("0", 64)
	bad.Install = &badInstall
	if err := in.Run(context.Background(), bad, nil); !errors.Is(err, ErrSeed) {
		t.Fatalf("wrong seed digest: %v, want ErrSeed", err)
	}
	if disk, _ := os.ReadFile(backing); !bytes.Equal(disk[:1<<20], make([]byte, 1<<20)) {
		t.Fatal("the disk was written although the seed was refused")
	}

	// The seed from a plain-HTTP API is refused before anything is asked.
	plain := in
	plain.API = in.Base
	if err := plain.Run(context.Background(), order, nil); !errors.Is(err, ErrSeed) {
		t.Fatalf("seed over plain HTTP: %v, want ErrSeed", err)
	}

	var last uint64
	if err := in.Run(context.Background(), order, func(done, total uint64) { last = done }); err != nil {
		t.Fatal(err)
	}
	if n := seeds.Load(); n != 2 {
		t.Errorf("the seed was served %d times, want 2 (the refused order and this one)", n)
	}
	if last != uint64(len(raw)) {
		t.Errorf("last progress %d bytes, want %d", last, len(raw))
	}
	disk, err := os.ReadFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(disk[1<<20:16<<20-1<<20], raw[1<<20:16<<20-1<<20]) {
		t.Error("the image's body is not on the disk")
	}
	sfdisk := sh(t, "", "sfdisk", "--dump", backing)
	if !strings.Contains(sfdisk, `name="cidata"`) || !strings.Contains(sfdisk, `name="root"`) {
		t.Fatalf("partitions after install:\n%s", sfdisk)
	}
	sh(t, "", "sfdisk", "--verify", backing)
	// The seed partition holds the seed, byte for byte.
	var start int64
	for _, line := range strings.Split(sfdisk, "\n") {
		if strings.Contains(line, `name="cidata"`) {
			f := strings.Fields(strings.ReplaceAll(line, ",", " "))
			for i, w := range f {
				if w == "start=" && i+1 < len(f) {
					start = parseInt(t, f[i+1])
				}
			}
		}
	}
	if start == 0 || !bytes.Equal(disk[start*512:start*512+int64(len(seedImg))], seedImg) {
		t.Fatalf("the seed is not in its partition (start sector %d)", start)
	}
}

func parseInt(t *testing.T, s string) int64 {
	t.Helper()
	var n int64
	for _, c := range s {
		if c < '0' || c > '9' {
			t.Fatalf("not a number: %q", s)
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// The agent names the seed's partition type as the seed renderer does.
func TestSeedPartitionTypeIsTheRenderers(t *testing.T) {
	if !strings.EqualFold(SeedPartitionType, seed.PartitionType) {
		t.Fatalf("agent %s, seed %s", SeedPartitionType, seed.PartitionType)
	}
}

// installOrder is an install order for the disk pinned by serial, with
// the image and seed the test serves.
func installOrder(id, serial string, size uint64, raw, seedImg []byte, allowWipe bool) agentapi.Order {
	return agentapi.Order{ID: id, Kind: agentapi.OrderInstall, Install: &agentapi.InstallOrder{
		Disk:      agentapi.DiskPin{Serial: serial, SizeBytes: size},
		AllowWipe: allowWipe,
		Image:     agentapi.Artifact{Path: "/files/os.img.zst", Size: int64(len(raw)), SHA256: digest(raw)},
		Seed:      agentapi.Artifact{Path: "/seeds/m-test-1", Size: int64(len(seedImg)), SHA256: digest(seedImg)},
	}}
}

// orderServer serves the images (plain HTTP, at /files/NAME) and the seed
// of machine id (over TLS, at /seeds/ID, to the boot's token) as airlock
// does. It returns the agent's Installer, the seed and how many times the
// seed was served.
func orderServer(t *testing.T, id string, images map[string][]byte) (Installer, []byte, *atomic.Int64) {
	t.Helper()
	files, err := seed.Render(seed.Config{InstanceID: id, Hostname: "cp-1"})
	if err != nil {
		t.Fatal(err)
	}
	seedImg, err := files.Image()
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := agentapi.NewToken(nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		img, ok := images[strings.TrimPrefix(r.URL.Path, "/files/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(img)
	}))
	t.Cleanup(srv.Close)
	var seeds atomic.Int64
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/seeds/"+id || r.Header.Get("Authorization") != "Bearer "+tok.String() {
			http.NotFound(w, r)
			return
		}
		seeds.Add(1)
		w.Write(seedImg)
	}))
	t.Cleanup(api.Close)
	base, _ := url.Parse(srv.URL)
	apiURL, _ := url.Parse(api.URL)
	apiHTTP, err := TLSClient(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw}), 0)
	if err != nil {
		t.Fatal(err)
	}
	return Installer{Host: provision.Host{SysRoot: "/sys", DevRoot: "/dev", Loop: true}, Base: base, HTTP: srv.Client(),
		API: apiURL, APIHTTP: apiHTTP, Token: tok, Log: slog.New(slog.DiscardHandler)}, seedImg, &seeds
}

// blkidType is the filesystem type blkid finds on dev, or "".
func blkidType(t *testing.T, dev string) string {
	t.Helper()
	out, _ := exec.Command("blkid", "-p", "-o", "value", "-s", "TYPE", dev).Output()
	return strings.TrimSpace(string(out))
}

// A disk holding an ext4 filesystem (made by mkfs.ext4 on a loop device)
// is refused by an install order that does not allow wiping, and left as
// it was; the same order with allowWipe installs over it.
func TestInstallOrderRefusesAFilledDiskUnlessAllowed(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Fatal("mkfs.ext4 is needed: apt-get install e2fsprogs")
	}
	raw, zimg := testkit.DiskImage(t, 16<<20)
	in, seedImg, _ := orderServer(t, "m-test-1", map[string][]byte{"os.img.zst": zimg})
	dev, backing := testkit.LoopDevice(t, 64<<20)
	sh(t, "", "mkfs.ext4", "-q", "-F", dev)
	if got := blkidType(t, dev); got != "ext4" {
		t.Fatalf("blkid finds %q on the disk, want ext4", got)
	}
	err := in.Run(context.Background(), installOrder("o-1", backing, 64<<20, raw, seedImg, false), nil)
	if !errors.Is(err, provision.ErrNotEmpty) || !strings.Contains(err.Error(), "ext4") {
		t.Fatalf("install over ext4 without allowWipe: %v, want ErrNotEmpty naming ext4", err)
	}
	if got := blkidType(t, dev); got != "ext4" {
		t.Fatalf("the refused disk was changed: blkid finds %q", got)
	}
	if err := in.Run(context.Background(), installOrder("o-2", backing, 64<<20, raw, seedImg, true), nil); err != nil {
		t.Fatalf("install with allowWipe: %v", err)
	}
	disk, err := os.ReadFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(disk[1<<20:8<<20], raw[1<<20:8<<20]) {
		t.Fatal("the image is not on the wiped disk")
	}
	sh(t, "", "sfdisk", "--verify", backing)
}

// An order whose pinned disk is no longer there (the disk under the same
// kernel name was swapped for another, whose serial differs) is refused,
// and neither disk is touched.
func TestInstallOrderRefusesASwappedDisk(t *testing.T) {
	raw, zimg := testkit.DiskImage(t, 16<<20)
	in, seedImg, _ := orderServer(t, "m-test-1", map[string][]byte{"os.img.zst": zimg})
	dev, oldBacking := testkit.LoopDevice(t, 64<<20)
	if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
		t.Fatalf("losetup -d: %v %s", err, out)
	}
	newDev, newBacking := testkit.LoopDevice(t, 64<<20)
	t.Logf("pinned %s on %s; now %s holds %s", oldBacking, dev, newDev, newBacking)
	err := in.Run(context.Background(), installOrder("o-3", oldBacking, 64<<20, raw, seedImg, true), nil)
	if !errors.Is(err, provision.ErrNoMatch) {
		t.Fatalf("install on a swapped disk: %v, want ErrNoMatch", err)
	}
	for _, f := range []string{oldBacking, newBacking} {
		disk, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(disk, make([]byte, len(disk))) {
			t.Fatalf("%s was written although the order was refused", f)
		}
	}
}

// espImage is a GPT disk image of size bytes as the node image is laid
// out (bios_grub, an ESP with \EFI\BOOT\BOOTX64.EFI on FAT, root), raw and
// zstd-compressed.
func espImage(t *testing.T, size int64) (raw, compressed []byte) {
	t.Helper()
	for tool, pkg := range map[string]string{"sfdisk": "fdisk", "mkfs.vfat": "dosfstools", "mcopy": "mtools"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed: apt-get install %s", tool, pkg)
		}
	}
	dir := t.TempDir()
	img, esp, loader := dir+"/disk.raw", dir+"/esp.img", dir+"/BOOTX64.EFI"
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	sh(t, "start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios\n"+
		"start=4096, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=6D2B7E0A-1C3F-4B5A-9E8D-112233445566, name=esp\n"+
		"start=12288, size=8192, type=linux, name=root\n", "sfdisk", "--quiet", "--label", "gpt", img)
	sh(t, "", "mkfs.vfat", "-C", "-n", "ESP", esp, "4096")
	if err := os.WriteFile(loader, []byte("MZ not really a loader"), 0o644); err != nil {
		t.Fatal(err)
	}
	sh(t, "", "mmd", "-i", esp, "::/EFI", "::/EFI/BOOT")
	sh(t, "", "mcopy", "-i", esp, loader, "::/EFI/BOOT/BOOTX64.EFI")
	sh(t, "", "dd", "if="+esp, "of="+img, "bs=512", "seek=4096", "conv=notrunc", "status=none")
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	zimg := sh(t, "", "zstd", "-q", "-c", img)
	return raw, []byte(zimg)
}

// On a machine booted by UEFI, the install ends with a boot entry for the
// installed disk: Boot#### names the image's ESP (number, GUID, start,
// size) and its loader, and BootOrder has it right behind the firmware's
// network entry, so airlock still answers first. A BIOS machine (no
// efivarfs) gets none; an image without an ESP fails a UEFI install.
func TestInstallWritesUEFIBootEntry(t *testing.T) {
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Fatal("zstd is needed: apt-get install zstd")
	}
	raw, zimg := espImage(t, 16<<20)
	plain, zplain := testkit.DiskImage(t, 16<<20)
	in, seedImg, _ := orderServer(t, "m-test-2", map[string][]byte{"esp.img.zst": zimg, "plain.img.zst": zplain})

	// The firmware's variables before: its setup menu and PXE entry.
	vars := t.TempDir()
	pxe := "02010c00d041030a00000000" + "010106000002" + "030b2500525400123456" + strings.Repeat("00", 26) + "01" + "7fff0400"
	writeOption := func(name string, attrs byte, desc, pathHex string) {
		p, err := hex.DecodeString(pathHex)
		if err != nil {
			t.Fatal(err)
		}
		o, err := efiboot.LoadOption{Attributes: uint32(attrs), Description: desc, Path: p}.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vars+"/"+name+"-"+efiboot.GlobalGUID, append([]byte{7, 0, 0, 0}, o...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeOption("Boot0000", 0x09, "UiApp", "0407140000000000000000000000000000000000"+"7fff0400")
	writeOption("Boot0001", 0x01, "UEFI PXEv4 (MAC:525400123456)", pxe)
	if err := os.WriteFile(vars+"/BootOrder-"+efiboot.GlobalGUID, []byte{7, 0, 0, 0, 1, 0, 0, 0}, 0o644); err != nil {
		t.Fatal(err)
	}

	_, backing := testkit.LoopDevice(t, 64<<20)
	in.EFIVars = vars
	order := func(id, image string, raw []byte) agentapi.Order {
		return agentapi.Order{ID: id, Kind: agentapi.OrderInstall, Install: &agentapi.InstallOrder{
			Disk:      agentapi.DiskPin{Serial: backing, SizeBytes: 64 << 20},
			AllowWipe: true,
			Image:     agentapi.Artifact{Path: image, Size: int64(len(raw)), SHA256: digest(raw)},
			Seed:      agentapi.Artifact{Path: "/seeds/m-test-2", Size: int64(len(seedImg)), SHA256: digest(seedImg)},
		}}
	}
	if err := in.Run(context.Background(), order("o-1", "/files/esp.img.zst", raw), nil); err != nil {
		t.Fatal(err)
	}
	v := efiboot.Vars{Dir: vars}
	o, err := v.BootOption(2)
	if err != nil {
		t.Fatal(err)
	}
	if want := `* airlock installed system	HD(2,GPT,6d2b7e0a-1c3f-4b5a-9e8d-112233445566,0x1000,0x2000)/File(\EFI\BOOT\BOOTX64.EFI)`; o.String() != want {
		t.Fatalf("Boot0002 is %q, want %q", o.String(), want)
	}
	if bo, err := v.BootOrder(); err != nil || efiboot.FormatOrder(bo) != "0001,0002,0000" {
		t.Fatalf("BootOrder %s (%v), want 0001,0002,0000", efiboot.FormatOrder(bo), err)
	}

	// An image without an ESP cannot boot by UEFI: the order fails.
	err = in.Run(context.Background(), order("o-2", "/files/plain.img.zst", plain), nil)
	if !errors.Is(err, efiboot.ErrNoESP) {
		t.Fatalf("UEFI install of an image without an ESP: %v, want ErrNoESP", err)
	}
	// On a BIOS machine the same image installs and no variable is touched.
	bios := in
	bios.EFIVars = ""
	before, _ := os.ReadDir(vars)
	if err := bios.Run(context.Background(), order("o-3", "/files/plain.img.zst", plain), nil); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadDir(vars); len(after) != len(before) {
		t.Fatalf("a BIOS install changed the UEFI variables: %d files, were %d", len(after), len(before))
	}
}
