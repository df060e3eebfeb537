package kube

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"airlock.dev/airlock/installer/seed"
)

// NodeScript is the node's first-boot script (node.sh): it downloads the
// binaries, runs each command of the seed as a named step and reports the
// outcome to airlock. It is fixed text: every value it uses is in a file
// WithNode writes beside it, and none is evaluated as shell text.
//
//go:embed node.sh
var NodeScript []byte

// Files of the node's first boot, beside the Driver's.
const (
	NodeScriptFile   = AirlockDir + "/airlock-node.sh"
	BinariesFile     = AirlockDir + "/binaries.list"
	ReportURLFile    = AirlockDir + "/report.url"
	ReportHeaderFile = AirlockDir + "/report.header" // the report token: 0600
	AirlockCAFile    = AirlockDir + "/airlock-ca.crt"
	KubeletUnit      = "/etc/systemd/system/kubelet.service"
	KubeletDropIn    = "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf"
	// CNIConfFile is the minimal pod network: the standard bridge and
	// host-local plugins over the node's pod subnet.
	CNIConfFile = "/etc/cni/net.d/10-airlock-minimal.conflist"
	// BinDir is where the node's Kubernetes binaries go.
	BinDir = "/usr/local/bin"
)

// PodNetworkMinimal is what airlock calls the cluster's pod network while
// it is the per-node bridge of CNIConfFile (until the platform's CNI).
const PodNetworkMinimal = "minimal"

// Binaries is the set of Kubernetes programs a node downloads.
var Binaries = []string{"kubeadm", "kubectl", "kubelet"}

// Binary is one program a node downloads from airlock.
type Binary struct {
	Name   string // one of Binaries
	URL    string // http(s) URL airlock serves it at
	SHA256 string // hex; the node checks it before it moves the file into place
}

// NodeBoot is what a node's first boot needs beside its NodeSeed: the
// binaries to download, where to report, and its share of the pod network.
type NodeBoot struct {
	Binaries []Binary
	// ReportURL is airlock's https URL for this node's report (the result
	// and step go in its query); ReportToken is its single-use token.
	ReportURL   string
	ReportToken string
	// CAPEM is airlock's CA certificate: the report's TLS is checked
	// against it alone.
	CAPEM []byte
	// PodSubnet is this node's pod subnet, carved from the cluster's pod
	// CIDR (AllocatePodSubnet).
	PodSubnet netip.Prefix
}

var (
	sha256HexRE   = regexp.MustCompile(`^[0-9a-f]{64}$`)
	reportTokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]{16,128}$`)
	// urlRE is what a URL in a file the script reads may hold: no space,
	// quote, '$', backquote, backslash or control character.
	urlRE = regexp.MustCompile(`^https?://[A-Za-z0-9.:\[\]_/%-]+$`)
)

// Validate reports every problem of b at once.
func (b NodeBoot) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	var names []string
	for _, bin := range b.Binaries {
		names = append(names, bin.Name)
		if !slices.Contains(Binaries, bin.Name) {
			bad("binary %q: want one of %s", bin.Name, strings.Join(Binaries, ", "))
		}
		if !sha256HexRE.MatchString(bin.SHA256) {
			bad("binary %q: sha256 %q: want 64 hex digits", bin.Name, bin.SHA256)
		}
		if err := checkURL(bin.URL, "http", "https"); err != nil {
			bad("binary %q: %w", bin.Name, err)
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, Binaries) {
		bad("binaries %q: want each of %s once", names, strings.Join(Binaries, ", "))
	}
	if err := checkURL(b.ReportURL, "https"); err != nil {
		bad("report %w", err)
	}
	if !reportTokenRE.MatchString(b.ReportToken) {
		bad("report token: want 16-128 letters, digits, '-' or '_'")
	}
	if err := checkCertsPEM(b.CAPEM); err != nil {
		bad("airlock's CA: %w", err)
	}
	if !b.PodSubnet.IsValid() || b.PodSubnet != b.PodSubnet.Masked() {
		bad("pod subnet %v: want a network address with prefix length", b.PodSubnet)
	}
	return errors.Join(errs...)
}

func checkURL(s string, schemes ...string) error {
	u, err := url.Parse(s)
	if err != nil || !slices.Contains(schemes, u.Scheme) || u.Host == "" || u.User != nil || u.RawQuery != "" ||
		u.Fragment != "" || len(s) > 2048 || !urlRE.MatchString(s) {
		return fmt.Errorf("URL %q: want %s://HOST[:PORT]/PATH of plain characters", s, schemes[0])
	}
	return nil
}

// kubelet's systemd unit and kubeadm's drop-in, as the kubeadm packages
// ship them (kubeadm writes /var/lib/kubelet/config.yaml and
// kubeadm-flags.env, and starts the kubelet itself), with the binary in
// BinDir.
const (
	kubeletUnit = `# Written by airlock: kubelet, the Kubernetes node agent (kubeadm's unit).
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=` + BinDir + `/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
`
	kubeletDropIn = `# Written by airlock: kubeadm's drop-in for the kubelet.
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# kubeadm init and join write this file at run time: KUBELET_KUBEADM_ARGS.
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=` + BinDir + `/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
`
)

