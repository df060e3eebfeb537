package kube

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"airlock.dev/airlock/installer/state"
)

// What airlock decides once for the cluster and keeps in the state store
// beside the PKI (pkiBucket): the bootstrap token the first nodes join
// with, the first control plane, and each machine's pod subnet.
const (
	tokenKey       = "bootstrap-token"
	firstCPKey     = "first-control-plane"
	podSubnetsKey  = "pod-subnets"  // JSON map machine ID -> prefix
	nodeReportsKey = "node-reports" // JSON map machine ID -> NodeReport
	maxClusterRec  = 1 << 20
)

type tokenRecord struct {
	Value   string    `json:"value"`
	Created time.Time `json:"created"`
	TTL     string    `json:"ttl"`
}

// LoadOrCreateBootstrapToken returns the bootstrap token kept in the store
// (the one kubeadm init creates with the lifetime ttl, and every node of
// the first install joins with), making and storing one first when there
// is none. Once stored it is never replaced.
func LoadOrCreateBootstrapToken(store state.Store, ttl time.Duration, now time.Time) (Token, time.Duration, error) {
	var rec *tokenRecord
	get := func(tx state.Tx) error {
		raw := tx.Get(pkiBucket, tokenKey)
		if raw == nil {
			return nil
		}
		if len(raw) > maxClusterRec {
			return fmt.Errorf("stored bootstrap token of %d bytes", len(raw))
		}
		rec = &tokenRecord{}
		return json.Unmarshal(raw, rec)
	}
	fresh, err := NewToken("airlock: nodes of the first install join with it", ttl, now)
	if err != nil {
		return Token{}, 0, err
	}
	err = store.Update(func(tx state.Tx) error {
		if err := get(tx); err != nil || rec != nil {
			return err
		}
		rec = &tokenRecord{Value: fresh.Value(), Created: now.UTC(), TTL: ttl.String()}
		raw, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return tx.Put(pkiBucket, tokenKey, raw)
	})
	if err != nil {
		return Token{}, 0, fmt.Errorf("bootstrap token: %w", err)
	}
	t, err := ParseToken(rec.Value)
	if err != nil {
		return Token{}, 0, fmt.Errorf("stored bootstrap token: %w", err)
	}
	d, err := time.ParseDuration(rec.TTL)
	if err != nil || d <= 0 || d > MaxTokenTTL {
		return Token{}, 0, fmt.Errorf("stored bootstrap token: lifetime %q", rec.TTL)
	}
	t.Expires = rec.Created.Add(d)
	return t, d, nil
}

var machineKeyRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ChooseFirstControlPlane records candidates[0] as the control plane that
// runs kubeadm init, unless one is recorded already: the choice is made
// once and never shifts. It returns the recorded machine.
func ChooseFirstControlPlane(store state.Store, candidate string) (string, error) {
	if !machineKeyRE.MatchString(candidate) {
		return "", fmt.Errorf("first control plane %q: not a machine ID", candidate)
	}
	var got string
	err := store.Update(func(tx state.Tx) error {
		if raw := tx.Get(pkiBucket, firstCPKey); raw != nil {
			got = string(raw)
			return nil
		}
		got = candidate
		return tx.Put(pkiBucket, firstCPKey, []byte(candidate))
	})
	if err != nil {
		return "", fmt.Errorf("record the first control plane: %w", err)
	}
	return got, nil
}

// FirstControlPlane returns the recorded first control plane, or "".
func FirstControlPlane(store state.Store) (string, error) {
	var got string
	err := store.View(func(tx state.Tx) error {
		got = string(tx.Get(pkiBucket, firstCPKey))
		return nil
	})
	return got, err
}

// NodeSubnetBits is the prefix length of each node's pod subnet: /24 of an
// IPv4 pod CIDR (254 pods), /64 of an IPv6 one, as kube-controller-manager
// carves them by default.
func NodeSubnetBits(podCIDR netip.Prefix) int {
	if podCIDR.Addr().Is4() {
		return 24
	}
	return 64
}

// ErrPodCIDRFull means the pod CIDR has no node subnet left.
var ErrPodCIDRFull = errors.New("cluster.podCIDR has no node pod subnet left")

