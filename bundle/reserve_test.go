package bundle

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// reserveBundle writes a bundle whose blobs are reserved first and filled
// afterwards, concurrently and in pieces.
func reserveBundle(t *testing.T, path string, opts WriterOptions, blobs [][]byte, fill bool) (*Writer, []*Region) {
	t.Helper()
	w, err := Create(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	var regions []*Region
	for _, b := range blobs {
		d := digestOf(b)
		r, err := w.Reserve("blobs/sha256/"+d[7:], int64(len(b)), d, "")
		if err != nil {
			t.Fatal(err)
		}
		regions = append(regions, r)
	}
	if _, err := w.AddBytes("files/after", []byte("written after the reservations"), ""); err != nil {
		t.Fatal(err)
	}
	if !fill {
		return w, regions
	}
	var wg sync.WaitGroup
	for i, r := range regions {
		wg.Go(func() {
			// Back to front, in odd-sized pieces.
			b := blobs[i]
			for end := len(b); end > 0; {
				start := max(0, end-77777)
				if _, err := r.WriteAt(b[start:end], int64(start)); err != nil {
					t.Error(err)
					return
				}
				end = start
			}
			r.Complete()
		})
	}
	wg.Wait()
	return w, regions
}

func testBlobs() [][]byte {
	var blobs [][]byte
	for i, n := range []int{1<<20 + 5, 3 << 19, 0, 700000} {
		b := make([]byte, n)
		for k := range b {
			b[k] = byte(k*(i+3) + i)
		}
		blobs = append(blobs, b)
	}
	return blobs
}

func TestReserveFillsConcurrently(t *testing.T) {
	blobs := testBlobs()
	for _, tc := range []struct {
		name string
		opts WriterOptions
	}{
		{"one file", WriterOptions{}},
		// Regions straddle the 1 MiB part boundaries.
		{"parts", WriterOptions{PartSize: 1 << 20}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "site.bundle")
			pub, priv := newKey(t)
			w, _ := reserveBundle(t, path, tc.opts, blobs, true)
			if _, err := w.Finish(Metadata{Name: "reserved"}, priv); err != nil {
				t.Fatal(err)
			}
			b, err := Open(path, Trust{PublicKey: pub})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if _, err := b.Verify(context.Background(), VerifyOptions{}); err != nil {
				t.Fatal(err)
			}
			for _, blob := range blobs {
				r, err := b.Unchecked(digestOf(blob))
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(r)
				if !bytes.Equal(got, blob) {
					t.Errorf("blob of %d bytes differs", len(blob))
				}
			}
			if data, err := b.ReadFile("files/after"); err != nil || !strings.HasPrefix(string(data), "written after") {
				t.Errorf("entry after the reservations: %q %v", data, err)
			}
			if left, _ := filepath.Glob(filepath.Join(dir, "*.partial")); len(left) > 0 {
				t.Errorf("left behind: %v", left)
			}
		})
	}
}

func TestReserveRefusesUnfinishedAndOutOfRange(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "site.bundle")
	_, priv := newKey(t)
	w, regions := reserveBundle(t, path, WriterOptions{}, testBlobs(), false)
	if _, err := regions[0].WriteAt([]byte("xy"), regions[0].Size()-1); err == nil {
		t.Error("a write past the end of a region was accepted")
	}
	if _, err := regions[0].WriteAt([]byte("x"), -1); err == nil {
		t.Error("a write before a region was accepted")
	}
	regions[0].Complete()
	_, err := w.Finish(Metadata{}, priv)
	if err == nil || !strings.Contains(err.Error(), "was never written") {
		t.Fatalf("finish with unwritten regions: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an unfinished bundle was published: %v", err)
	}
}

// A resumable writer keeps its partial output on Abort and, opened again,
// finds what it wrote; the output is cut to the new layout's length.
func TestResumableKeepsPartialOutput(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "site.bundle")
	pub, priv := newKey(t)
	blobs := testBlobs()
	w, regions := reserveBundle(t, path, WriterOptions{Resumable: true}, blobs, false)
	if _, err := regions[0].WriteAt(blobs[0], 0); err != nil {
		t.Fatal(err)
	}
	// A longer tail than the next layout will have.
	if _, err := w.AddBytes("files/tail", make([]byte, 5<<20), ""); err != nil {
		t.Fatal(err)
	}
	w.Abort()
	if _, err := os.Stat(path + ".partial"); err != nil {
		t.Fatalf("partial output not kept: %v", err)
	}

	w, regions = reserveBundle(t, path, WriterOptions{Resumable: true}, blobs, false)
	got := make([]byte, len(blobs[0]))
	if n, err := regions[0].ReadAt(got, 0); n != len(got) || (err != nil && err != io.EOF) || !bytes.Equal(got, blobs[0]) {
		t.Fatalf("resumed region: %d bytes, %v", n, err)
	}
	regions[0].Complete()
	for i, r := range regions[1:] {
		if _, err := r.WriteAt(blobs[i+1], 0); err != nil {
			t.Fatal(err)
		}
		r.Complete()
	}
	if _, err := w.Finish(Metadata{}, priv); err != nil {
		t.Fatal(err)
	}
	b, err := Open(path, Trust{PublicKey: pub})
	if err != nil {
		t.Fatalf("open the resumed bundle (a stale tail would break its trailer): %v", err)
	}
	defer b.Close()
	if _, err := b.Verify(context.Background(), VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
}
