package build

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"airlock.dev/airlock/bundle"
)

// Image blobs go straight into the bundle, never through a cache: every
// blob's size is known from its manifest, so the whole archive is laid out
// first, each blob's range of the output is reserved, and workers fill the
// ranges as they download, hashing as they go. A dropped download is taken
// up again where it stopped (HTTP Range), a few times, before the build
// gives up. Until it is signed and renamed, the output is OUT.partial
// (OUT.NNN.partial when split) beside a journal, OUT.resume, that lists the
// blobs written and how far the unfinished ones got. A later run reuses
//   - the blobs the journal lists, when the layout is the same, after
//     hashing them again where they lie (a power cut may have lost them),
//     and the start of unfinished ones (fetched whole again if the blob
//     then does not match its digest);
//   - the blobs of an earlier bundle at OUT, hashed while they are copied.

const journalHeader = "airlock bundle build resume v1 layout "

// resumePath is the journal of an interrupted build of out.
func resumePath(out string) string { return out + ".resume" }

// journal records the blobs written into the partial output.
type journal struct {
	mu sync.Mutex
	f  *os.File
}

// resumeState is what an earlier run of a layout left: blobs written
// whole, and how far unfinished downloads got.
type resumeState struct {
	done map[string]bool
	at   map[string]int64
}

// readJournal returns the layout an earlier run planned and what it
// wrote. A missing or unreadable journal means nothing can be reused; a
// torn last line (the run was killed mid-write) is ignored, as is any
// line that does not parse.
func readJournal(path string) (layout string, rs resumeState) {
	rs = resumeState{done: map[string]bool{}, at: map[string]int64{}}
	f, err := bundle.OpenRegular(path)
	if err != nil {
		return "", rs
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), journalHeader) {
		return "", rs
	}
	layout = strings.TrimPrefix(sc.Text(), journalHeader)
	for sc.Scan() {
		line := sc.Text()
		if isDigest(line) {
			rs.done[line] = true
			continue
		}
		var d string
		var n int64
		if _, err := fmt.Sscanf(line, "at %s %d", &d, &n); err == nil && isDigest(d) && n > 0 {
			rs.at[d] = max(rs.at[d], n)
		}
	}
	return layout, rs
}

// isDigest accepts the sha256 digests the journal records.
func isDigest(s string) bool { return strings.HasPrefix(s, "sha256:") && digestRE.MatchString(s) }

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

// record notes a blob written whole.
func (j *journal) record(digest string) error { return j.line(digest) }

// progress notes that the first n bytes of a blob are written.
func (j *journal) progress(digest string, n int64) error {
	return j.line(fmt.Sprintf("at %s %d", digest, n))
}

func (j *journal) line(s string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	_, err := j.f.WriteString(s + "\n")
	return err
}

func (j *journal) close() { j.f.Close() }

