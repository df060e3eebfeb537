package build

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"airlock.dev/airlock/bundle"
)

// Image blobs go straight into the bundle, never through a cache: every
// blob's size is known from its manifest, so the whole archive is laid out
// first, each blob's range of the output is reserved, and workers fill the
// ranges as they download, hashing as they go. Until it is signed and
// renamed, the output is OUT.partial (OUT.NNN.partial when split) beside a
// journal, OUT.resume, that lists the blobs written. A later run reuses
//   - the blobs the journal lists, when the layout is the same, after
//     hashing them again where they lie (a power cut may have lost them);
//   - the blobs of an earlier bundle at OUT, hashed while they are copied.

const journalHeader = "airlock bundle build resume v1 layout "

// resumePath is the journal of an interrupted build of out.
func resumePath(out string) string { return out + ".resume" }

// journal records the blobs written into the partial output.
type journal struct {
	mu sync.Mutex
	f  *os.File
}

// readJournal returns the layout an earlier run planned and the digests
// it wrote. A missing or unreadable journal means nothing can be reused; a
// torn last line (the run was killed mid-write) is ignored.
func readJournal(path string) (layout string, done map[string]bool) {
	done = map[string]bool{}
	f, err := os.Open(path)
	if err != nil {
		return "", done
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), journalHeader) {
		return "", done
	}
	layout = strings.TrimPrefix(sc.Text(), journalHeader)
	for sc.Scan() {
		if d := sc.Text(); isDigest(d) {
			done[d] = true
		}
	}
	return layout, done
}

func isDigest(s string) bool {
	hexPart, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(hexPart) != 64 {
		return false
	}
	_, err := hex.DecodeString(hexPart)
	return err == nil
}

// startJournal opens the journal for layout: appending when it already
// describes this layout, anew otherwise.
func startJournal(path, layout string, same bool) (*journal, error) {
	flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND
	if !same {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return nil, fmt.Errorf("resume journal: %w", err)
	}
	if !same {
		if _, err := f.WriteString(journalHeader + layout + "\n"); err != nil {
			f.Close()
			return nil, fmt.Errorf("resume journal: %w", err)
		}
	}
	return &journal{f: f}, nil
}

func (j *journal) record(digest string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	_, err := j.f.WriteString(digest + "\n")
	return err
}

func (j *journal) close() { j.f.Close() }

// layoutID identifies a layout: the entries with their offsets, sizes and
// digests, and how the output is cut.
func layoutID(entries []bundle.Entry, opts bundle.WriterOptions, exeSize int64) string {
	h := sha256.New()
	fmt.Fprintf(h, "parts %d exe %d\n", opts.PartSize, exeSize)
	for _, e := range entries {
		fmt.Fprintf(h, "%s %d %d %s\n", e.Path, e.Offset, e.Size, e.Digest)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// slot is one blob to put into its reserved range.
type slot struct {
	bl *blob
	r  *bundle.Region
}

// fillStats counts bytes by where they came from.
type fillStats struct {
	fetched, reused, done atomic.Int64
}

// fill puts every slot's content in place: reused from the partial output
// (resumed) or from old, else downloaded. Blobs written are recorded in j.
func (b *builder) fill(ctx context.Context, slots []slot, resumed map[string]bool, old *bundle.Bundle, j *journal) (*fillStats, error) {
	st := &fillStats{}
	var total int64
	for _, s := range slots {
		total += s.bl.size
	}
	sort.Slice(slots, func(i, k int) bool { return slots[i].bl.size > slots[k].bl.size })
	if len(slots) == 0 {
		return st, nil
	}
	b.prog.linef("blobs: %d (%s) to put in place", len(slots), bundle.HumanSize(total))
	stop := b.prog.running(func() string {
		return fmt.Sprintf("blobs: %s of %s (%s downloaded, %s reused)", bundle.HumanSize(st.done.Load()), bundle.HumanSize(total),
			bundle.HumanSize(st.fetched.Load()), bundle.HumanSize(st.reused.Load()))
	})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for range b.opts.Concurrency {
		wg.Go(func() {
			buf := make([]byte, 1<<20)
			for {
				i := int(next.Add(1) - 1)
				if i >= len(slots) || ctx.Err() != nil {
					return
				}
				if err := b.fillSlot(ctx, slots[i], resumed, old, j, buf, st); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	stop()
	return st, errors.Join(errs...)
}

func (b *builder) fillSlot(ctx context.Context, s slot, resumed map[string]bool, old *bundle.Bundle, j *journal, buf []byte, st *fillStats) error {
	d, size := s.bl.digest, s.bl.size
	if resumed[d] {
		if got, n, err := hashReader(io.NewSectionReader(s.r, 0, size), buf); err == nil && got == d && n == size {
			s.r.Complete()
			st.reused.Add(size)
			st.done.Add(size)
			return nil
		}
		b.log.Info("bundle build: a blob the journal lists was not intact; fetching it again", "digest", d)
	}
	if old != nil {
		if src, err := old.Unchecked(d); err == nil && src.Size() == size {
			got, n, err := copyInto(s.r, src, buf, nil)
			if err == nil && got == d && n == size {
				s.r.Complete()
				st.reused.Add(size)
				st.done.Add(size)
				return j.record(d)
			}
			b.log.Info("bundle build: a blob of the earlier bundle did not match its digest; fetching it", "digest", d)
		}
	}
	rc, err := s.bl.fetch(ctx)
	if err != nil {
		return fmt.Errorf("fetch blob %s: %w", d, err)
	}
	defer rc.Close()
	got, n, err := copyInto(s.r, rc, buf, &st.done)
	st.fetched.Add(n)
	if err != nil {
		return fmt.Errorf("fetch blob %s: %w", d, err)
	}
	if got != d || n != size {
		return fmt.Errorf("fetch blob %s: got %d bytes with digest %s, want %d bytes", d, n, got, size)
	}
	s.r.Complete()
	return j.record(d)
}

// copyInto copies src into r from its start, hashing the bytes, and
// returns their digest and count. More bytes than r holds is an error.
func copyInto(r *bundle.Region, src io.Reader, buf []byte, done *atomic.Int64) (string, int64, error) {
	h := sha256.New()
	var off int64
	for {
		n, err := io.ReadFull(src, buf)
		if n > 0 {
			if off+int64(n) > r.Size() {
				return "", off, fmt.Errorf("more than the %d bytes the manifest gives", r.Size())
			}
			h.Write(buf[:n])
			if _, werr := r.WriteAt(buf[:n], off); werr != nil {
				return "", off, werr
			}
			off += int64(n)
			if done != nil {
				done.Add(int64(n))
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return "sha256:" + hex.EncodeToString(h.Sum(nil)), off, nil
		}
		if err != nil {
			return "", off, err
		}
	}
}

// hashReader returns the digest and length of what r holds.
func hashReader(r io.Reader, buf []byte) (string, int64, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, buf)
	if err != nil {
		return "", n, err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, nil
}
