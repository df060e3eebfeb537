package sendbuf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
)

func TestSectionReadAndSeek(t *testing.T) {
	data, p := randomFile(t, 100000)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := NewSection(f, 1000, 50000)
	if got, err := io.ReadAll(s); err != nil || !bytes.Equal(got, data[1000:51000]) {
		t.Fatalf("whole section: %d bytes, %v", len(got), err)
	}
	for _, tc := range []struct {
		off    int64
		whence int
		want   int64
	}{{10, io.SeekStart, 10}, {5, io.SeekCurrent, 15}, {-100, io.SeekEnd, 49900}, {10, io.SeekEnd, 50010}} {
		if pos, err := s.Seek(tc.off, tc.whence); err != nil || pos != tc.want {
			t.Fatalf("Seek(%d, %d) = %d, %v, want %d", tc.off, tc.whence, pos, err, tc.want)
		}
	}
	if n, err := s.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("read past the end: %d, %v", n, err)
	}
	if _, err := s.Seek(-1, io.SeekStart); err == nil {
		t.Fatal("seek to -1 accepted")
	}
	if _, err := s.Seek(0, 7); err == nil {
		t.Fatal("bad whence accepted")
	}
	s.Seek(-100, io.SeekEnd)
	if got, _ := io.ReadAll(s); !bytes.Equal(got, data[50900:51000]) {
		t.Fatal("tail after SeekEnd differs")
	}
	if off, _ := f.Seek(0, io.SeekCurrent); off != 0 {
		t.Fatalf("the file's own offset moved to %d", off)
	}
	// A file shorter than its section ends early with EOF.
	short := NewSection(f, 99990, 100)
	if got, err := io.ReadAll(short); err != nil || !bytes.Equal(got, data[99990:]) {
		t.Fatalf("past the file's end: %d bytes, %v", len(got), err)
	}
	// A closed file is an error, not EOF.
	f2, _ := os.Open(p)
	f2.Close()
	if _, err := NewSection(f2, 0, 10).Read(make([]byte, 10)); err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("closed file: %v", err)
	}
}

// ReadFrom sends a Section from its position, moves that position, and
// leaves the shared file's offset alone.
func TestReadFromSection(t *testing.T) {
	data, p := randomFile(t, 3<<20)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, tc := range []struct {
		name    string
		off, n  int64
		seek    int64
		limit   int64 // 0: none
		want    []byte
		wantPos int64
	}{
		{"whole section", 4096, 2 << 20, 0, 0, data[4096 : 4096+2<<20], 2 << 20},
		{"from its position", 100, 1 << 20, 5000, 0, data[5100 : 100+1<<20], 1 << 20},
		{"limited", 0, 3 << 20, 10, 700000, data[10:700010], 700010},
		{"limit past its end", 3<<20 - 50, 50, 0, 1000, data[3<<20-50:], 50},
		{"past the file's end", 3<<20 - 50, 500, 0, 0, data[3<<20-50:], 50},
		{"positioned at its end", 0, 100, 100, 0, nil, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSection(f, tc.off, tc.n)
			s.Seek(tc.seek, io.SeekStart)
			var r io.Reader = s
			if tc.limit > 0 {
				r = &io.LimitedReader{R: s, N: tc.limit}
			}
			served := make(chan struct{}, 1)
			got := fetch(t, serve(t, func() io.Reader { return r }, served))
			<-served
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("got %d bytes, want %d", len(got), len(tc.want))
			}
			if s.pos != tc.wantPos {
				t.Fatalf("position %d after sending, want %d", s.pos, tc.wantPos)
			}
			if lr, ok := r.(*io.LimitedReader); ok && lr.N != tc.limit-int64(len(tc.want)) {
				t.Fatalf("LimitedReader.N = %d, want %d", lr.N, tc.limit-int64(len(tc.want)))
			}
			if off, _ := f.Seek(0, io.SeekCurrent); off != 0 {
				t.Fatalf("the file's own offset moved to %d", off)
			}
		})
	}
}

// Many requests at once share one descriptor through net/http, each with
// a Range of its own.
func TestSectionsShareADescriptor(t *testing.T) {
	data, p := randomFile(t, 4<<20)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", fileModTime(t, f), NewSection(f, 0, int64(len(data))))
	})}
	go srv.Serve(Listener(plain, Boot))
	defer srv.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from, to := i*100003, i*100003+1<<20+i
			req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/", plain.Addr()), nil)
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || !bytes.Equal(got, data[from:to+1]) {
				errs <- fmt.Errorf("range %d-%d: %d bytes (%v), want %d", from, to, len(got), err, to+1-from)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
