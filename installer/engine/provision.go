package engine

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"airlock.dev/airlock/installer/events"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/pipeline"
	"airlock.dev/airlock/installer/seed"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/agentapi"
)

// OSImage is the operating system image the install writes to every
// machine's disk: a raw disk image, compressed (gzip, xz, zstd) or not,
// with the size and SHA-256 of its raw content.
type OSImage struct {
	Path      string
	RawSize   int64
	RawSHA256 string
}

// Paths airlock serves for provisioning.
const (
	osImagePath   = "/os/image"
	seedsPrefix   = "/seeds/"
	phoneHomePath = "/api/v1/phone-home/"
)

// provisionBucket: machine ID -> provisionRecord.
const provisionBucket = "provision"

// provisionRecord is what the provision and boot steps of one machine
// keep, so that a rerun after a crash takes up the same order and seed.
type provisionRecord struct {
	// Order is the install order's ID.
	Order string `json:"order,omitempty"`
	// Seed is the seed file's digest and size.
	SeedSHA256 string `json:"seedSHA256"`
	SeedSize   int64  `json:"seedSize"`
	// TokenHash is the SHA-256 of the phone-home token; Used once the
	// installed system phoned home with it.
	TokenHash string `json:"tokenHash"`
	Used      bool   `json:"used,omitempty"`
	// Reboot is the reboot order's ID.
	Reboot string `json:"reboot,omitempty"`
}

var machineIDRE = regexp.MustCompile(`^m-[0-9a-f]{10,16}$`)

func (e *Engine) seedFile(id string) string { return filepath.Join(e.stateDir, "seeds", id+".img") }

func getProvision(st state.Store, id string) (provisionRecord, bool, error) {
	var rec provisionRecord
	var found bool
	err := st.View(func(tx state.Tx) error {
		raw := tx.Get(provisionBucket, id)
		if raw == nil {
			return nil
		}
		found = true
		return json.Unmarshal(raw, &rec)
	})
	return rec, found, err
}

func putProvisionTx(tx state.Tx, id string, rec provisionRecord) error {
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return tx.Put(provisionBucket, id, raw)
}

// orderFor queues an order for machine id and records its ID in the
// machine's provisioning record (set names the field) in the same
// transaction: after a crash the record names every order given, so a
// resumed step waits for it instead of giving it again.
func (e *Engine) orderFor(id string, rec *provisionRecord, o agentapi.Order, set func(*provisionRecord, string)) error {
	next := *rec
	_, err := e.inv.OrderWith(id, o, func(tx state.Tx, o agentapi.Order) error {
		set(&next, o.ID)
		return putProvisionTx(tx, id, next)
	})
	if err != nil {
		return err
	}
	*rec = next
	return nil
}

// provision installs one assigned machine: it renders the machine's seed,
// orders its agent to wipe the pinned disk and write the OS image and the
// seed, and waits for the result. Run again after a crash, it waits for
// the order it gave rather than giving another.
func (e *Engine) provision(ctx context.Context, id string, r pipeline.Reporter) error {
	m, err := e.inv.Get(id)
	if err != nil {
		return err
	}
	switch m.State {
	case inventory.StateInstalled, inventory.StateBooted, inventory.StateJoined, inventory.StateReady:
		return nil
	}
	if m.Assignment == nil || m.Assignment.Disk == nil {
		return fmt.Errorf("machine %s has no recorded assignment and disk", id)
	}
	if _, err := e.inv.Transition(id, inventory.StateInstalling, "installing "+m.Assignment.Hostname); err != nil {
		return err
	}
	rec, found, err := getProvision(e.store, id)
	if err != nil {
		return err
	}
	if found && rec.Order != "" {
		res, pending, err := e.inv.Result(id, rec.Order)
		if err != nil {
			return err
		}
		if !pending && res.Status != agentapi.ResultDone {
			rec.Order = "" // failed, or given to an agent that is gone: order again
		}
	}
	// resumed: an earlier run of this step gave the order and did not see
	// it end; airlock's crash or stop may have cut it short while the
	// agent fetched the image from it.
	resumed := found && rec.Order != ""
	for {
		if !found || rec.Order == "" {
			if rec, err = e.newSeed(m); err != nil {
				return err
			}
			found = true
			d := m.Assignment.Disk
			err := e.orderFor(id, &rec, agentapi.Order{Kind: agentapi.OrderInstall, Install: &agentapi.InstallOrder{
				Disk:  agentapi.DiskPin{WWN: d.WWN, Serial: d.Serial, SizeBytes: d.SizeBytes},
				Image: agentapi.Artifact{Path: osImagePath, Size: e.osImage.RawSize, SHA256: e.osImage.RawSHA256},
				Seed:  agentapi.Artifact{Path: seedsPrefix + id, Size: rec.SeedSize, SHA256: rec.SeedSHA256},
			}}, func(r *provisionRecord, o string) { r.Order = o })
			if err != nil {
				return err
			}
		}
		err := e.awaitInstall(ctx, id, rec.Order, r)
		if !errors.Is(err, errOrderFailed) || !resumed {
			return err
		}
		// Once, after a restart: the order an earlier airlock gave failed,
		// perhaps because that airlock died while the agent fetched the
		// image or the seed from it. Order again.
		e.log.Warn("an install order given before airlock restarted failed; ordering again", "machine", id, "err", err)
		resumed, rec.Order = false, ""
	}
}