// AllocatePodSubnets gives each machine of ids that has none its own pod
// subnet of podCIDR (the lowest free one, in the order of ids) and returns
// every machine's: once recorded, a machine's subnet never shifts.
func AllocatePodSubnets(store state.Store, podCIDR netip.Prefix, ids []string) (map[string]netip.Prefix, error) {
	if !podCIDR.IsValid() || podCIDR != podCIDR.Masked() {
		return nil, fmt.Errorf("allocate pod subnets: cluster.podCIDR %v: want a network address with prefix length", podCIDR)
	}
	bits := NodeSubnetBits(podCIDR)
	if podCIDR.Bits() > bits {
		return nil, fmt.Errorf("allocate pod subnets: cluster.podCIDR %s is smaller than one node's /%d", podCIDR, bits)
	}
	var out map[string]netip.Prefix
	err := store.Update(func(tx state.Tx) error {
		m, err := podSubnets(tx)
		if err != nil {
			return err
		}
		used := map[netip.Prefix]bool{}
		for _, p := range m {
			used[p] = true
		}
		next := 0
		for _, id := range ids {
			if !machineKeyRE.MatchString(id) {
				return fmt.Errorf("pod subnet of %q: not a machine ID", id)
			}
			if _, ok := m[id]; ok {
				continue
			}
			for {
				p, ok := nthSubnet(podCIDR, bits, next)
				if !ok {
					return fmt.Errorf("%w (%s, /%d each): give a larger one", ErrPodCIDRFull, podCIDR, bits)
				}
				next++
				if !used[p] {
					m[id], used[p] = p, true
					break
				}
			}
		}
		raw, err := json.Marshal(m)
		if err != nil {
			return err
		}
		out = m
		return tx.Put(pkiBucket, podSubnetsKey, raw)
	})
	if err != nil {
		return nil, fmt.Errorf("allocate pod subnets: %w", err)
	}
	return out, nil
}

// PodSubnets returns every machine's recorded pod subnet.
func PodSubnets(store state.Store) (map[string]netip.Prefix, error) {
	var m map[string]netip.Prefix
	err := store.View(func(tx state.Tx) (err error) {
		m, err = podSubnets(tx)
		return err
	})
	return m, err
}

func podSubnets(tx state.Tx) (map[string]netip.Prefix, error) {
	m := map[string]netip.Prefix{}
	raw := tx.Get(pkiBucket, podSubnetsKey)
	if raw == nil {
		return m, nil
	}
	if len(raw) > maxClusterRec {
		return nil, fmt.Errorf("stored pod subnets of %d bytes", len(raw))
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("stored pod subnets: %w", err)
	}
	return m, nil
}

// nthSubnet is the n-th /bits subnet of p.
func nthSubnet(p netip.Prefix, bits, n int) (netip.Prefix, bool) {
	span := bits - p.Bits()
	if span < 63 && int64(n) >= int64(1)<<span {
		return netip.Prefix{}, false
	}
	b := p.Addr().AsSlice()
	v := new(big.Int).SetBytes(b)
	off := new(big.Int).Lsh(big.NewInt(int64(n)), uint(len(b)*8-bits))
	v.Add(v, off)
	out := make([]byte, len(b))
	v.FillBytes(out)
	a, _ := netip.AddrFromSlice(out)
	return netip.PrefixFrom(a, bits), true
}

// NodeReport is what a node's first boot reported: the step it reached
// (done when all went well), and for a failure the kubeadm phase (when
// kubeadm named one) and the tail of the step's output. Its strings come
// from the node: print them escaped.
type NodeReport struct {
	Result string    `json:"result"` // ReportOK or ReportFailed
	Step   string    `json:"step"`
	Phase  string    `json:"phase,omitempty"`
	Output string    `json:"output,omitempty"`
	Time   time.Time `json:"time"`
}

// Report results.
const (
	ReportOK     = "ok"
	ReportFailed = "failed"
)

// kubeadmPhaseRE finds the phase in kubeadm's error: "error execution
// phase preflight: ..." (kubeadm's workflow runner).
var kubeadmPhaseRE = regexp.MustCompile(`error execution phase ([A-Za-z0-9][A-Za-z0-9/_-]{0,63})`)