// CNIConfig renders the minimal pod network of a node: the standard
// bridge plugin (cni0, the subnet's first address as the pods' gateway,
// masquerade out of it) with host-local addresses from subnet.
func CNIConfig(subnet netip.Prefix) ([]byte, error) {
	if !subnet.IsValid() || subnet != subnet.Masked() {
		return nil, fmt.Errorf("CNI configuration: pod subnet %v: want a network address with prefix length", subnet)
	}
	dst := "0.0.0.0/0"
	if subnet.Addr().Is6() {
		dst = "::/0"
	}
	type rng struct {
		Subnet string `json:"subnet"`
	}
	type route struct {
		Dst string `json:"dst"`
	}
	type ipam struct {
		Type    string  `json:"type"`
		Ranges  [][]rng `json:"ranges"`
		Routes  []route `json:"routes"`
		DataDir string  `json:"dataDir,omitempty"`
	}
	type plugin struct {
		Type        string `json:"type"`
		Bridge      string `json:"bridge"`
		IsGateway   bool   `json:"isGateway"`
		IPMasq      bool   `json:"ipMasq"`
		HairpinMode bool   `json:"hairpinMode"`
		IPAM        ipam   `json:"ipam"`
	}
	conf := struct {
		CNIVersion string   `json:"cniVersion"`
		Name       string   `json:"name"`
		Plugins    []plugin `json:"plugins"`
	}{
		CNIVersion: "1.0.0",
		Name:       "airlock-" + PodNetworkMinimal,
		Plugins: []plugin{{Type: "bridge", Bridge: "cni0", IsGateway: true, IPMasq: true, HairpinMode: true,
			IPAM: ipam{Type: "host-local", Ranges: [][]rng{{{Subnet: subnet.String()}}}, Routes: []route{{Dst: dst}}}}},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("render CNI configuration: %w", err)
	}
	return append(b, '\n'), nil
}

// StepName names a seed command as the node reports it: kubeadm-init,
// kubeadm-join, or the program's name.
func StepName(argv []string) string {
	name := argv[0]
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		name = name[i+1:]
	}
	if (name == "kubeadm" || name == "systemctl") && len(argv) > 1 {
		name += "-" + argv[1]
	}
	name = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, strings.ToLower(name))
	if len(name) > 32 {
		name = name[:32]
	}
	return name
}

// WithNode returns ns as a node's whole first boot: the files of b (the
// script, the binaries to download with their digests, the report's URL,
// token and CA, the kubelet's unit and the minimal pod network) beside
// ns's, and the commands: download the binaries, enable the kubelet, each
// of ns's commands as a named step (so that a failure is reported with its
// step and output), then the report that all went well.
func WithNode(ns NodeSeed, b NodeBoot) (NodeSeed, error) {
	if err := b.Validate(); err != nil {
		return NodeSeed{}, fmt.Errorf("node boot: %w", err)
	}
	cni, err := CNIConfig(b.PodSubnet)
	if err != nil {
		return NodeSeed{}, err
	}
	var list strings.Builder
	bins := slices.Clone(b.Binaries)
	slices.SortFunc(bins, func(x, y Binary) int { return strings.Compare(x.Name, y.Name) })
	for _, bin := range bins {
		fmt.Fprintf(&list, "%s %s %s\n", bin.Name, bin.SHA256, bin.URL)
	}
	out := NodeSeed{Files: slices.Clone(ns.Files)}
	out.Files = append(out.Files,
		seed.File{Path: NodeScriptFile, Content: NodeScript, Permissions: 0o700},
		seed.File{Path: BinariesFile, Content: []byte(list.String()), Permissions: 0o600},
		seed.File{Path: ReportURLFile, Content: []byte(b.ReportURL + "\n"), Permissions: 0o600},
		seed.File{Path: ReportHeaderFile, Content: []byte("Authorization: Bearer " + b.ReportToken + "\n"), Permissions: 0o600},
		seed.File{Path: AirlockCAFile, Content: b.CAPEM, Permissions: 0o644},
		seed.File{Path: KubeletUnit, Content: []byte(kubeletUnit), Permissions: 0o644},
		seed.File{Path: KubeletDropIn, Content: []byte(kubeletDropIn), Permissions: 0o644},
		seed.File{Path: CNIConfFile, Content: cni, Permissions: 0o644},
	)
	sh := func(args ...string) []string { return append([]string{"/bin/sh", NodeScriptFile}, args...) }
	out.RunCmd = append(out.RunCmd,
		sh("fetch"),
		sh("step", "kubelet-unit", "systemctl", "daemon-reload"),
		sh("step", "kubelet-enable", "systemctl", "enable", "kubelet"))
	for _, argv := range ns.RunCmd {
		if len(argv) == 0 {
			return NodeSeed{}, errors.New("node boot: an empty command")
		}
		out.RunCmd = append(out.RunCmd, append(sh("step", StepName(argv)), argv...))
	}
	out.RunCmd = append(out.RunCmd, sh("report"))
	return out, nil
}
