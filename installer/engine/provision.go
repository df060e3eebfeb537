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

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/events"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/pipeline"
	"airlock.dev/airlock/installer/seed"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/installer/termtext"
	"airlock.dev/airlock/services/agentapi"
)

// Paths airlock serves for provisioning.
const (
	seedsPrefix   = "/seeds/"
	phoneHomePath = "/api/v1/phone-home/"
)

// provisionBucket: machine ID -> provisionRecord.
const provisionBucket = "provision"

// DefaultSeedTokenTTL is how long a seed's phone-home token is accepted
// after the seed was made: the install, the reboot and the first boot of
// the installed system must fit in it. A token is used once at most.
const DefaultSeedTokenTTL = 24 * time.Hour

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
	// Issued is when the token was made; it is refused after
	// seedTokenTTL (and when Issued is not recorded).
	Issued time.Time `json:"issued,omitzero"`
	// Reboot is the reboot order's ID.
	Reboot string `json:"reboot,omitempty"`
	// ReportHash is the SHA-256 of the node report's token (when the seed
	// has a Kubernetes part); ReportUsed once the node reported with it.
	ReportHash string `json:"reportHash,omitempty"`
	ReportUsed bool   `json:"reportUsed,omitempty"`
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
			rule, err := e.ruleOf(m)
			if err != nil {
				return err
			}
			img, err := e.imageFor(rule)
			if err != nil {
				return err
			}
			// A bundle image whose blob does not match its signed digest is
			// refused here, naming both digests, rather than sent to fail.
			if err := img.check(); err != nil {
				return fmt.Errorf("OS image %q: %w", img.name, err)
			}
			if rec, err = e.newSeed(m); err != nil {
				return err
			}
			found = true
			d := m.Assignment.Disk
			err = e.orderFor(id, &rec, agentapi.Order{Kind: agentapi.OrderInstall, Install: &agentapi.InstallOrder{
				Disk:      agentapi.DiskPin{WWN: d.WWN, Serial: d.Serial, SizeBytes: d.SizeBytes},
				AllowWipe: rule.InstallDisk.AllowWipe,
				Image:     agentapi.Artifact{Path: img.urlPath(), Size: img.rawSize, SHA256: img.rawSHA256},
				Seed:      agentapi.Artifact{Path: seedsPrefix + id, Size: rec.SeedSize, SHA256: rec.SeedSHA256},
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
		// airlock's CA joins the installed system's trust store, and the
		// phone-home goes to the agent API's TLS port, checked against it.
		CACertificates: []string{string(e.ca.CertPEM)},
		PhoneHome:      &seed.PhoneHome{URL: e.apiBase + phoneHomePath + m.ID, Token: token},
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
	if _, err := net.ParseMAC(m.BootMAC); err == nil {
		var rule *config.Rule
		if i := slices.IndexFunc(e.answers.Machines, func(r config.Rule) bool { return r.Name == as.Rule }); i >= 0 {
			rule = &e.answers.Machines[i]
		}
		n, err := seedNetwork(m, rule, bootIP{Address: as.Address, Gateway: e.answers.Network.Gateway, Nameservers: e.answers.Network.DNS})
		if err != nil {
			return provisionRecord{}, fmt.Errorf("machine %s: network: %w", m.ID, err)
		}
		cfg.Network = n
	}
	cfg.SSHAuthorizedKeys = e.answers.Site.SSHAuthorizedKeys
	if e.answers.Site.Lab {
		// On a virtual rack the installed system says on its console what
		// the seed made of it, for the person rehearsing and the e2e test.
		cfg.RunCmd = append(cfg.RunCmd, []string{"sh", "-c", labCheckScript})
	}
	var reportToken string
	if e.kube != nil {
		var err error
		if reportToken, err = e.kubeSeed(m, &cfg); err != nil {
			return provisionRecord{}, fmt.Errorf("machine %s: Kubernetes: %w", m.ID, err)
		}
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
	rec := provisionRecord{SeedSHA256: hex.EncodeToString(sum[:]), SeedSize: int64(len(img)), TokenHash: hex.EncodeToString(tok[:]), Issued: e.now().UTC()}
	if reportToken != "" {
		rs := sha256.Sum256([]byte(reportToken))
		rec.ReportHash = hex.EncodeToString(rs[:])
	}
	return rec, nil
}

// labCheckMarker starts the line a lab machine's installed system prints
// on its console at the end of its first boot; labCheckScript prints it
// (a fixed script: nothing from any input is in it).
const (
	labCheckMarker = "airlock-lab-check"
	labCheckScript = `c=` + seed.CertsDir + `; echo "` + labCheckMarker + ` hostname=$(hostname)` +
		` addresses=$(ip -4 -o addr show scope global | awk '{print $4}' | paste -sd, -)` +
		` mirrors=$(ls $c 2>/dev/null | paste -sd, -)` +
		` docker.io=$(grep -o 'host\."[^"]*"' $c/docker.io/hosts.toml 2>/dev/null | head -n 1) end" >/dev/console`
)

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
		if f := inventory.BootLoop(m.LocalBoots); f != "" {
			return fmt.Errorf("machine %s: %s", id, f)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			if e.tokenExpired(rec) {
				return fmt.Errorf("machine %s did not phone home within %v of its reboot order, and the phone-home token in its seed expired at %s: install it again", id, e.bootTimeout, rec.Issued.Add(e.seedTokenTTL).Format(time.RFC3339))
			}
			return fmt.Errorf("machine %s did not phone home within %v of its reboot order: look at its console", id, e.bootTimeout)
		}
	}
}

// serveProvisioning mounts what installs fetch besides the OS images
// (serveOSImages, on the plain-HTTP boot server: the agent checks each
// against the digest in its order): on the agent API's TLS port each
// machine's seed (only to its current agent, by its boot token, and from
// the address leased to that machine when airlock leased it one) and the
// installed systems' phone-home.
func (e *Engine) serveProvisioning() {
	e.api.Mount(seedsPrefix, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, seedsPrefix)
		if !machineIDRE.MatchString(id) || !e.fromMachine(r, id) || !e.fromAgent(r, id) {
			e.log.Warn("seed refused", "machine", termtext.Escape(id), "remote", r.RemoteAddr)
			http.NotFound(w, r)
			return
		}
		http.ServeFile(w, r, e.seedFile(id))
	}))
	e.api.Mount(phoneHomePath, http.HandlerFunc(e.phoneHome))
	e.api.Mount(kubeReportPath, http.HandlerFunc(e.kubeReport))
}

