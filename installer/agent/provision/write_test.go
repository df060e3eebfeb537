package provision

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

func compress(t *testing.T, format string, raw []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch format {
	case "raw":
		return raw
	case "gzip":
		w = gzip.NewWriter(&buf)
	case "xz":
		w, err = xz.NewWriter(&buf)
	case "zstd":
		w, err = zstd.NewWriter(&buf)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// checkGPT runs sgdisk and sfdisk on dev and fails unless both find the
// GPT sound, with its backup at the disk's last sector.
func checkGPT(t *testing.T, dev string, diskSize int64) {
	t.Helper()
	need(t, "sgdisk", "gdisk")
	out := run(t, "sgdisk", "--verify", dev)
	if !strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk --verify %s:\n%s", dev, out)
	}
	combined, err := exec.Command("sfdisk", "--verify", dev).CombinedOutput()
	if out = string(combined); err != nil || !strings.Contains(out, "No errors detected") || strings.Contains(out, "mismatch") {
		t.Fatalf("sfdisk --verify %s:\n%s", dev, out)
	}
	dump := run(t, "sfdisk", "--dump", dev)
	wantLast := "last-lba: " + itoa(diskSize/512-34)
	if !strings.Contains(dump, wantLast) || !strings.Contains(dump, "name=\"root\"") {
		t.Fatalf("sfdisk --dump %s: want %q and both partitions:\n%s", dev, wantLast, dump)
	}
	hdr := readDev(t, dev, diskSize-512, 512)
	if string(hdr[:8]) != "EFI PART" {
		t.Fatal("no backup GPT header in the disk's last sector")
	}
}

func TestWriteFormats(t *testing.T) {
	img := makeImage(t, 48<<20)
	const diskSize = 64 << 20
	dev, _ := loopDevice(t, diskSize)
	for _, format := range []string{"raw", "gzip", "xz", "zstd"} {
		t.Run(format, func(t *testing.T) {
			// Old data everywhere, so that the image's zero runs must
			// really be zeroed on the disk.
			putDev(t, dev, bytes.Repeat([]byte{0xa5}, diskSize), 0)
			if _, err := Wipe(context.Background(), dev, true); err != nil {
				t.Fatal(err)
			}
			var progress []Progress
			spec := WriteSpec{RawSize: int64(len(img.raw)), RawSHA256: img.sha256}
			rep, err := Write(context.Background(), dev, bytes.NewReader(compress(t, format, img.raw)), spec,
				func(p Progress) { progress = append(progress, p) })
			if err != nil {
				t.Fatalf("Write: %v", err)
			}
			if rep.Format != format || rep.SHA256 != img.sha256 || rep.RawSize != int64(len(img.raw)) || !rep.BackupGPTMoved || rep.ZeroedOut < 4<<20 {
				t.Fatalf("report %+v", rep)
			}
			if len(progress) == 0 || progress[len(progress)-1].Written != spec.RawSize || progress[len(progress)-1].BytesPerSec <= 0 {
				t.Fatalf("progress %+v", progress)
			}
			for i := 1; i < len(progress); i++ {
				if progress[i].Written < progress[i-1].Written {
					t.Fatalf("progress went back: %+v", progress)
				}
			}
			// The image is on the disk: everything past the primary GPT's
			// sectors byte for byte, up to the image's old backup header
			// (cleared, now that the backup lives at the disk's end).
			got := readDev(t, dev, 0, int64(len(img.raw)))
			if !bytes.Equal(got[34*512:len(got)-512], img.raw[34*512:len(img.raw)-512]) {
				t.Fatal("disk content differs from the image")
			}
			if !allZero(got[len(got)-512:]) {
				t.Fatal("the image's own backup GPT header was left in the middle of the disk")
			}
			checkGPT(t, dev, diskSize)
			if out, code := blkid(t, dev, 1<<20); code != 0 || !strings.Contains(out, `LABEL="root"`) || !strings.Contains(out, `TYPE="ext4"`) {
				t.Fatalf("blkid on partition 1: exit %d %s", code, out)
			}
		})
	}
}

// TestWriteFlippedByte: a corrupt image fails with both digests and leaves
// the disk unbootable, even over a disk that held a good image.
func TestWriteFlippedByte(t *testing.T) {
	img := makeImage(t, 48<<20)
	dev, _ := loopDevice(t, 64<<20)
	spec := WriteSpec{RawSize: int64(len(img.raw)), RawSHA256: img.sha256}
	if _, err := Write(context.Background(), dev, bytes.NewReader(img.raw), spec, nil); err != nil {
		t.Fatalf("good image: %v", err)
	}
	bad := bytes.Clone(img.raw)
	bad[20<<20] ^= 0x01
	sum := sha256.Sum256(bad)
	badSum := hex.EncodeToString(sum[:])

	_, err := Write(context.Background(), dev, bytes.NewReader(compress(t, "zstd", bad)), spec, nil)
	var de *DigestError
	if !errors.As(err, &de) || de.Expected != img.sha256 || de.Actual != badSum {
		t.Fatalf("Write of a flipped byte: %v, want a DigestError with %s and %s", err, img.sha256, badSum)
	}
	if !strings.Contains(err.Error(), img.sha256) || !strings.Contains(err.Error(), badSum) {
		t.Fatalf("error does not name both digests: %v", err)
	}
	if !allZero(readDev(t, dev, 0, 1<<20)) {
		t.Fatal("first MiB not zero after a digest mismatch")
	}
	if out, code := blkid(t, dev, 0); code != 2 {
		t.Fatalf("blkid finds something on the failed disk: exit %d %s", code, out)
	}

	// Short and long streams fail on size, also leaving the first MiB zero.
	if _, err := Write(context.Background(), dev, bytes.NewReader(img.raw), spec, nil); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"short": img.raw[:len(img.raw)-4096], "long": append(bytes.Clone(img.raw), 0)} {
		if _, err := Write(context.Background(), dev, bytes.NewReader(data), spec, nil); !errors.Is(err, ErrSize) {
			t.Fatalf("%s image: %v, want ErrSize", name, err)
		}
		if !allZero(readDev(t, dev, 0, 1<<20)) {
			t.Fatalf("%s image: first MiB not zero", name)
		}
	}
}

