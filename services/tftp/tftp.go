// Package tftp serves the iPXE first stage read-only over TFTP from an
// fs.FS (the embedded iPXE binaries, or a bundle's). It negotiates blksize
// and tsize, accepts only plain relative paths, bounds concurrent transfers
// (in all and per client address) and the time each may take, and gives up
// on a client that stops acknowledging within seconds. Everything larger
// than the first stage goes over HTTP.
package tftp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	ptftp "github.com/pin/tftp/v3"
	"golang.org/x/sys/unix"

	"airlock.dev/airlock/services/internal/ratelog"
)

// Config tunes the server; Defaults fills it.
type Config struct {
	// MaxTransfers bounds concurrent transfers; more are refused.
	MaxTransfers int
	// MaxPerClient bounds concurrent transfers to one client address, so
	// that one host cannot take every slot. Firmware fetches one file at
	// a time (EDK2 asks for the size first, then fetches).
	MaxPerClient int
	// TransferTimeout bounds one whole transfer.
	TransferTimeout time.Duration
	// Timeout is the per-packet retransmission timeout; Retries the count.
	// A client that stops acknowledging loses its slot after about
	// (Retries+1) x Timeout.
	Timeout time.Duration
	Retries int
	// Anticipate > 1 sends that many blocks before waiting for an ACK
	// (pin/tftp's experimental sender-anticipate; 0 = lock-step RFC 1350).
	Anticipate uint
	// DrainTimeout bounds how long Run waits for transfers at shutdown.
	DrainTimeout time.Duration
	// MaxBlockSize caps the negotiated blksize (RFC 2348); 1468 fills an
	// Ethernet frame.
	MaxBlockSize int
}

// Defaults returns the default configuration.
func Defaults() Config {
	return Config{
		MaxTransfers:    64,
		MaxPerClient:    4,
		TransferTimeout: 2 * time.Minute,
		// On the provisioning LAN a round trip takes well under a
		// millisecond: a second is plenty, and a stalled transfer is
		// reclaimed in about 5 s (it was 2 s x 5 plus up to 1 s of
		// random back-off per retry: ~15 s).
		Timeout:      time.Second,
		Retries:      4,
		DrainTimeout: 10 * time.Second,
		MaxBlockSize: 1468,
	}
}

// ErrBadPath is returned for a request that is not a plain relative path.
var ErrBadPath = errors.New("only plain relative paths are served")

// CleanPath checks a requested name: no absolute paths, no "..", no NUL,
// no backslashes, no empty elements. It returns the fs.FS name.
func CleanPath(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "\x00\\") || strings.HasPrefix(name, "/") || !fs.ValidPath(name) {
		return "", fmt.Errorf("%q: %w", name, ErrBadPath)
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." || el == "." {
			return "", fmt.Errorf("%q: %w", name, ErrBadPath)
		}
	}
	return name, nil
}

// Server serves files from an fs.FS. Requests arrive on the socket passed
// in; each transfer then runs on its own socket (RFC 1350), opened in the
// network namespace of the socket passed in. pin/tftp's single-port mode
// is not offered: in v3.2.0 its read loop can send a packet on a
// transfer's channel just as the finished transfer closes it (a send on a
// closed channel, which panics; the race detector caught it in
// TestNetnsTFTPHPA), and it dropped packets under load (8 transfers: ~70
// -> ~15 MiB/s).
type Server struct {
	fsys fs.FS
	conn net.PacketConn
	cfg  Config
	log  *slog.Logger
	rl   *ratelog.Limiter
	sem  chan struct{}

	mu       sync.Mutex
	byClient map[string]int
}

// New returns a server for fsys on conn. Run closes conn.
func New(fsys fs.FS, conn net.PacketConn, cfg Config, log *slog.Logger) (*Server, error) {
	if fsys == nil || conn == nil {
		return nil, errors.New("tftp: a file system and a socket are required")
	}
	if cfg.MaxBlockSize < 512 || cfg.MaxBlockSize > 65464 {
		return nil, fmt.Errorf("tftp: MaxBlockSize %d is outside 512-65464", cfg.MaxBlockSize)
	}
	if cfg.MaxTransfers <= 0 || cfg.MaxPerClient <= 0 || cfg.TransferTimeout <= 0 || cfg.Timeout <= 0 || cfg.Retries <= 0 {
		return nil, errors.New("tftp: MaxTransfers, MaxPerClient, TransferTimeout, Timeout and Retries must be positive")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{fsys: fsys, conn: conn, cfg: cfg, log: log, rl: ratelog.Default(log),
		sem: make(chan struct{}, cfg.MaxTransfers), byClient: map[string]int{}}, nil
}

// Active returns the number of transfers in progress.
func (s *Server) Active() int { return len(s.sem) }

// acquire takes a slot for a transfer to client, or says why not.
func (s *Server) acquire(client string) (release func(), refused string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byClient[client] >= s.cfg.MaxPerClient {
		return nil, "too many transfers to this client"
	}
	select {
	case s.sem <- struct{}{}:
	default:
		return nil, "too many transfers"
	}
	s.byClient[client]++
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.byClient[client]--; s.byClient[client] <= 0 {
			delete(s.byClient, client)
		}
		<-s.sem
	}, ""
}