// fromAgent reports whether r carries the boot token of machine id's
// current agent (Authorization: Bearer BOOTID.SECRET).
func (e *Engine) fromAgent(r *http.Request, id string) bool {
	raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	tok, err := agentapi.ParseToken(raw)
	if err != nil {
		return false
	}
	m, err := e.inv.Get(id)
	if err != nil || m.BootID == "" {
		return false
	}
	boot, err := e.inv.Boot(r.Context(), tok.BootID)
	if err != nil {
		tok.Matches([32]byte{}) // the same time as a wrong secret
		return false
	}
	return tok.Matches(boot.SecretHash) && subtle.ConstantTimeCompare([]byte(tok.BootID), []byte(m.BootID)) == 1
}

// tokenExpired reports whether rec's phone-home token is past its time
// (or has none recorded).
func (e *Engine) tokenExpired(rec provisionRecord) bool {
	return rec.Issued.IsZero() || e.now().Sub(rec.Issued) > e.seedTokenTTL
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
	// cloud-init posts its host keys and names: read (bounded), not kept.
	if _, ok := readPost(w, r, 64<<10); !ok {
		return
	}
	id := strings.TrimPrefix(r.URL.Path, phoneHomePath)
	token := r.URL.Query().Get("token")
	err := e.acceptPhoneHome(id, token)
	if err != nil {
		e.log.Warn("phone-home refused", "machine", termtext.Escape(id), "remote", r.RemoteAddr, "err", err)
		http.Error(w, ErrPhoneHome.Error(), http.StatusForbidden)
		return
	}
	e.log.Info("phoned home", "machine", id, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusOK)
}

// readPost reads a POST request's body, at most max bytes; for another
// method or a longer body it answers the request itself and returns false.
func readPost(w http.ResponseWriter, r *http.Request, max int64) ([]byte, bool) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	if err != nil {
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		return nil, false
	}
	return body, true
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
		if e.tokenExpired(rec) {
			return fmt.Errorf("%w: the token expired", ErrPhoneHome)
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
// so that it boots its own disk, and counts the answer: BootLoopAfter of
// them without a phone-home in between flag a boot loop (and fail the
// machine's boot step while it waits).
func (e *Engine) localBoot(mac string) bool {
	id, ok := e.installedMachine(mac)
	if !ok {
		return false
	}
	if n, err := e.inv.LocalBoot(id); err != nil {
		e.log.Warn("count a local boot", "machine", id, "err", err)
	} else {
		e.log.Info("local boot", "machine", id, "since phone-home", n)
	}
	return true
}

// installedMachine finds the installed (or later) machine with this boot MAC.
func (e *Engine) installedMachine(mac string) (string, bool) {
	ms, err := e.inv.List()
	if err != nil {
		return "", false
	}
	i := slices.IndexFunc(ms, func(m inventory.Machine) bool { return strings.EqualFold(m.BootMAC, mac) })
	if i < 0 {
		return "", false
	}
	switch ms[i].State {
	case inventory.StateInstalled, inventory.StateBooted, inventory.StateJoined, inventory.StateReady:
		return ms[i].ID, true
	}
	return "", false
}