// KubeadmPhase is the phase kubeadm names in its output, or "".
func KubeadmPhase(output string) string {
	m := kubeadmPhaseRE.FindAllStringSubmatch(output, -1)
	if len(m) == 0 {
		return ""
	}
	return m[len(m)-1][1]
}

// Error describes a failed report: the step, kubeadm's phase and the last
// lines of the output (raw: escape it where it is printed).
func (r NodeReport) Error() string {
	what := "step " + r.Step
	if r.Phase != "" {
		what = fmt.Sprintf("kubeadm phase %s (step %s)", r.Phase, r.Step)
	}
	return fmt.Sprintf("%s failed: %s", what, lastLines(r.Output, 6))
}

func lastLines(s string, n int) string {
	var keep []string
	lines := strings.Split(strings.ReplaceAll(s, "\r", ""), "\n")
	for i := len(lines) - 1; i >= 0 && len(keep) < n; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			keep = append([]string{l}, keep...)
		}
	}
	if len(keep) == 0 {
		return "(no output)"
	}
	return strings.Join(keep, " | ")
}

// SaveNodeReport keeps machine id's report (the latest wins).
func SaveNodeReport(tx state.Tx, id string, r NodeReport) error {
	if !machineKeyRE.MatchString(id) {
		return fmt.Errorf("node report of %q: not a machine ID", id)
	}
	m, err := nodeReports(tx)
	if err != nil {
		return err
	}
	m[id] = r
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return tx.Put(pkiBucket, nodeReportsKey, raw)
}

// DeleteNodeReport forgets machine id's report (its new seed will report
// again).
func DeleteNodeReport(store state.Store, id string) error {
	return store.Update(func(tx state.Tx) error {
		m, err := nodeReports(tx)
		if err != nil {
			return err
		}
		if _, ok := m[id]; !ok {
			return nil
		}
		delete(m, id)
		raw, err := json.Marshal(m)
		if err != nil {
			return err
		}
		return tx.Put(pkiBucket, nodeReportsKey, raw)
	})
}

// NodeReports returns every machine's latest report.
func NodeReports(store state.Store) (map[string]NodeReport, error) {
	var m map[string]NodeReport
	err := store.View(func(tx state.Tx) (err error) {
		m, err = nodeReports(tx)
		return err
	})
	return m, err
}

func nodeReports(tx state.Tx) (map[string]NodeReport, error) {
	m := map[string]NodeReport{}
	raw := tx.Get(pkiBucket, nodeReportsKey)
	if raw == nil {
		return m, nil
	}
	if len(raw) > 8*maxClusterRec {
		return nil, fmt.Errorf("stored node reports of %d bytes", len(raw))
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("stored node reports: %w", err)
	}
	return m, nil
}

// ClusterStatus is what `airlock status` shows of the cluster.
type ClusterStatus struct {
	// PodNetwork is PodNetworkMinimal once airlock gave nodes their pod
	// subnets; empty before.
	PodNetwork string                  `json:"podNetwork,omitempty"`
	APIServer  string                  `json:"apiServer,omitempty"`
	FirstCP    string                  `json:"firstControlPlane,omitempty"`
	PodSubnets map[string]netip.Prefix `json:"podSubnets,omitempty"`
	Reports    map[string]NodeReport   `json:"reports,omitempty"`
}

// LoadClusterStatus reads the cluster's status from the store.
func LoadClusterStatus(store state.Store) (ClusterStatus, error) {
	var cs ClusterStatus
	var err error
	if cs.PodSubnets, err = PodSubnets(store); err != nil {
		return cs, err
	}
	if cs.Reports, err = NodeReports(store); err != nil {
		return cs, err
	}
	if cs.APIServer, err = LoadAPIServer(store); err != nil {
		return cs, err
	}
	if cs.FirstCP, err = FirstControlPlane(store); err != nil {
		return cs, err
	}
	if len(cs.PodSubnets) > 0 {
		cs.PodNetwork = PodNetworkMinimal
	}
	return cs, nil
}
