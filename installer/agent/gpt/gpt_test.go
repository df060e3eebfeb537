package gpt

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const basicData = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"

// image makes a 64 MiB GPT image with sfdisk (as an OS image would be) and
// grows the file to diskMiB, leaving the backup table where the image ended.
func image(t *testing.T, layout string, diskMiB int64) (*os.File, string) {
	t.Helper()
	if _, err := exec.LookPath("sfdisk"); err != nil {
		t.Fatal("sfdisk not found: apt-get install fdisk")
	}
	path := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 64<<20); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sfdisk", "--quiet", "--label", "gpt", path)
	cmd.Stdin = strings.NewReader(layout)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	if err := os.Truncate(path, diskMiB<<20); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, path
}

const layout = "start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649\nstart=4096, size=81920, type=0FC63DAF-8483-4772-8E79-3D69C8477DE4\n"

func TestAppendPartition(t *testing.T) {
	f, path := image(t, layout, 256)
	if out, _ := exec.Command("sfdisk", "--verify", path).CombinedOutput(); !strings.Contains(string(out), "backup") && !strings.Contains(string(out), "mismatch") {
		t.Logf("before: sfdisk --verify says: %s", out)
	}
	p, err := AppendPartition(f, 256<<20, 100<<10, basicData, "cidata")
	if err != nil {
		t.Fatal(err)
	}
	if p.Number != 3 || p.Size != 1<<20 || p.Offset != 254<<20 {
		t.Errorf("partition %+v, want number 3, 1 MiB at 254 MiB", p)
	}
	out, err := exec.Command("sfdisk", "--verify", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "No errors detected") {
		t.Errorf("sfdisk --verify: %v\n%s", err, out)
	}
	for _, bad := range []string{"mismatch", "backup", "not on the end", "corrupt"} {
		if strings.Contains(strings.ToLower(string(out)), bad) {
			t.Errorf("sfdisk --verify: %s", out)
		}
	}
	dump, err := exec.Command("sfdisk", "--dump", path).CombinedOutput()
	if err != nil {
		t.Fatalf("sfdisk --dump: %v\n%s", err, dump)
	}
	want := "start=      520192, size=        2048, type=" + basicData
	if !strings.Contains(string(dump), want) || !strings.Contains(string(dump), `name="cidata"`) || !strings.Contains(string(dump), "last-lba: 524254") {
		t.Errorf("sfdisk --dump lacks %q, name or last-lba:\n%s", want, dump)
	}
	// A second seed does not fit where the first now is.
	if _, err := AppendPartition(f, 256<<20, 1<<20, basicData, "again"); err == nil || !strings.Contains(err.Error(), "overlap") {
		t.Errorf("second append: %v, want an overlap error", err)
	}
}

func TestAppendPartitionRefuses(t *testing.T) {
	f, _ := image(t, layout, 128)
	if _, err := AppendPartition(f, 128<<20, 1<<20, "not-a-guid", "x"); err == nil {
		t.Error("bad type GUID accepted")
	}
	// A partition reaching the end leaves no room.
	g, _ := image(t, "start=2048, type=0FC63DAF-8483-4772-8E79-3D69C8477DE4\n", 64)
	if _, err := AppendPartition(g, 64<<20, 1<<20, basicData, "x"); err == nil {
		t.Error("appended over a partition that fills the disk")
	}
	// A damaged header is refused, not guessed at.
	if _, err := f.WriteAt([]byte{0xFF}, 512+40); err != nil {
		t.Fatal(err)
	}
	if _, err := AppendPartition(f, 128<<20, 1<<20, basicData, "x"); !errors.Is(err, ErrNoTable) {
		t.Errorf("damaged header: %v, want ErrNoTable", err)
	}
	blank := filepath.Join(t.TempDir(), "blank")
	os.WriteFile(blank, make([]byte, 1<<20), 0o644)
	b, _ := os.OpenFile(blank, os.O_RDWR, 0)
	defer b.Close()
	if _, err := AppendPartition(b, 1<<20, 1<<10, basicData, "x"); !errors.Is(err, ErrNoTable) {
		t.Errorf("blank disk: %v, want ErrNoTable", err)
	}
}

// Partitions reads back what sfdisk wrote: numbers, types, unique GUIDs,
// sectors and names (the ESP as a UEFI boot entry needs it).
func TestPartitionsAsSfdiskWroteThem(t *testing.T) {
	f, _ := image(t, "start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios\n"+
		"start=4096, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=6D2B7E0A-1C3F-4B5A-9E8D-112233445566, name=esp\n"+
		"start=12288, size=20480, type=linux, name=root\n", 64)
	parts, err := Partitions(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 3 {
		t.Fatalf("%d partitions: %+v", len(parts), parts)
	}
	esp := parts[1]
	if esp.Number != 2 || esp.Type != ESPType || esp.FirstLBA != 4096 || esp.LastLBA != 4096+8192-1 || esp.Name != "esp" ||
		esp.GUID() != "6d2b7e0a-1c3f-4b5a-9e8d-112233445566" {
		t.Fatalf("ESP read as %+v (GUID %s)", esp, esp.GUID())
	}
	// On disk the first three fields are little-endian.
	if esp.UniqueID[0] != 0x0A || esp.UniqueID[3] != 0x6D || esp.UniqueID[8] != 0x9E {
		t.Fatalf("unique ID bytes % x", esp.UniqueID)
	}
	if parts[0].Number != 1 || parts[0].Name != "bios" || parts[2].Number != 3 || parts[2].Type != "0FC63DAF-8483-4772-8E79-3D69D8477DE4" {
		t.Fatalf("partitions %+v", parts)
	}
	// A flipped byte in the entries is caught.
	b := make([]byte, 1)
	f.ReadAt(b, 2*512+130)
	b[0] ^= 0xff
	f.WriteAt(b, 2*512+130)
	if _, err := Partitions(f); !errors.Is(err, ErrNoTable) {
		t.Fatalf("corrupt entries: %v", err)
	}
}
