package bundle

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// within runs f and fails the test if it does not return in time: a FIFO
// opened the ordinary way would block forever.
func within(t *testing.T, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: still blocked after 10 s", what)
		return nil
	}
}

func mkfifo(t *testing.T, path string) string {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Every path the bundle code opens must be a regular file: a FIFO, a
// device or a directory in its place is refused at once, and key files
// are bounded before they are read.
func TestRefusesSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	tb := writeTestBundle(t, mkdir(t, dir, "ok"), WriterOptions{}, nil)
	split := writeTestBundle(t, mkdir(t, dir, "split"), WriterOptions{PartSize: 1 << 20}, nil)
	// Part 2 of the split bundle replaced by a FIFO, then by a directory.
	part2 := split.path + ".002"
	os.Remove(part2)
	mkfifo(t, part2)
	big := filepath.Join(dir, "big.pub")
	os.WriteFile(big, make([]byte, maxKeyFileSize+1), 0o644)

	opens := map[string]string{
		"FIFO as the bundle":      mkfifo(t, filepath.Join(dir, "fifo.bundle")),
		"device as the bundle":    "/dev/zero",
		"directory as the bundle": dir,
		"FIFO as a part":          split.path,
	}
	for name, p := range opens {
		err := within(t, name, func() error {
			b, err := Open(p, Trust{PublicKey: tb.pub})
			if err == nil {
				b.Close()
			}
			return err
		})
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("%s: %v", name, err)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	os.Remove(part2)
	os.Mkdir(part2, 0o755)
	if _, err := Open(split.path, Trust{PublicKey: split.pub}); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Errorf("directory as a part: %v", err)
	}

	keys := map[string]string{
		"FIFO as the key":      mkfifo(t, filepath.Join(dir, "fifo.pub")),
		"device as the key":    "/dev/zero",
		"directory as the key": dir,
		"key too big":          big,
	}
	for name, p := range keys {
		err := within(t, name, func() error { _, err := ReadPublicKey(p); return err })
		if err == nil {
			t.Errorf("%s: read", name)
			continue
		}
		t.Logf("%s: %v", name, err)
		err = within(t, name, func() error { _, err := ReadPrivateKey(p); return err })
		if err == nil {
			t.Errorf("%s as a signing key: read", name)
		}
		// As the key recorded at first use.
		err = within(t, name, func() error { _, err := Open(tb.path, Trust{FirstUse: true, PinFile: p}); return err })
		if err == nil {
			t.Errorf("%s as the key trusted at first use: accepted", name)
		}
	}

	// The writer: a FIFO as the executable to embed, or in place of the
	// output; keygen --force over a FIFO.
	fifoExe := mkfifo(t, filepath.Join(dir, "fifo-exe"))
	if err := within(t, "embed a FIFO", func() error {
		_, err := Create(filepath.Join(dir, "out.bundle"), WriterOptions{Executable: fifoExe})
		return err
	}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("embed a FIFO: %v", err)
	}
	mkfifo(t, filepath.Join(dir, "fifo-out.bundle.partial"))
	if err := within(t, "write into a FIFO", func() error {
		w, err := Create(filepath.Join(dir, "fifo-out.bundle"), WriterOptions{})
		if err != nil {
			return err
		}
		_, err = w.AddBytes("oci-layout", []byte("{}"), "")
		w.Abort()
		return err
	}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("write into a FIFO: %v", err)
	}
	mkfifo(t, filepath.Join(dir, "k.key"))
	if err := within(t, "keygen over a FIFO", func() error {
		_, err := Keygen(KeygenOptions{PrivatePath: filepath.Join(dir, "k.key"), PublicPath: filepath.Join(dir, "k.pub"), Force: true})
		return err
	}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("keygen --force over a FIFO: %v", err)
	}
	// keygen --force over a world-readable file makes it owner-only.
	os.WriteFile(filepath.Join(dir, "k2.key"), []byte("old"), 0o644)
	if _, err := Keygen(KeygenOptions{PrivatePath: filepath.Join(dir, "k2.key"), PublicPath: filepath.Join(dir, "k2.pub"), Force: true}); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(dir, "k2.key")); st.Mode().Perm() != 0o600 {
		t.Errorf("private key over an old file: mode %v", st.Mode())
	}
	if _, err := ReadPrivateKey(filepath.Join(dir, "k2.key")); err != nil {
		t.Errorf("the key written over an old file: %v", err)
	}
}
