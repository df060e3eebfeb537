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
	"io/fs"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/assign"
	"airlock.dev/airlock/installer/events"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/kube"
	"airlock.dev/airlock/installer/pipeline"
	"airlock.dev/airlock/installer/seed"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/installer/termtext"
)

// BundleFiles is where the engine finds the bundle's files and what it
// carries for Kubernetes: the bundle (*bundle.Bundle).
type BundleFiles interface {
	Metadata() bundle.Metadata
	// FileContent returns where the file called name lies (its digest
	// checked the first time it is asked for).
	FileContent(name string) (f bundle.File, r io.ReaderAt, off, size int64, err error)
}

// Paths of the cluster's part of airlock's services.
const (
	// bundleFilesPrefix serves the bundle's files by name, in clear: the
	// seed, which travels over TLS, carries each one's sha256.
	bundleFilesPrefix = "/bundle/files/"
	// kubeReportPath takes a node's report of its first boot (TLS).
	kubeReportPath = "/api/v1/kube-report/"
)

// Bounds of the Kubernetes part.
const (
	// maxFileDownloads bounds concurrent downloads of bundle files.
	maxFileDownloads = 16
	// maxReportBody bounds a node's report; the last maxReportKept bytes
	// of its output are kept.
	maxReportBody = 64 << 10
	maxReportKept = 4 << 10
	// defaultKubeTimeout bounds the bootstrap and join steps: the first
	// control plane's API server and Node (kubeadm init pulls and starts
	// the control plane), or a joining Node, Ready.
	defaultKubeTimeout = 30 * time.Minute
	// nodeCNIBinDir is where Debian's containernetworking-plugins (the
	// node image's) puts the standard CNI plugins.
	nodeCNIBinDir = "/usr/lib/cni"
	// nodeArch is the architecture of the nodes' Kubernetes binaries
	// (every machine airlock installs today is linux/amd64).
	nodeArch = "amd64"
	// adminTTL is the life of the credentials airlock mints for its own
	// watch of the cluster.
	adminTTL = time.Hour
)

// kubeFrom checks what the bundle carries for Kubernetes against the
// answers: the version the cluster asks for, and each binary a node
// downloads among the bundle's files with a sha256 digest. nil when the
// bundle carries no Kubernetes.
func kubeFrom(b BundleFiles, version string) (*bundle.Kubernetes, map[string]bundle.File, error) {
	if b == nil {
		return nil, nil, nil
	}
	md := b.Metadata()
	k := md.Kubernetes
	if k == nil {
		return nil, nil, nil
	}
	if version != "" && k.Version != version {
		return nil, nil, fmt.Errorf("the bundle carries Kubernetes %q and cluster.distribution.version asks for %q: set it to %q, or build a bundle with kubernetes.version %q",
			k.Version, version, k.Version, version)
	}
	bins := k.Binaries
	if k.Arch != nodeArch {
		if bins = k.OtherArches[nodeArch]; bins == nil {
			return nil, nil, fmt.Errorf("the bundle's Kubernetes %s has binaries for linux/%s, not linux/%s: build it with that platform", k.Version, k.Arch, nodeArch)
		}
	}
	files := map[string]bundle.File{}
	var problems []string
	for _, name := range kube.Binaries {
		fname, ok := bins[name]
		if !ok {
			problems = append(problems, fmt.Sprintf("no %s", name))
			continue
		}
		i := slices.IndexFunc(md.Files, func(f bundle.File) bool { return f.Name == fname })
		if i < 0 {
			problems = append(problems, fmt.Sprintf("%s names the file %q, which the bundle does not have", name, fname))
			continue
		}
		f := md.Files[i]
		if !sha256HexRE.MatchString(strings.TrimPrefix(f.Digest, "sha256:")) || !strings.HasPrefix(f.Digest, "sha256:") {
			problems = append(problems, fmt.Sprintf("%s (%q) has digest %q, not sha256", name, fname, f.Digest))
			continue
		}
		files[name] = f
	}
	if len(problems) > 0 {
		return nil, nil, fmt.Errorf("the bundle's Kubernetes %s: %s", k.Version, strings.Join(problems, "; "))
	}
	return k, files, nil
}