// TestWriteHTTP streams a zstd image from a loopback HTTP server, as the
// agent fetches it from airlock; a broken connection fails the write.
func TestWriteHTTP(t *testing.T) {
	img := makeImage(t, 48<<20)
	dev, _ := loopDevice(t, 48<<20)
	body := compress(t, "zstd", img.raw)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cut" {
			w.Header().Set("Content-Length", itoa(int64(len(body))))
			w.Write(body[:len(body)/2])
			return
		}
		w.Write(body)
	}))
	defer srv.Close()
	ctx := context.Background()
	spec := WriteSpec{RawSize: int64(len(img.raw)), RawSHA256: img.sha256}

	src, err := Fetch(ctx, srv.Client(), srv.URL+"/cut")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Write(ctx, dev, src, spec, nil)
	src.Close()
	if err == nil || !allZero(readDev(t, dev, 0, 1<<20)) {
		t.Fatalf("cut stream: %v; first MiB must stay zero", err)
	}

	src, err = Fetch(ctx, srv.Client(), srv.URL+"/image")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	rep, err := Write(ctx, dev, src, spec, nil)
	if err != nil {
		t.Fatalf("Write from HTTP: %v", err)
	}
	// Same size as the disk: the backup GPT is already at the end.
	if rep.BackupGPTMoved || rep.Format != "zstd" {
		t.Fatalf("report %+v", rep)
	}
	if got := readDev(t, dev, 0, int64(len(img.raw))); !bytes.Equal(got, img.raw) {
		t.Fatal("disk differs from the image")
	}
	checkGPT(t, dev, int64(len(img.raw)))

	if _, err := Fetch(ctx, srv.Client(), "http://"+srv.Listener.Addr().String()+"/%zz"); err == nil {
		t.Fatal("Fetch of a bad URL succeeded")
	}
}