// errOrderFailed means the agent answered that an order failed.
var errOrderFailed = errors.New("the agent failed order")

// awaitInstall waits for the agent's final answer to install order oid,
// and marks the machine installed when it is done.
func (e *Engine) awaitInstall(ctx context.Context, id, oid string, r pipeline.Reporter) error {
	for {
		changed := e.inv.Changed()
		res, pending, err := e.inv.Result(id, oid)
		if err != nil {
			return err
		}
		switch {
		case res.Status == agentapi.ResultDone:
			_, err := e.inv.Transition(id, inventory.StateInstalled, fmt.Sprintf("image and seed written (order %s)", oid))
			return err
		case res.Status == agentapi.ResultFailed:
			return fmt.Errorf("%w %s: %s", errOrderFailed, oid, res.Error)
		case !pending && res.Status == "":
			return fmt.Errorf("order %s is gone without an answer", oid)
		case res.Status == agentapi.ResultRunning:
			r.Progress(events.Progress{Done: int64(res.Done), Total: int64(res.Total), Unit: "bytes"})
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// newSeed renders the machine's cloud-init seed with a fresh single-use
// phone-home token, keeps it in the state directory (0600) for its agent
// to fetch, and returns its record.
func (e *Engine) newSeed(m inventory.Machine) (provisionRecord, error) {
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return provisionRecord{}, err
	}
	token := base64.RawURLEncoding.EncodeToString(raw[:])
	as := m.Assignment
	cfg := seed.Config{
		InstanceID: m.ID + "-" + token[:8],
		Hostname:   as.Hostname,
		NTPServers: []string{e.answers.Network.Address.String()},
		PhoneHome:  &seed.PhoneHome{URL: e.base + phoneHomePath + m.ID, Token: token},
	}
	if d := e.answers.Site.Domain; d != "" {
		cfg.FQDN = as.Hostname + "." + d
	}
	if len(e.answers.Network.NTP) > 0 {
		cfg.NTPServers = nil
		for _, a := range e.answers.Network.NTP {
			cfg.NTPServers = append(cfg.NTPServers, a.String())
		}
	}
	if e.regLn != nil {
		cfg.Mirror = &seed.Mirror{Endpoint: "http://" + e.regLn.Addr().String()}
	}
	if hw, err := net.ParseMAC(m.BootMAC); err == nil {
		eth := seed.Ethernet{Name: "eth0", MAC: hw}
		if as.Address != "" {
			p, err := netip.ParsePrefix(as.Address)
			if err != nil {
				return provisionRecord{}, fmt.Errorf("machine %s: address %q: %w", m.ID, as.Address, err)
			}
			eth.Addresses = []netip.Prefix{p}
			eth.Gateway = e.answers.Network.Gateway
			eth.Nameservers = e.answers.Network.DNS
		} else {
			eth.DHCP4 = true
		}
		cfg.Network.Ethernets = []seed.Ethernet{eth}
	}
	files, err := seed.Render(cfg)
	if err != nil {
		return provisionRecord{}, fmt.Errorf("machine %s: seed: %w", m.ID, err)
	}
	img, err := files.Image()
	if err != nil {
		return provisionRecord{}, fmt.Errorf("machine %s: seed image: %w", m.ID, err)
	}
	path := e.seedFile(m.ID)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return provisionRecord{}, err
	}
	if err := os.WriteFile(path, img, 0o600); err != nil {
		return provisionRecord{}, err
	}
	sum, tok := sha256.Sum256(img), sha256.Sum256([]byte(token))
	return provisionRecord{SeedSHA256: hex.EncodeToString(sum[:]), SeedSize: int64(len(img)), TokenHash: hex.EncodeToString(tok[:])}, nil
}

// boot has an installed machine reboot into its own disk (the boot
// decider answers its next script fetch with a local boot) and waits until
// the installed system phones home.
func (e *Engine) boot(ctx context.Context, id string, _ pipeline.Reporter) error {
	m, err := e.inv.Get(id)
	if err != nil {
		return err
	}
	switch m.State {
	case inventory.StateInstalled:
	case inventory.StateBooted, inventory.StateJoined, inventory.StateReady:
		return nil // booted by an earlier run
	default:
		return fmt.Errorf("machine %s is %s, not installed", id, m.State)
	}
	rec, _, err := getProvision(e.store, id)
	if err != nil {
		return err
	}
	if rec.Reboot == "" {
		if err := e.orderFor(id, &rec, agentapi.Order{Kind: agentapi.OrderReboot}, func(r *provisionRecord, o string) { r.Reboot = o }); err != nil {
			return err
		}
	}
	deadline := time.NewTimer(e.bootTimeout)
	defer deadline.Stop()
	for {
		changed := e.inv.Changed()
		m, err := e.inv.Get(id)
		if err != nil {
			return err
		}
		if m.State == inventory.StateBooted {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("machine %s did not phone home within %v of its reboot order: look at its console", id, e.bootTimeout)
		}
	}
}

// serveProvisioning mounts what installs fetch: the OS image, each
// machine's seed (only to the address leased to that machine, when airlock
// leased it one) and the installed systems' phone-home.
func (e *Engine) serveProvisioning() {
	e.hb.Mount(osImagePath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(e.osImage.Path)
		if err != nil {
			http.Error(w, "no OS image", http.StatusNotFound)
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			http.Error(w, "no OS image", http.StatusNotFound)
			return
		}
		http.ServeContent(w, r, "image", st.ModTime(), f)
	}))
	e.hb.Mount(seedsPrefix, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, seedsPrefix)
		if !machineIDRE.MatchString(id) || !e.fromMachine(r, id) {
			http.NotFound(w, r)
			return
		}
		http.ServeFile(w, r, e.seedFile(id))
	}))
	e.hb.Mount(phoneHomePath, http.HandlerFunc(e.phoneHome))
}