// serveBundleFiles serves each of the bundle's files by its name at
// /bundle/files/NAME on the plain-HTTP boot server: only names the signed
// metadata lists, each checked against its digest as it is opened, at
// most maxFileDownloads at once.
func (e *Engine) serveBundleFiles() {
	slots := make(chan struct{}, maxFileDownloads)
	e.hb.Mount(bundleFilesPrefix, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "use GET", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(r.URL.Path, bundleFilesPrefix)
		if len(name) > 512 {
			http.NotFound(w, r)
			return
		}
		select {
		case slots <- struct{}{}:
			defer func() { <-slots }()
		case <-r.Context().Done():
			return
		}
		_, ra, off, size, err := e.bundleFiles.FileContent(name)
		if errors.Is(err, fs.ErrNotExist) {
			http.NotFound(w, r)
			return
		}
		if err != nil {
			e.log.Error("serve bundle file", "file", termtext.Escape(name), "err", err)
			http.Error(w, "bundle file unavailable", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "", time.Time{}, io.NewSectionReader(ra, off, size))
	}))
}

// firstControlPlane is the control plane that runs kubeadm init: the one
// recorded, or else the first admitted control-plane machine in assignment
// order, which it records (the choice never shifts).
func (e *Engine) firstControlPlane() (string, error) {
	if id, err := kube.FirstControlPlane(e.store); err != nil || id != "" {
		return id, err
	}
	ms, err := e.inv.List()
	if err != nil {
		return "", err
	}
	state := map[string]string{}
	for _, m := range ms {
		state[m.ID] = m.State
	}
	for _, as := range assign.Assign(e.answers, ms) {
		if as.Admission == assign.Admitted && as.Role == kube.RoleControlPlane && admitted(state[as.MachineID]) {
			return kube.ChooseFirstControlPlane(e.store, as.MachineID)
		}
	}
	return "", errors.New("no admitted machine is a control plane: a cluster needs one (a machine rule with role control-plane)")
}

// kubeMachines are the machines with a recorded assignment, in assignment
// order (as assign.Assign lists them).
func (e *Engine) kubeMachines() ([]inventory.Machine, error) {
	ms, err := e.inv.List()
	if err != nil {
		return nil, err
	}
	var out []inventory.Machine
	for _, as := range assign.Assign(e.answers, ms) {
		i := slices.IndexFunc(ms, func(m inventory.Machine) bool { return m.ID == as.MachineID })
		if i >= 0 && ms[i].Assignment != nil && admitted(ms[i].State) {
			out = append(out, ms[i])
		}
	}
	return out, nil
}

func assignedAddr(m inventory.Machine) (netip.Addr, error) {
	if m.Assignment == nil || m.Assignment.Address == "" {
		return netip.Addr{}, fmt.Errorf("machine %s has no static address: a Kubernetes node needs one (give its rule an address)", m.ID)
	}
	p, err := netip.ParsePrefix(m.Assignment.Address)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("machine %s: address %q: %w", m.ID, m.Assignment.Address, err)
	}
	return p.Addr(), nil
}

// clusterSpec is the cluster as every node's seed describes it.
func (e *Engine) clusterSpec(ms []inventory.Machine) kube.ClusterSpec {
	workers := slices.ContainsFunc(ms, func(m inventory.Machine) bool { return m.Assignment.Role != kube.RoleControlPlane })
	spec := kube.SpecFromAnswers(e.answers.Cluster, workers)
	spec.CNIBinDir = nodeCNIBinDir
	if e.answers.Site.Lab {
		// The virtual rack's machines are small (one or two vCPUs, little
		// memory): kubeadm's preflight would refuse them.
		spec.IgnorePreflightErrors = []string{"NumCPU", "Mem"}
	}
	return spec
}

