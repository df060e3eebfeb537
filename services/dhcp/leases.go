package dhcp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// LeaseState is where a lease is in its life.
type LeaseState string

// Lease states.
const (
	StateOffered  LeaseState = "offered"
	StateBound    LeaseState = "bound"
	StateReleased LeaseState = "released"
	StateDeclined LeaseState = "declined"
	// StateConflict: the address answered a probe; held out of the pool.
	StateConflict LeaseState = "conflict"
)

// Lease is one address's record. An address has at most one lease, and a
// MAC holds at most one: binding a MAC to an address frees any other
// address it held, in the same store batch.
type Lease struct {
	IP       netip.Addr `json:"ip"`
	MAC      string     `json:"mac,omitempty"`
	Hostname string     `json:"hostname,omitempty"`
	State    LeaseState `json:"state"`
	Expires  time.Time  `json:"expires"`
	// probing: offered, but the probe of the address has not finished
	// (or bound to a stranger and being probed for reclaiming).
	probing bool
	// checked is when a stranger's bound address was last probed for
	// reclaiming.
	checked time.Time
	// stored is the expiry the store holds for this lease.
	stored time.Time
	// replaces, on an offer, is the lease its MAC holds at another
	// address (bound or released: a discovery lease when a reservation
	// now applies), which the ACK of the offer frees.
	replaces *Lease
	// declinedBy is the MAC that declined the address: a stranger's
	// DECLINE counts against the strangers' share and can be reclaimed,
	// or a host could take new addresses and decline them to empty the
	// pool for the decline hold.
	declinedBy string
}

// holder is the MAC an address is held for or by: the lease's, or the one
// that declined it.
func (l *Lease) holder() string {
	if l.MAC != "" {
		return l.MAC
	}
	return l.declinedBy
}

// active reports whether the lease still holds its address at now.
func (l *Lease) active(now time.Time) bool {
	switch l.State {
	case StateBound, StateOffered, StateDeclined, StateConflict:
		return now.Before(l.Expires)
	}
	return false
}

// LeaseStore persists leases. Save receives a batch of changed leases
// (upserts by IP); Load returns the latest of each. The installer's state
// store implements it; MemStore and FileStore are the package's own.
type LeaseStore interface {
	Load(ctx context.Context) ([]Lease, error)
	Save(ctx context.Context, batch []Lease) error
}

// MemStore is an in-memory LeaseStore for tests.
type MemStore struct {
	mu     sync.Mutex
	leases map[netip.Addr]Lease
	// Batches counts Save calls.
	batches int
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore { return &MemStore{leases: map[netip.Addr]Lease{}} }

// Load implements LeaseStore.
func (s *MemStore) Load(context.Context) ([]Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Lease, 0, len(s.leases))
	for _, l := range s.leases {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out, nil
}

// Save implements LeaseStore.
func (s *MemStore) Save(_ context.Context, batch []Lease) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches++
	for _, l := range batch {
		s.leases[l.IP] = l
	}
	return nil
}

// Batches returns how many Save calls the store has seen.
func (s *MemStore) Batches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.batches
}

// FileStore is a LeaseStore in one append-only file of JSON lines,
// compacted on Load. It lets `airlock serve` keep leases without the state
// store; the installer normally passes its own store.
//
// Save writes each batch to the file before returning (an acknowledged
// lease survives an airlock crash) and fsyncs in the background at most
// SyncInterval later (it survives a power loss after that). Syncing every
// batch before the ACKs go out makes replies leave in bursts that overflow
// clients' sockets, for no gain a DHCP client needs.
type FileStore struct {
	path string
	// SyncInterval bounds how long a saved lease may sit unsynced.
	SyncInterval time.Duration

	mu       sync.Mutex
	f        *os.File
	lastSync time.Time
	syncing  bool
}

// NewFileStore returns a FileStore at path (created on first use).
func NewFileStore(path string) *FileStore {
	return &FileStore{path: path, SyncInterval: 100 * time.Millisecond}
}

// Load implements LeaseStore: it reads every record, keeps the last per
// address, and rewrites the file compacted.
func (s *FileStore) Load(context.Context) ([]Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	latest := map[netip.Addr]Lease{}
	f, err := os.Open(s.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("load leases: %w", err)
	default:
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			var l Lease
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil || !l.IP.IsValid() {
				continue // a torn last line after a crash
			}
			latest[l.IP] = l
		}
		err := sc.Err()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("load leases from %s: %w", s.path, err)
		}
	}
	out := make([]Lease, 0, len(latest))
	for _, l := range latest {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	if err := s.rewrite(out); err != nil {
		return nil, err
	}
	return out, nil
}

func (s *FileStore) rewrite(leases []Lease) error {
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return fmt.Errorf("compact leases: %w", err)
	}
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("compact leases: %w", err)
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for _, l := range leases {
		_ = enc.Encode(l)
	}
	err = errors.Join(w.Flush(), f.Sync(), f.Close())
	if err == nil {
		err = os.Rename(tmp, s.path)
	}
	if err != nil {
		return fmt.Errorf("compact leases %s: %w", s.path, err)
	}
	return nil
}

// Save implements LeaseStore: one append and one fsync per batch.
func (s *FileStore) Save(_ context.Context, batch []Lease) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
			return fmt.Errorf("save leases: %w", err)
		}
		f, err := os.OpenFile(s.path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("save leases: %w", err)
		}
		s.f = f
	}
	var buf []byte
	for _, l := range batch {
		b, err := json.Marshal(l)
		if err != nil {
			return fmt.Errorf("save lease %s: %w", l.IP, err)
		}
		buf = append(append(buf, b...), '\n')
	}
	if _, err := s.f.Write(buf); err != nil {
		return fmt.Errorf("save leases to %s: %w", s.path, err)
	}
	if !s.syncing {
		s.syncing = true
		f := s.f
		wait := max(0, s.SyncInterval-time.Since(s.lastSync))
		go func() {
			time.Sleep(wait)
			_ = f.Sync() // the file may be closed meanwhile: Close syncs
			s.mu.Lock()
			s.syncing = false
			s.lastSync = time.Now()
			s.mu.Unlock()
		}()
	}
	return nil
}

// Close closes the file.
func (s *FileStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := errors.Join(s.f.Sync(), s.f.Close())
	s.f = nil
	return err
}

// batcher groups lease writes: callers wait until the batch holding their
// lease is saved (group commit), so an ACK is only sent for a stored lease
// and the store sees one write per batch, not one per client.
type batcher struct {
	store LeaseStore
	in    chan batchItem
}

type batchItem struct {
	leases []Lease
	done   chan error
}

const maxBatch = 4096

func newBatcher(store LeaseStore) *batcher {
	return &batcher{store: store, in: make(chan batchItem, maxBatch)}
}

// save queues leases and waits for them to be stored.
func (b *batcher) save(ctx context.Context, leases []Lease) error {
	done := make(chan error, 1)
	select {
	case b.in <- batchItem{leases: leases, done: done}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run writes batches until ctx is done, then flushes what is queued.
func (b *batcher) run(ctx context.Context) {
	for {
		var first batchItem
		select {
		case first = <-b.in:
		case <-ctx.Done():
			return
		}
		items := []batchItem{first}
		n := len(first.leases)
	drain:
		for n < maxBatch {
			select {
			case it := <-b.in:
				items = append(items, it)
				n += len(it.leases)
			default:
				break drain
			}
		}
		all := make([]Lease, 0, n)
		for _, it := range items {
			all = append(all, it.leases...)
		}
		err := b.store.Save(context.WithoutCancel(ctx), all)
		for _, it := range items {
			it.done <- err
		}
	}
}