// Run serves until ctx is cancelled, then lets transfers drain for up to
// DrainTimeout. It returns nil after a cancel.
func (s *Server) Run(ctx context.Context) error {
	srv := ptftp.NewServer(s.read, nil)
	srv.SetBlockSize(s.cfg.MaxBlockSize)
	srv.SetTimeout(s.cfg.Timeout)
	srv.SetRetries(s.cfg.Retries)
	// pin/tftp sleeps up to a second at random before each retry by
	// default; a short, growing pause keeps a stalled transfer's slot
	// for little more than its timeouts.
	step := s.cfg.Timeout / 20
	srv.SetBackoff(func(attempt int) time.Duration { return step * time.Duration(attempt+1) })
	rctx, rcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer rcancel()
	go s.rl.Run(rctx)
	if s.cfg.Anticipate > 1 {
		srv.SetAnticipate(s.cfg.Anticipate)
	}
	srv.SetHook(hook{s.log})
	done := make(chan error, 1)
	nsFile, err := socketNetns(s.conn)
	if err != nil {
		s.log.Debug("tftp: network namespace of the socket unknown; using the process's", "err", err)
	}
	go func() {
		if nsFile != nil {
			// pin/tftp opens each transfer's socket on this goroutine:
			// put its thread into the namespace of the socket passed in.
			// The thread is never unlocked, so it ends with the goroutine.
			runtime.LockOSThread()
			err := unix.Setns(int(nsFile.Fd()), unix.CLONE_NEWNET)
			nsFile.Close()
			if err != nil {
				done <- fmt.Errorf("enter the socket's network namespace: %w", err)
				return
			}
		}
		done <- srv.Serve(s.conn)
	}()
	s.log.Info("tftp: serving", "addr", s.conn.LocalAddr())
	select {
	case err := <-done:
		s.conn.Close()
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("tftp: serve: %w", err)
	case <-ctx.Done():
	}
	go srv.Shutdown() // waits for transfers; bounded below
	select {
	case <-done:
	case <-time.After(s.cfg.DrainTimeout):
		s.log.Warn("tftp: transfers still running at shutdown; closing")
	}
	s.conn.Close()
	return nil
}

// socketNetns returns the network namespace the socket lives in
// (SIOCGSKNS), or nil when c is not a plain socket.
func socketNetns(c net.PacketConn) (*os.File, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nsfd int
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		nsfd, ierr = unix.IoctlRetInt(int(fd), unix.SIOCGSKNS)
	}); err != nil {
		return nil, err
	}
	if ierr != nil {
		return nil, fmt.Errorf("SIOCGSKNS: %w", ierr)
	}
	return os.NewFile(uintptr(nsfd), "netns"), nil
}

// read is the read handler: one transfer.
func (s *Server) read(name string, rf io.ReaderFrom) error {
	peer, client := "", ""
	if ot, ok := rf.(ptftp.OutgoingTransfer); ok {
		a := ot.RemoteAddr()
		peer, client = a.String(), a.IP.String()
	}
	ctx := context.Background()
	clean, err := CleanPath(name)
	if err != nil {
		s.rl.Log(ctx, slog.LevelWarn, "tftp: refused", client, "file", name, "peer", peer, "err", err)
		return err
	}
	release, why := s.acquire(client)
	if release == nil {
		s.rl.Log(ctx, slog.LevelWarn, "tftp: "+why+"; refused", client, "file", clean, "peer", peer)
		return errors.New("server busy")
	}
	defer release()
	f, err := s.fsys.Open(clean)
	if err != nil {
		s.rl.Log(ctx, slog.LevelInfo, "tftp: not found", client, "file", clean, "peer", peer)
		return fmt.Errorf("open %s: %w", clean, fs.ErrNotExist)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return fmt.Errorf("open %s: %w", clean, fs.ErrNotExist)
	}
	if ot, ok := rf.(ptftp.OutgoingTransfer); ok {
		ot.SetSize(st.Size()) // tsize (RFC 2349)
	}
	r := &deadlineReader{r: f, deadline: time.Now().Add(s.cfg.TransferTimeout)}
	n, err := rf.ReadFrom(r)
	if err != nil {
		return fmt.Errorf("send %s to %s after %d bytes: %w", clean, peer, n, err)
	}
	s.log.Debug("tftp: sent", "file", clean, "peer", peer, "bytes", n)
	return nil
}

// deadlineReader fails reads once the transfer's time is up, which aborts
// the transfer.
type deadlineReader struct {
	r        io.Reader
	deadline time.Time
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	if time.Now().After(d.deadline) {
		return 0, errors.New("transfer took too long")
	}
	return d.r.Read(p)
}

type hook struct{ log *slog.Logger }

func (h hook) OnSuccess(st ptftp.TransferStats) {
	h.log.Debug("tftp: transfer done", "file", st.Filename, "peer", st.RemoteAddr, "duration", st.Duration)
}

func (h hook) OnFailure(st ptftp.TransferStats, err error) {
	// EDK2 asks for tsize and then aborts with error 8: normal.
	h.log.Debug("tftp: transfer ended early", "file", st.Filename, "peer", st.RemoteAddr, "err", err)
}