// kubeSeed adds machine m's Kubernetes part to its seed: the driver's
// files and commands (kubeadm init on the first control plane, join on the
// others), the binaries to download from airlock with their digests, the
// kubelet's unit, the node's pod subnet and its report's URL and
// single-use token. It returns the token.
func (e *Engine) kubeSeed(m inventory.Machine, cfg *seed.Config) (string, error) {
	now := e.now()
	firstID, err := e.firstControlPlane()
	if err != nil {
		return "", err
	}
	ms, err := e.kubeMachines()
	if err != nil {
		return "", err
	}
	fi := slices.IndexFunc(ms, func(x inventory.Machine) bool { return x.ID == firstID })
	if fi < 0 {
		return "", fmt.Errorf("the first control plane %s has no recorded assignment yet", firstID)
	}
	firstAddr, err := assignedAddr(ms[fi])
	if err != nil {
		return "", err
	}
	addr, err := assignedAddr(m)
	if err != nil {
		return "", err
	}
	spec := e.clusterSpec(ms)
	pki, err := kube.LoadOrCreatePKI(e.store, spec.Name, now)
	if err != nil {
		return "", err
	}
	tok, ttl, err := kube.LoadOrCreateBootstrapToken(e.store, 24*time.Hour, now)
	if err != nil {
		return "", err
	}
	server, err := kube.APIServerURL(spec, firstAddr)
	if err != nil {
		return "", err
	}
	if err := kube.SaveAPIServer(e.store, server); err != nil {
		return "", err
	}
	ids := make([]string, len(ms))
	for i, x := range ms {
		ids[i] = x.ID
	}
	subnets, err := kube.AllocatePodSubnets(e.store, spec.PodCIDR, ids)
	if err != nil {
		return "", err
	}
	driver, err := kube.DriverFor(e.answers.Cluster.Distribution.Name)
	if err != nil {
		return "", err
	}
	// The minimal pod network routes each other node's pod subnet to that
	// node, when it is on the same link (machines assigned later are not
	// in this seed: the platform's CNI replaces this network).
	if mine, err := netip.ParsePrefix(m.Assignment.Address); err == nil {
		var routes []seed.Route
		for _, x := range ms {
			if xa, err := assignedAddr(x); err == nil && x.ID != m.ID && mine.Masked().Contains(xa) && subnets[x.ID].IsValid() {
				routes = append(routes, seed.Route{To: subnets[x.ID], Via: xa})
			}
		}
		addRoutes(&cfg.Network, addr, routes)
	}
	node := kube.NodeSpec{Hostname: m.Assignment.Hostname, Address: addr, Role: m.Assignment.Role, Init: m.ID == firstID,
		Interface: interfaceOf(cfg.Network, addr)}
	secrets := kube.Secrets{PKI: pki, Token: tok.Value(), TokenTTL: ttl}
	if !node.Init && (ms[fi].State == inventory.StateJoined || ms[fi].State == inventory.StateReady) {
		// The cluster exists: the first install's token may have expired,
		// so a later node joins with a fresh one, created through the API.
		if secrets.Token, err = e.freshToken(node.Hostname, now); err != nil {
			return "", err
		}
	}
	ns, err := driver.NodeSeed(spec, node, secrets, firstAddr, now)
	if err != nil {
		return "", err
	}
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	token := base64.RawURLEncoding.EncodeToString(raw[:])
	boot := kube.NodeBoot{ReportURL: e.apiBase + kubeReportPath + m.ID, ReportToken: token, CAPEM: e.ca.CertPEM, PodSubnet: subnets[m.ID]}
	for _, name := range kube.Binaries {
		f := e.kubeFiles[name]
		boot.Binaries = append(boot.Binaries, kube.Binary{Name: name, URL: e.base + bundleFilesPrefix + f.Name, SHA256: strings.TrimPrefix(f.Digest, "sha256:")})
	}
	if ns, err = kube.WithNode(ns, boot); err != nil {
		return "", err
	}
	// A new seed reports afresh: what an earlier install of the machine
	// reported is forgotten.
	if err := kube.DeleteNodeReport(e.store, m.ID); err != nil {
		return "", err
	}
	cfg.WriteFiles = append(cfg.WriteFiles, ns.Files...)
	cfg.RunCmd = append(cfg.RunCmd, ns.RunCmd...)
	return token, nil
}

// AdminKubeconfig mints a kubeconfig with fresh admin credentials for the
// cluster, valid for ttl, pointing at the recorded API server.
func (e *Engine) AdminKubeconfig(ttl time.Duration) ([]byte, error) {
	return kube.MintAdminKubeconfig(e.store, "", ttl, e.now())
}