// leaseOf is the address airlock's DHCP server leased to mac, if any
// (none before the server runs, nor in proxy mode).
func (e *Engine) leaseOf(mac string) (netip.Addr, bool) {
	h := e.dsrv.Handler()
	if h == nil {
		return netip.Addr{}, false
	}
	return h.LeaseOf(mac)
}

// fromMachine reports whether r comes from the address airlock leased to
// machine id's boot MAC, or airlock leased that MAC nothing (proxy mode).
func (e *Engine) fromMachine(r *http.Request, id string) bool {
	m, err := e.inv.Get(id)
	if err != nil {
		return false
	}
	leased, ok := e.leaseOf(m.BootMAC)
	if !ok {
		return true
	}
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && peer.Addr().Unmap() == leased
}

// ErrPhoneHome is what a refused phone-home says, whatever the reason.
var ErrPhoneHome = errors.New("unknown machine or token")

// phoneHome takes cloud-init's phone-home from an installed system: its
// machine in the path, its single-use token in the query. The machine is
// then booted.
func (e *Engine) phoneHome(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return
	}
	// cloud-init posts its host keys and names: read (bounded), not kept.
	if _, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, 64<<10)); err != nil {
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		return
	}
	id := strings.TrimPrefix(r.URL.Path, phoneHomePath)
	token := r.URL.Query().Get("token")
	err := e.acceptPhoneHome(id, token)
	if err != nil {
		e.log.Warn("phone-home refused", "machine", id, "remote", r.RemoteAddr, "err", err)
		http.Error(w, ErrPhoneHome.Error(), http.StatusForbidden)
		return
	}
	e.log.Info("phoned home", "machine", id, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusOK)
}

func (e *Engine) acceptPhoneHome(id, token string) error {
	if !machineIDRE.MatchString(id) || token == "" || len(token) > 128 {
		return ErrPhoneHome
	}
	sum := sha256.Sum256([]byte(token))
	got := hex.EncodeToString(sum[:])
	// The token is spent and the machine booted in one transaction: a
	// crash between the two would leave a spent token and a machine that
	// never becomes booted (cloud-init phones home once).
	_, err := e.inv.TransitionWith(id, inventory.StateBooted, "the installed system phoned home", func(tx state.Tx) error {
		raw := tx.Get(provisionBucket, id)
		if raw == nil {
			return ErrPhoneHome
		}
		var rec provisionRecord
		if err := json.Unmarshal(raw, &rec); err != nil {
			return err
		}
		if rec.Used || subtle.ConstantTimeCompare([]byte(got), []byte(rec.TokenHash)) != 1 {
			return ErrPhoneHome
		}
		rec.Used = true
		return putProvisionTx(tx, id, rec)
	})
	if err != nil {
		return errors.Join(ErrPhoneHome, err)
	}
	return nil
}

// localBoot reports whether the machine with this boot MAC is installed,
// so that it boots its own disk.
func (e *Engine) localBoot(mac string) bool {
	ms, err := e.inv.List()
	if err != nil {
		return false
	}
	i := slices.IndexFunc(ms, func(m inventory.Machine) bool { return strings.EqualFold(m.BootMAC, mac) })
	if i < 0 {
		return false
	}
	switch ms[i].State {
	case inventory.StateInstalled, inventory.StateBooted, inventory.StateJoined, inventory.StateReady:
		return true
	}
	return false
}

var sha256HexRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// checkOSImage makes sure the image is a regular file and its raw size and
// digest are given (the agent checks the image against them).
func checkOSImage(img *OSImage) error {
	st, err := os.Stat(img.Path)
	if err != nil {
		return fmt.Errorf("OS image: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("OS image %s is not a regular file", img.Path)
	}
	if img.RawSize <= 0 || !sha256HexRE.MatchString(img.RawSHA256) {
		return fmt.Errorf("OS image %s: give its raw size and SHA-256 (hex)", img.Path)
	}
	return nil
}