// layoutID identifies a layout: the entries with their offsets, sizes and
// digests, and how the output is cut.
func layoutID(entries []bundle.Entry, partSize, exeSize int64) string {
	h := sha256.New()
	fmt.Fprintf(h, "parts %d exe %d\n", partSize, exeSize)
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

// reuse counts n bytes found in place, not downloaded.
func (st *fillStats) reuse(n int64) {
	st.reused.Add(n)
	st.done.Add(n)
}

// fill puts every slot's content in place: reused from the partial output
// (resumed) or from old, else downloaded. Blobs written are recorded in j.
func (b *builder) fill(ctx context.Context, slots []slot, resumed resumeState, old *bundle.Bundle, j *journal) (*fillStats, error) {
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

func (b *builder) fillSlot(ctx context.Context, s slot, resumed resumeState, old *bundle.Bundle, j *journal, buf []byte, st *fillStats) error {
	d, size := s.bl.digest, s.bl.size
	if resumed.done[d] {
		if got, n, err := hashReader(io.NewSectionReader(s.r, 0, size), buf); err == nil && got == d && n == size {
			s.r.Complete()
			st.reuse(size)
			return nil
		}
		b.log.Info("bundle build: a blob the journal lists was not intact; fetching it again", "digest", d)
	}
	if old != nil {
		if src, err := old.Unchecked(d); err == nil && src.Size() == size {
			dl := &download{r: s.r, h: sha256.New()}
			err := dl.copy(src, buf, nil)
			if err == nil && dl.digest() == d && dl.off == size {
				s.r.Complete()
				st.reuse(size)
				return j.record(d)
			}
			b.log.Info("bundle build: a blob of the earlier bundle did not match its digest; fetching it", "digest", d)
		}
	}
	dl := &download{r: s.r, h: sha256.New(), j: j, digest0: d, every: b.opts.checkpointEvery}
	kept := int64(0)
	if at := resumed.at[d]; at > 0 && at < size {
		// Hash what an earlier run wrote and go on from there.
		if _, err := io.CopyBuffer(dl.h, io.NewSectionReader(s.r, 0, at), buf); err == nil {
			dl.off, kept = at, at
			st.reuse(at)
		} else {
			dl.h.Reset()
		}
	}
	if err := b.fetchInto(ctx, s.bl, dl, buf, st); err != nil {
		return err
	}
	if (dl.digest() != d || dl.off != size) && kept > 0 {
		// What the earlier run left was damaged: once more, whole.
		b.log.Info("bundle build: a resumed blob did not match its digest; fetching it whole", "digest", d)
		st.reused.Add(-kept)
		dl.reset(st)
		if err := b.fetchInto(ctx, s.bl, dl, buf, st); err != nil {
			return err
		}
	}
	if got := dl.digest(); got != d || dl.off != size {
		return fmt.Errorf("fetch blob %s: got %d bytes with digest %s, want %d bytes", d, dl.off, got, size)
	}
	s.r.Complete()
	return j.record(d)
}

// fetchInto downloads the rest of a blob into dl, taking a dropped
// download up again where it stopped, with growing pauses, a few times.
func (b *builder) fetchInto(ctx context.Context, bl *blob, dl *download, buf []byte, st *fillStats) error {
	const attempts = 4
	wait := b.opts.retryWait
	for attempt := 1; ; attempt++ {
		err := b.fetchOnce(ctx, bl, dl, buf, st)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || attempt == attempts || !retryable(err) {
			return fmt.Errorf("fetch blob %s: %w", bl.digest, err)
		}
		b.log.Warn("bundle build: download dropped; taking it up again", "digest", bl.digest, "at", dl.off, "attempt", attempt, "err", err)
		b.prog.linef("blob %s: %v; taking it up again at %s in %s", shortD(bl.digest), err, bundle.HumanSize(dl.off), wait)
		select {
		case <-ctx.Done():
			return fmt.Errorf("fetch blob %s: %w", bl.digest, ctx.Err())
		case <-time.After(wait):
		}
		wait *= 2
	}
}

func (b *builder) fetchOnce(ctx context.Context, bl *blob, dl *download, buf []byte, st *fillStats) error {
	if dl.off >= bl.size {
		return nil
	}
	rc, start, err := bl.fetch(ctx, dl.off)
	if err != nil {
		return err
	}
	defer rc.Close()
	if start != dl.off {
		dl.reset(st) // the source sent the whole blob
	}
	before := dl.off
	err = dl.copy(rc, buf, &st.done)
	st.fetched.Add(dl.off - before)
	return err
}

// download is a blob being written into its region: bytes so far, and
// their hash.
type download struct {
	r       *bundle.Region
	h       hash.Hash
	off     int64
	j       *journal // progress checkpoints, every `every` bytes
	digest0 string
	every   int64
	noted   int64
}

func (dl *download) digest() string { return "sha256:" + hex.EncodeToString(dl.h.Sum(nil)) }

func (dl *download) reset(st *fillStats) {
	st.done.Add(-dl.off)
	dl.h.Reset()
	dl.off, dl.noted = 0, 0
}

// copy appends what src holds. More bytes than the region holds is an
// error.
func (dl *download) copy(src io.Reader, buf []byte, done *atomic.Int64) error {
	for {
		n, err := readFull(src, buf)
		if n > 0 {
			if dl.off+int64(n) > dl.r.Size() {
				return fmt.Errorf("more than the %d bytes the manifest gives", dl.r.Size())
			}
			dl.h.Write(buf[:n])
			if _, werr := dl.r.WriteAt(buf[:n], dl.off); werr != nil {
				return werr
			}
			dl.off += int64(n)
			if done != nil {
				done.Add(int64(n))
			}
			if dl.j != nil && dl.off-dl.noted >= dl.every {
				if err := dl.j.progress(dl.digest0, dl.off); err != nil {
					return err
				}
				dl.noted = dl.off
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// readFull reads until buf is full or src fails. Unlike io.ReadFull it
// leaves src's error as it is: io.EOF is the end, while an HTTP body cut
// short says io.ErrUnexpectedEOF.
func readFull(src io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := src.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
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