// addRoutes adds routes to the seed's interface that carries addr.
func addRoutes(n *seed.Network, addr netip.Addr, routes []seed.Route) {
	has := func(c *seed.IPConfig) bool {
		return slices.ContainsFunc(c.Addresses, func(p netip.Prefix) bool { return p.Addr() == addr })
	}
	for i := range n.VLANs {
		if has(&n.VLANs[i].IPConfig) {
			n.VLANs[i].Routes = append(n.VLANs[i].Routes, routes...)
			return
		}
	}
	for i := range n.Bonds {
		if has(&n.Bonds[i].IPConfig) {
			n.Bonds[i].Routes = append(n.Bonds[i].Routes, routes...)
			return
		}
	}
	for i := range n.Ethernets {
		if has(&n.Ethernets[i].IPConfig) {
			n.Ethernets[i].Routes = append(n.Ethernets[i].Routes, routes...)
			return
		}
	}
}

// joinTokenTTL is the life of a token made for a node joining a cluster
// that exists.
const joinTokenTTL = 24 * time.Hour

// freshToken creates a bootstrap token for a node joining the existing
// cluster (its bootstrap-token-ID Secret, through the API with airlock's
// own credentials) and returns it.
func (e *Engine) freshToken(hostname string, now time.Time) (string, error) {
	t, err := kube.NewToken("airlock: "+hostname+" joins with it", joinTokenTTL, now)
	if err != nil {
		return "", err
	}
	cs, err := e.kubeClient()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := kube.CreateToken(ctx, cs, t); err != nil {
		return "", fmt.Errorf("a join token for %s: %w", hostname, err)
	}
	e.log.Info("bootstrap token created for a later join", "node", hostname, "token", t.String(), "expires", t.Expires)
	return t.Value(), nil
}

// interfaceOf names the seed's interface that carries addr ("" if none
// does: kube-vip then takes the default route's).
func interfaceOf(n seed.Network, addr netip.Addr) string {
	has := func(c seed.IPConfig) bool {
		return slices.ContainsFunc(c.Addresses, func(p netip.Prefix) bool { return p.Addr() == addr })
	}
	for _, v := range n.VLANs {
		if has(v.IPConfig) {
			return v.Name
		}
	}
	for _, b := range n.Bonds {
		if has(b.IPConfig) {
			return b.Name
		}
	}
	for _, e := range n.Ethernets {
		if has(e.IPConfig) {
			return e.Name
		}
	}
	return ""
}

var reportStepRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// ErrKubeReport is what a refused node report says, whatever the reason.
var ErrKubeReport = errors.New("unknown machine or token")

// kubeReport takes a node's report of its first boot: its machine in the
// path, result and step in the query, its single-use token as a bearer
// token, the tail of the step's output as the body (bounded; the last
// maxReportKept bytes are kept).
func (e *Engine) kubeReport(w http.ResponseWriter, r *http.Request) {
	body, ok := readPost(w, r, maxReportBody)
	if !ok {
		return
	}
	id := strings.TrimPrefix(r.URL.Path, kubeReportPath)
	q := r.URL.Query()
	rep := kube.NodeReport{Result: q.Get("result"), Step: q.Get("step"), Time: e.now().UTC()}
	token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	rep, err := e.acceptKubeReport(id, token, rep, body)
	if err != nil {
		e.log.Warn("node report refused", "machine", termtext.Escape(id), "remote", r.RemoteAddr, "err", err)
		if errors.Is(err, errBadReport) {
			http.Error(w, "bad report: want result=ok|failed and a step name", http.StatusBadRequest)
			return
		}
		http.Error(w, ErrKubeReport.Error(), http.StatusForbidden)
		return
	}
	e.log.Info("node report", "machine", id, "result", rep.Result, "step", rep.Step)
	msg := "the node's first boot went well (kubeadm done)"
	if rep.Result == kube.ReportFailed {
		msg = "the node reports: " + rep.Error()
	}
	e.bus.Emit(events.Event{Kind: events.Notice, Machine: id, Message: msg})
	w.WriteHeader(http.StatusNoContent)
}

var errBadReport = errors.New("bad node report")