func TestWriteRefuses(t *testing.T) {
	img := makeImage(t, 48<<20)
	ctx := context.Background()
	spec := WriteSpec{RawSize: int64(len(img.raw)), RawSHA256: img.sha256}
	small, _ := loopDevice(t, 32<<20)
	if _, err := Write(ctx, small, bytes.NewReader(img.raw), spec, nil); !errors.Is(err, ErrSize) {
		t.Fatalf("image larger than the disk: %v, want ErrSize", err)
	}
	if !allZero(readDev(t, small, 0, 1<<20)) {
		t.Fatal("refused write touched the disk")
	}
	dev, _ := loopDevice(t, 64<<20)
	held, err := openExclusive(dev)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Write(ctx, dev, bytes.NewReader(img.raw), spec, nil)
	held.Close()
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("Write to a disk held exclusively: %v, want ErrBusy", err)
	}
	qcow := append([]byte("QFI\xfb"), make([]byte, 100)...)
	if _, err := Write(ctx, dev, bytes.NewReader(qcow), spec, nil); err == nil || !strings.Contains(err.Error(), "qcow2") {
		t.Fatalf("qcow2 stream: %v", err)
	}
	// A 4096-byte-sector GPT image on a 512-byte-sector disk.
	gpt4k := make([]byte, 2<<20)
	copy(gpt4k[4096:], "EFI PART")
	sum := sha256.Sum256(gpt4k)
	putDev(t, dev, img.raw[:1<<20], 0)
	if _, err := Write(ctx, dev, bytes.NewReader(gpt4k), WriteSpec{RawSize: int64(len(gpt4k)), RawSHA256: hex.EncodeToString(sum[:])}, nil); err == nil || !strings.Contains(err.Error(), "4096-byte sectors") {
		t.Fatalf("4K-sector image on a 512-byte disk: %v", err)
	}
	if !bytes.Equal(readDev(t, dev, 0, 1<<20), img.raw[:1<<20]) {
		t.Fatal("refused 4K-sector image touched the disk")
	}
	ctx2, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Write(ctx2, dev, bytes.NewReader(img.raw), spec, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

// TestInstall runs a whole order against a loop device: refused while the
// pin does not match or the disk holds a filesystem, done once allowed.
func TestInstall(t *testing.T) {
	img := makeImage(t, 48<<20)
	dev, backing := loopDevice(t, 64<<20)
	run(t, "mkfs.ext4", "-q", "-F", dev)
	h := Host{SysRoot: "/sys", DevRoot: "/dev", Loop: true}
	ctx := context.Background()
	spec := WriteSpec{RawSize: int64(len(img.raw)), RawSHA256: img.sha256}
	zst := compress(t, "zstd", img.raw)

	if _, err := h.Install(ctx, DiskPin{Serial: backing, SizeBytes: 128 << 20}, true, bytes.NewReader(zst), spec, nil); !errors.Is(err, ErrNoMatch) {
		t.Fatalf("Install with a stale size: %v, want ErrNoMatch", err)
	}
	rep, err := h.Install(ctx, DiskPin{Serial: backing, SizeBytes: 64 << 20}, false, bytes.NewReader(zst), spec, nil)
	if !errors.Is(err, ErrNotEmpty) || rep.Disk.Dev != dev {
		t.Fatalf("Install over ext4 without permission: %v (disk %q)", err, rep.Disk.Dev)
	}
	if out, code := blkid(t, dev, 0); code != 0 || !strings.Contains(out, `TYPE="ext4"`) {
		t.Fatalf("refused Install touched the disk: %s", out)
	}
	rep, err = h.Install(ctx, DiskPin{Serial: backing, SizeBytes: 64 << 20}, true, bytes.NewReader(zst), spec, nil)
	if err != nil {
		t.Fatalf("Install: %v", err)
	}
	if rep.Wipe.Before.Found[0].Type != "ext4" || rep.Write.SHA256 != img.sha256 || !rep.Write.BackupGPTMoved {
		t.Fatalf("report: wipe %s, write %+v", rep.Wipe.Before, rep.Write)
	}
	checkGPT(t, dev, 64<<20)
}

// TestWrite4K: a GPT image made for 4096-byte sectors (by sfdisk on a
// 4K-sector loop device) written to a larger 4K-sector disk.
func TestWrite4K(t *testing.T) {
	need(t, "sfdisk", "fdisk")
	src, _ := loopDevice(t, 48<<20, "--sector-size", "4096")
	cmd := exec.Command("sfdisk", "--quiet", src)
	cmd.Stdin = strings.NewReader("label: gpt\nstart=256, size=8192, type=linux, name=root\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "offset=1048576", src, "32M")
	raw := readDev(t, src, 0, 48<<20)
	if string(raw[4096:4104]) != "EFI PART" {
		t.Fatal("sfdisk made no 4K-sector GPT")
	}
	sum := sha256.Sum256(raw)
	spec := WriteSpec{RawSize: int64(len(raw)), RawSHA256: hex.EncodeToString(sum[:])}

	dev, _ := loopDevice(t, 64<<20, "--sector-size", "4096")
	rep, err := Write(context.Background(), dev, bytes.NewReader(compress(t, "zstd", raw)), spec, nil)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	if !rep.BackupGPTMoved {
		t.Fatal("backup GPT not moved")
	}
	need(t, "sgdisk", "gdisk")
	if out := run(t, "sgdisk", "--verify", dev); !strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk --verify:\n%s", out)
	}
	if hdr := readDev(t, dev, 64<<20-4096, 4096); string(hdr[:8]) != "EFI PART" {
		t.Fatal("no backup header in the last 4K sector")
	}
	if out, code := blkid(t, dev, 1<<20); code != 0 || !strings.Contains(out, `TYPE="ext4"`) {
		t.Fatalf("blkid on partition 1: %d %s", code, out)
	}
	// The same image on a 512-byte-sector disk is refused untouched.
	small, _ := loopDevice(t, 64<<20)
	if _, err := Write(context.Background(), small, bytes.NewReader(raw), spec, nil); err == nil || !strings.Contains(err.Error(), "GPT is for 4096-byte sectors") {
		t.Fatalf("4K image on a 512-byte disk: %v", err)
	}
}

// TestWriteStreamDigest: checking the digest of the stream as sent instead
// of the raw one; a flipped byte in the compressed stream is caught by
// the digest (or by the decompressor), and the first MiB stays zero.
func TestWriteStreamDigest(t *testing.T) {
	img := makeImage(t, 48<<20)
	dev, _ := loopDevice(t, 64<<20)
	for _, format := range []string{"zstd", "gzip", "xz", "raw"} {
		t.Run(format, func(t *testing.T) {
			stream := compress(t, format, img.raw)
			sum := sha256.Sum256(stream)
			spec := WriteSpec{RawSize: int64(len(img.raw)), StreamSHA256: hex.EncodeToString(sum[:])}
			rep, err := Write(context.Background(), dev, bytes.NewReader(stream), spec, nil)
			if err != nil {
				t.Fatalf("Write: %v", err)
			}
			if rep.StreamSHA256 != spec.StreamSHA256 || rep.SHA256 != "" {
				t.Fatalf("report %+v", rep)
			}
			if got := readDev(t, dev, 1<<20, 8<<20); !bytes.Equal(got, img.raw[1<<20:9<<20]) {
				t.Fatal("disk differs from the image")
			}
			bad := bytes.Clone(stream)
			bad[len(bad)/2] ^= 0x01
			badSum := sha256.Sum256(bad)
			_, err = Write(context.Background(), dev, bytes.NewReader(bad), spec, nil)
			var de *DigestError
			switch {
			case errors.As(err, &de):
				if de.Expected != spec.StreamSHA256 || de.Actual != hex.EncodeToString(badSum[:]) {
					t.Fatalf("digests %s / %s", de.Expected, de.Actual)
				}
			case err == nil:
				t.Fatal("a flipped byte in the stream was written")
			default: // the decompressor's own check or a corrupt block
				t.Logf("flipped byte: %v", err)
			}
			if !allZero(readDev(t, dev, 0, 1<<20)) {
				t.Fatal("first MiB not zero after a bad stream")
			}
		})
	}
	// A stream digest that does not match while the raw one does: both
	// are checked when both are given.
	stream := compress(t, "zstd", img.raw)
	spec := WriteSpec{RawSize: int64(len(img.raw)), RawSHA256: img.sha256, StreamSHA256: strings.Repeat("0", 64)}
	var de *DigestError
	if _, err := Write(context.Background(), dev, bytes.NewReader(stream), spec, nil); !errors.As(err, &de) || de.Expected != spec.StreamSHA256 {
		t.Fatalf("both digests, stream wrong: %v", err)
	}
	if _, err := Write(context.Background(), dev, bytes.NewReader(stream), WriteSpec{RawSize: int64(len(img.raw))}, nil); err == nil {
		t.Fatal("Write with no digest at all succeeded")
	}
}