func (e *Engine) acceptKubeReport(id, token string, rep kube.NodeReport, body []byte) (kube.NodeReport, error) {
	if rep.Result != kube.ReportOK && rep.Result != kube.ReportFailed || !reportStepRE.MatchString(rep.Step) {
		return rep, errBadReport
	}
	if !machineIDRE.MatchString(id) || token == "" || len(token) > 128 {
		return rep, ErrKubeReport
	}
	if len(body) > maxReportKept {
		body = body[len(body)-maxReportKept:]
	}
	rep.Output = strings.ToValidUTF8(string(body), string(utf8.RuneError))
	if rep.Result == kube.ReportFailed {
		rep.Phase = kube.KubeadmPhase(rep.Output)
	}
	sum := sha256.Sum256([]byte(token))
	got := hex.EncodeToString(sum[:])
	err := e.store.Update(func(tx state.Tx) error {
		raw := tx.Get(provisionBucket, id)
		if raw == nil {
			return ErrKubeReport
		}
		var rec provisionRecord
		if err := json.Unmarshal(raw, &rec); err != nil {
			return err
		}
		if rec.ReportHash == "" || rec.ReportUsed || subtle.ConstantTimeCompare([]byte(got), []byte(rec.ReportHash)) != 1 {
			return ErrKubeReport
		}
		if e.tokenExpired(rec) {
			return fmt.Errorf("%w: the token expired", ErrKubeReport)
		}
		rec.ReportUsed = true
		if err := putProvisionTx(tx, id, rec); err != nil {
			return err
		}
		return kube.SaveNodeReport(tx, id, rep)
	})
	return rep, err
}

// reportFailure returns machine id's failed report as an error naming the
// machine, the step (kubeadm's phase when it named one) and its output's
// last lines; nil when the machine reported none.
func (e *Engine) reportFailure(id, hostname string) error {
	reps, err := kube.NodeReports(e.store)
	if err != nil {
		return err
	}
	rep, ok := reps[id]
	if !ok || rep.Result != kube.ReportFailed {
		return nil
	}
	return fmt.Errorf("machine %s (%s): %s", id, hostname, termtext.Escape(rep.Error()))
}

// kubeClient is a client of the cluster's API server with airlock's own
// freshly minted admin credentials.
func (e *Engine) kubeClient() (kubernetes.Interface, error) {
	return kube.AdminClient(e.store, "", adminTTL, e.now(), e.kubeDial)
}

// waitNode waits until machine id's Node exists (joined, and labelled with
// its role) and is Ready (ready), and fails at once on a failure the node
// reported. It is the bootstrap step on the first control plane (whose
// API server it then waits for) and the join step on every other machine.
func (e *Engine) waitNode(ctx context.Context, id string, _ pipeline.Reporter) error {
	m, err := e.inv.Get(id)
	if err != nil {
		return err
	}
	switch m.State {
	case inventory.StateReady:
		return nil
	case inventory.StateBooted, inventory.StateJoined, inventory.StateFailed:
	default:
		return fmt.Errorf("machine %s is %s, not booted", id, m.State)
	}
	if m.Assignment == nil {
		return fmt.Errorf("machine %s has no recorded assignment", id)
	}
	name, role := m.Assignment.Hostname, m.Assignment.Role
	if err := e.reportFailure(id, name); err != nil {
		return err
	}
	cs, err := e.kubeClient()
	if err != nil {
		return err
	}
	w := kube.NodeWait{Client: cs, Name: name, Timeout: e.kubeTimeout, Interval: e.kubePoll,
		Check: func() error { return e.reportFailure(id, name) },
		Joined: func(ctx context.Context, n *corev1.Node) error {
			if err := kube.ApplyRoleLabels(ctx, cs, name, role); err != nil {
				return err
			}
			return e.moveTo(id, inventory.StateJoined, fmt.Sprintf("Node %q registered", name))
		}}
	if err := w.Wait(ctx); err != nil {
		if errors.Is(err, kube.ErrNodeTimeout) {
			return fmt.Errorf("machine %s (%s): %w", id, name, err)
		}
		return err
	}
	return e.moveTo(id, inventory.StateReady, fmt.Sprintf("Node %q Ready", name))
}

// moveTo moves a machine on to joined or ready; a machine failed by an
// earlier run of its step takes the way back (failed -> booted) first.
func (e *Engine) moveTo(id, to, reason string) error {
	m, err := e.inv.Get(id)
	if err != nil {
		return err
	}
	if m.State == to || m.State == inventory.StateReady {
		return nil
	}
	if m.State == inventory.StateFailed {
		if _, err := e.inv.Transition(id, inventory.StateBooted, "resumed: its Node is there"); err != nil {
			return err
		}
		m.State = inventory.StateBooted
	}
	if to == inventory.StateReady && m.State == inventory.StateBooted {
		if _, err := e.inv.Transition(id, inventory.StateJoined, reason); err != nil {
			return err
		}
	}
	_, err = e.inv.Transition(id, to, reason)
	return err
}
