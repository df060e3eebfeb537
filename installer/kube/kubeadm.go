package kube

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"airlock.dev/airlock/manifests"
)

// Roles a machine can take (the answer file's names).
const (
	RoleControlPlane = "control-plane"
	RoleWorker       = "worker"
	RoleGPUWorker    = "gpu-worker"
)

// Labels airlock gives nodes through the kubelet (--node-labels). The
// kubelet may not set node-role.kubernetes.io/* on itself (NodeRestriction
// refuses it); RoleLabels are applied through the API once a node joined.
const (
	LabelRole = "airlock.dev/role" // the machine's role
	LabelGPU  = "airlock.dev/gpu"  // "true" on gpu-workers
)

// Defaults of a ClusterSpec.
const (
	DefaultImageRepository = "registry.k8s.io"
	DefaultDNSDomain       = "cluster.local"
	DefaultAPIServerPort   = 6443
	DefaultCgroupDriver    = "systemd" // the Debian node image runs systemd
	DefaultCRISocket       = "unix:///run/containerd/containerd.sock"
	DefaultCNIBinDir       = "/opt/cni/bin"
	// DefaultKubeVIPImage is the kube-vip holding the control-plane VIP.
	DefaultKubeVIPImage = manifests.KubeVIPImage
)

// ClusterSpec is what every node's configuration says about its cluster:
// plain values, filled by the engine from the answer file.
type ClusterSpec struct {
	Name    string // cluster name (DNS label)
	Version string // Kubernetes version, vX.Y.Z
	// ControlPlaneEndpoint is host:port of the API server for nodes and
	// users: the VIP kube-vip holds. Empty: the first control plane's
	// address (a single control plane, no VIP).
	ControlPlaneEndpoint string
	PodCIDR, ServiceCIDR netip.Prefix
	DNSDomain            string   // default cluster.local
	ImageRepository      string   // default registry.k8s.io (images keep their upstream names)
	EtcdImageTag         string   // empty: kubeadm's own tag for Version
	CoreDNSImageTag      string   // empty: kubeadm's own tag for Version
	CgroupDriver         string   // systemd (default) or cgroupfs
	ExtraSANs            []string // more names or addresses in the API server's certificate
	// ControlPlaneSchedulable leaves control planes untainted (a cluster
	// without workers).
	ControlPlaneSchedulable bool
	// IgnorePreflightErrors names kubeadm preflight checks to ignore
	// (e.g. NumCPU, Mem on small lab machines).
	IgnorePreflightErrors []string
	PauseImage            string // default the pause of manifests.KubernetesImages(Version)
	KubeVIPImage          string // default DefaultKubeVIPImage
	CNIBinDir             string // where containerd finds CNI plugins; default /opt/cni/bin
}

// NodeSpec is one machine as a node of the cluster.
type NodeSpec struct {
	Hostname string     // the assigned host name: the node name
	Address  netip.Addr // the assigned address: the node IP
	Role     string     // RoleControlPlane, RoleWorker or RoleGPUWorker
	// Init marks the control plane that runs `kubeadm init`; every other
	// node joins.
	Init bool
	// Interface is the interface kube-vip announces the VIP on (control
	// planes); empty: kube-vip picks the one of the default route.
	Interface string
	Labels    map[string]string // extra node labels
	Taints    []corev1.Taint    // extra taints
}

// Secrets are the cluster credentials a node's configuration carries.
type Secrets struct {
	PKI *PKI
	// Token is the bootstrap token (id.secret) nodes join with; kubeadm
	// init creates it, valid for TokenTTL (default 24h) from then. (kubeadm
	// defaults a token's ttl, and then refuses an expires beside it: a
	// lifetime is all its configuration can say.)
	Token    string
	TokenTTL time.Duration
	// KubeVIP is this control plane's kube-vip client certificate (from
	// IssueClient, user KubeVIPUserPrefix+hostname in KubeVIPGroup); nil:
	// NodeSeed issues one valid for KubeVIPCertTTL.
	KubeVIP *CertKey
}

var (
	versionRE = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+$`)
	labelRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	imageRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9._/-]*[a-z0-9])?(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$`)
	ifnameRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$`)
	argRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
	dirRE     = regexp.MustCompile(`^(/[A-Za-z0-9_.-]+)+$`)
	tagRE     = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// withDefaults returns c with every empty optional field set.
func (c ClusterSpec) withDefaults() ClusterSpec {
	set := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	set(&c.DNSDomain, DefaultDNSDomain)
	set(&c.ImageRepository, DefaultImageRepository)
	set(&c.CgroupDriver, DefaultCgroupDriver)
	if c.PauseImage == "" {
		// kubeadm's own pause for Version; a version without an image
		// table leaves it empty, which Validate reports.
		c.PauseImage, _ = manifests.PauseImage(c.Version)
	}
	set(&c.KubeVIPImage, DefaultKubeVIPImage)
	set(&c.CNIBinDir, DefaultCNIBinDir)
	return c
}

// Validate reports every problem of c at once.
func (c ClusterSpec) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if !labelRE.MatchString(c.Name) {
		bad("cluster name %q: want a DNS label", c.Name)
	}
	if !versionRE.MatchString(c.Version) {
		bad("Kubernetes version %q: want vX.Y.Z", c.Version)
	}
	if c.ControlPlaneEndpoint != "" {
		if _, _, err := splitEndpoint(c.ControlPlaneEndpoint); err != nil {
			bad("control-plane endpoint: %w", err)
		}
	}
	for _, p := range []struct {
		name string
		p    netip.Prefix
	}{{"pod CIDR", c.PodCIDR}, {"service CIDR", c.ServiceCIDR}} {
		if !p.p.IsValid() || p.p != p.p.Masked() {
			bad("%s %v: want a network address with prefix length", p.name, p.p)
		}
	}
	if c.PodCIDR.IsValid() && c.ServiceCIDR.IsValid() && c.PodCIDR.Overlaps(c.ServiceCIDR) {
		bad("pod CIDR %s overlaps service CIDR %s", c.PodCIDR, c.ServiceCIDR)
	}
	if !validDNSName(c.DNSDomain) {
		bad("DNS domain %q: want a DNS name", c.DNSDomain)
	}
	if !validDNSName(c.ImageRepository) && !imageRE.MatchString(c.ImageRepository) {
		bad("image repository %q: want a registry host and path", c.ImageRepository)
	}
	for name, tag := range map[string]string{"etcd": c.EtcdImageTag, "CoreDNS": c.CoreDNSImageTag} {
		if tag != "" && !tagRE.MatchString(tag) {
			bad("%s image tag %q: want an image tag", name, tag)
		}
	}
	if c.CgroupDriver != "systemd" && c.CgroupDriver != "cgroupfs" {
		bad("cgroup driver %q: want systemd or cgroupfs", c.CgroupDriver)
	}
	for _, s := range c.ExtraSANs {
		if _, err := netip.ParseAddr(s); err != nil && !validDNSName(s) {
			bad("certificate SAN %q: want an address or DNS name", s)
		}
	}
	for _, s := range c.IgnorePreflightErrors {
		if !argRE.MatchString(s) {
			bad("preflight check %q: want a check name", s)
		}
	}
	for name, img := range map[string]string{"pause": c.PauseImage, "kube-vip": c.KubeVIPImage} {
		if name == "pause" && img == "" {
			bad("pause image: airlock knows no default for Kubernetes %q (known: %q): name it", c.Version, manifests.KubernetesVersions())
		} else if !imageRE.MatchString(img) || !strings.Contains(img, "/") {
			bad("%s image %q: want a full image reference", name, img)
		}
	}
	if !dirRE.MatchString(c.CNIBinDir) {
		bad("CNI directory %q: want a clean absolute path", c.CNIBinDir)
	}
	return errors.Join(errs...)
}

// Validate reports every problem of n at once.
func (n NodeSpec) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if !labelRE.MatchString(n.Hostname) {
		bad("node name %q: want a DNS label", n.Hostname)
	}
	if !n.Address.IsValid() || n.Address.IsUnspecified() || n.Address.Zone() != "" {
		bad("node %q: address %v: want a unicast address", n.Hostname, n.Address)
	}
	switch n.Role {
	case RoleControlPlane:
	case RoleWorker, RoleGPUWorker:
		if n.Init {
			bad("node %q: only a control plane runs kubeadm init, not a %s", n.Hostname, n.Role)
		}
	default:
		bad("node %q: role %q: want control-plane, worker or gpu-worker", n.Hostname, n.Role)
	}
	if n.Interface != "" && !ifnameRE.MatchString(n.Interface) {
		bad("node %q: interface %q: want an interface name", n.Hostname, n.Interface)
	}
	for k, v := range n.Labels {
		if err := checkLabel(k, v); err != nil {
			bad("node %q: %w", n.Hostname, err)
		}
	}
	for _, t := range n.Taints {
		if err := checkLabel(t.Key, t.Value); err != nil {
			bad("node %q: taint: %w", n.Hostname, err)
		}
		switch t.Effect {
		case corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute:
		default:
			bad("node %q: taint %q: effect %q: want NoSchedule, PreferNoSchedule or NoExecute", n.Hostname, t.Key, t.Effect)
		}
	}
	return errors.Join(errs...)
}

var (
	labelKeyRE   = regexp.MustCompile(`^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$`)
	labelValueRE = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$`)
)

// checkLabel checks a label (or taint) key and value, and refuses the
// kubernetes.io and k8s.io namespaces the kubelet may not set on itself.
func checkLabel(k, v string) error {
	if !labelKeyRE.MatchString(k) || !labelValueRE.MatchString(v) {
		return fmt.Errorf("label %q=%q: want a Kubernetes label key and value", k, v)
	}
	if prefix, _, ok := strings.Cut(k, "/"); ok && (prefix == "kubernetes.io" || prefix == "k8s.io" ||
		strings.HasSuffix(prefix, ".kubernetes.io") || strings.HasSuffix(prefix, ".k8s.io")) {
		return fmt.Errorf("label %q: the kubelet may not set labels under %s (apply them through the API)", k, prefix)
	}
	return nil
}

func validDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !labelRE.MatchString(l) {
			return false
		}
	}
	return true
}

// splitEndpoint splits host:port; host is an address or a DNS name.
func splitEndpoint(ep string) (string, int, error) {
	host, ps, err := net.SplitHostPort(ep)
	if err != nil {
		return "", 0, fmt.Errorf("%q: want host:port", ep)
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("%q: port %q: want 1-65535", ep, ps)
	}
	if _, err := netip.ParseAddr(host); err != nil && !validDNSName(host) {
		return "", 0, fmt.Errorf("%q: host %q: want an address or DNS name", ep, host)
	}
	return host, port, nil
}

// endpoint is the API server endpoint nodes join through: the cluster's
// VIP endpoint, or the first control plane's address.
func (c ClusterSpec) endpoint(firstCP netip.Addr) string {
	if c.ControlPlaneEndpoint != "" {
		return c.ControlPlaneEndpoint
	}
	return net.JoinHostPort(firstCP.String(), strconv.Itoa(DefaultAPIServerPort))
}

// RoleLabels are the node-role.kubernetes.io labels `kubectl get nodes`
// shows as ROLES, which only the API (not the kubelet) may set: airlock
// applies them once the node joined. kubeadm labels control planes itself.
func RoleLabels(role string) map[string]string {
	switch role {
	case RoleWorker:
		return map[string]string{"node-role.kubernetes.io/worker": ""}
	case RoleGPUWorker:
		return map[string]string{"node-role.kubernetes.io/worker": "", "node-role.kubernetes.io/gpu-worker": ""}
	}
	return nil
}

// nodeLabels are the labels the kubelet registers its node with.
func (n NodeSpec) nodeLabels() map[string]string {
	l := maps.Clone(n.Labels)
	if l == nil {
		l = map[string]string{}
	}
	l[LabelRole] = n.Role
	if n.Role == RoleGPUWorker {
		l[LabelGPU] = "true"
	}
	return l
}

// ---- kubeadm v1beta4 documents (the fields airlock sets, as kubeadm's
// cmd/kubeadm/app/apis/kubeadm/v1beta4 spells them; kubeadm decodes
// strictly, and the golden files pass `kubeadm config validate`).

const kubeadmAPIVersion = "kubeadm.k8s.io/v1beta4"

type kArg struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

type kAPIEndpoint struct {
	AdvertiseAddress string `json:"advertiseAddress,omitempty"`
	BindPort         int32  `json:"bindPort,omitempty"`
}

type kNodeRegistration struct {
	Name      string         `json:"name,omitempty"`
	CRISocket string         `json:"criSocket,omitempty"`
	Taints    []corev1.Taint `json:"taints"` // an empty list means none, a missing one kubeadm's default
	// KubeletExtraArgs are the kubelet flags of this node.
	KubeletExtraArgs      []kArg            `json:"kubeletExtraArgs,omitempty"`
	IgnorePreflightErrors []string          `json:"ignorePreflightErrors,omitempty"`
	ImagePullPolicy       corev1.PullPolicy `json:"imagePullPolicy,omitempty"`
}

type kBootstrapToken struct {
	Token       string   `json:"token"`
	Description string   `json:"description,omitempty"`
	TTL         string   `json:"ttl"`
	Usages      []string `json:"usages,omitempty"`
	Groups      []string `json:"groups,omitempty"`
}

type kInitConfiguration struct {
	metav1.TypeMeta  `json:",inline"`
	BootstrapTokens  []kBootstrapToken `json:"bootstrapTokens,omitempty"`
	NodeRegistration kNodeRegistration `json:"nodeRegistration"`
	LocalAPIEndpoint kAPIEndpoint      `json:"localAPIEndpoint"`
	Timeouts         *kTimeouts        `json:"timeouts,omitempty"`
}

// kTimeouts are kubeadm's waits. Its defaults (4 minutes for the control
// plane and the kubelet, 5 for a join's discovery) are too short for
// machines started together, where a joining node waits for the first
// control plane's API server, and for small or emulated machines.
type kTimeouts struct {
	ControlPlaneComponentHealthCheck *metav1.Duration `json:"controlPlaneComponentHealthCheck,omitempty"`
	KubeletHealthCheck               *metav1.Duration `json:"kubeletHealthCheck,omitempty"`
	TLSBootstrap                     *metav1.Duration `json:"tlsBootstrap,omitempty"`
	Discovery                        *metav1.Duration `json:"discovery,omitempty"`
}

// nodeTimeouts are airlock's kubeadm waits: a joining node may start
// long before the first control plane's API server answers.
func nodeTimeouts(join bool) *kTimeouts {
	d := func(t time.Duration) *metav1.Duration { return &metav1.Duration{Duration: t} }
	t := &kTimeouts{ControlPlaneComponentHealthCheck: d(20 * time.Minute), KubeletHealthCheck: d(10 * time.Minute)}
	if join {
		t.TLSBootstrap, t.Discovery = d(20*time.Minute), d(45*time.Minute)
	}
	return t
}

type kImageMeta struct {
	ImageRepository string `json:"imageRepository,omitempty"`
	ImageTag        string `json:"imageTag,omitempty"`
}

type kLocalEtcd struct {
	kImageMeta `json:",inline"`
	DataDir    string `json:"dataDir"`
}

type kClusterConfiguration struct {
	metav1.TypeMeta      `json:",inline"`
	ClusterName          string `json:"clusterName"`
	KubernetesVersion    string `json:"kubernetesVersion"`
	ControlPlaneEndpoint string `json:"controlPlaneEndpoint"`
	CertificatesDir      string `json:"certificatesDir"`
	ImageRepository      string `json:"imageRepository"`
	EncryptionAlgorithm  string `json:"encryptionAlgorithm"`
	Networking           struct {
		ServiceSubnet string `json:"serviceSubnet"`
		PodSubnet     string `json:"podSubnet"`
		DNSDomain     string `json:"dnsDomain"`
	} `json:"networking"`
	Etcd struct {
		Local kLocalEtcd `json:"local"`
	} `json:"etcd"`
	APIServer struct {
		CertSANs []string `json:"certSANs,omitempty"`
	} `json:"apiServer"`
	DNS kImageMeta `json:"dns"`
}

type kBootstrapTokenDiscovery struct {
	Token             string   `json:"token"`
	APIServerEndpoint string   `json:"apiServerEndpoint"`
	CACertHashes      []string `json:"caCertHashes"`
}

type kJoinControlPlane struct {
	LocalAPIEndpoint kAPIEndpoint `json:"localAPIEndpoint"`
}

type kJoinConfiguration struct {
	metav1.TypeMeta  `json:",inline"`
	NodeRegistration kNodeRegistration `json:"nodeRegistration"`
	CACertPath       string            `json:"caCertPath"`
	Discovery        struct {
		BootstrapToken kBootstrapTokenDiscovery `json:"bootstrapToken"`
	} `json:"discovery"`
	ControlPlane *kJoinControlPlane `json:"controlPlane,omitempty"`
	Timeouts     *kTimeouts         `json:"timeouts,omitempty"`
}

// kKubeletConfiguration is the cluster-wide kubelet configuration kubeadm
// init uploads (joining nodes download it).
type kKubeletConfiguration struct {
	metav1.TypeMeta `json:",inline"`
	CgroupDriver    string `json:"cgroupDriver"`
}

// Paths on the node.
const (
	KubernetesDir   = "/etc/kubernetes"
	PKIDir          = "/etc/kubernetes/pki"
	ManifestsDir    = "/etc/kubernetes/manifests"
	AirlockDir      = "/etc/kubernetes/airlock" // airlock's files for the node
	KubeadmConfig   = AirlockDir + "/kubeadm.yaml"
	ContainerdToml  = "/etc/containerd/config.toml"
	etcdDataDir     = "/var/lib/etcd"
	bootstrapGroup  = "system:bootstrappers:kubeadm:default-node-token"
	defaultTokenTTL = 24 * time.Hour
)

func (c ClusterSpec) nodeRegistration(n NodeSpec) kNodeRegistration {
	labels := n.nodeLabels()
	pairs := make([]string, 0, len(labels))
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		pairs = append(pairs, k+"="+labels[k])
	}
	taints := []corev1.Taint{}
	if n.Role == RoleControlPlane && !c.ControlPlaneSchedulable {
		taints = append(taints, corev1.Taint{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule})
	}
	taints = append(taints, n.Taints...)
	return kNodeRegistration{
		Name:      n.Hostname,
		CRISocket: DefaultCRISocket,
		Taints:    taints,
		KubeletExtraArgs: []kArg{
			{Name: "node-ip", Value: n.Address.String()},
			{Name: "node-labels", Value: strings.Join(pairs, ",")},
		},
		IgnorePreflightErrors: c.IgnorePreflightErrors,
		ImagePullPolicy:       corev1.PullIfNotPresent,
	}
}

func typeMeta(apiVersion, kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: apiVersion, Kind: kind}
}

// certSANs are the API server certificate's extra names: the endpoint's
// host (the VIP) and ExtraSANs.
func (c ClusterSpec) certSANs() []string {
	var sans []string
	if c.ControlPlaneEndpoint != "" {
		host, _, _ := splitEndpoint(c.ControlPlaneEndpoint) // checked by Validate
		sans = append(sans, host)
	}
	for _, s := range c.ExtraSANs {
		if !slices.Contains(sans, s) {
			sans = append(sans, s)
		}
	}
	return sans
}

func checkSpecs(c ClusterSpec, n NodeSpec, s Secrets) error {
	errs := []error{c.Validate(), n.Validate()}
	if s.TokenTTL < 0 || s.TokenTTL > 7*24*time.Hour {
		errs = append(errs, fmt.Errorf("bootstrap token lifetime %v: want at most 168h", s.TokenTTL))
	}
	if _, err := ParseToken(s.Token); err != nil {
		errs = append(errs, fmt.Errorf("bootstrap token: want [a-z0-9]{6}.[a-z0-9]{16}"))
	}
	if s.PKI == nil {
		errs = append(errs, fmt.Errorf("no cluster PKI"))
	}
	if c.ControlPlaneEndpoint == "" && n.Role == RoleControlPlane && !n.Init {
		errs = append(errs, fmt.Errorf("node %q: a second control plane needs cluster.controlPlaneEndpoint (a VIP)", n.Hostname))
	}
	if c.PodCIDR.IsValid() && c.PodCIDR.Contains(n.Address) || c.ServiceCIDR.IsValid() && c.ServiceCIDR.Contains(n.Address) {
		errs = append(errs, fmt.Errorf("node %q: address %s inside the pod or service CIDR", n.Hostname, n.Address))
	}
	return errors.Join(errs...)
}

// InitConfig renders the kubeadm configuration of the first control plane
// n: InitConfiguration (node, its API endpoint, the bootstrap token),
// ClusterConfiguration and the cluster-wide KubeletConfiguration.
func InitConfig(c ClusterSpec, n NodeSpec, s Secrets) ([]byte, error) {
	if err := checkSpecs(c, n, s); err != nil {
		return nil, fmt.Errorf("kubeadm init configuration: %w", err)
	}
	if !n.Init || n.Role != RoleControlPlane {
		return nil, fmt.Errorf("kubeadm init configuration: node %q is not the first control plane", n.Hostname)
	}
	c = c.withDefaults()
	tok := kBootstrapToken{
		Token:       s.Token,
		Description: "airlock: nodes of the first install join with it",
		Usages:      []string{"signing", "authentication"},
		Groups:      []string{bootstrapGroup},
	}
	tok.TTL = defaultTokenTTL.String()
	if s.TokenTTL != 0 {
		tok.TTL = s.TokenTTL.String()
	}
	initCfg := kInitConfiguration{
		TypeMeta:         typeMeta(kubeadmAPIVersion, "InitConfiguration"),
		BootstrapTokens:  []kBootstrapToken{tok},
		NodeRegistration: c.nodeRegistration(n),
		LocalAPIEndpoint: kAPIEndpoint{AdvertiseAddress: n.Address.String(), BindPort: DefaultAPIServerPort},
		Timeouts:         nodeTimeouts(false),
	}
	cc := kClusterConfiguration{
		TypeMeta:             typeMeta(kubeadmAPIVersion, "ClusterConfiguration"),
		ClusterName:          c.Name,
		KubernetesVersion:    c.Version,
		ControlPlaneEndpoint: c.endpoint(n.Address),
		CertificatesDir:      PKIDir,
		ImageRepository:      c.ImageRepository,
		// Leaf certificates kubeadm makes match airlock's CAs' keys.
		EncryptionAlgorithm: "ECDSA-P256",
		DNS:                 kImageMeta{ImageTag: c.CoreDNSImageTag},
	}
	cc.Networking.ServiceSubnet = c.ServiceCIDR.String()
	cc.Networking.PodSubnet = c.PodCIDR.String()
	cc.Networking.DNSDomain = c.DNSDomain
	cc.Etcd.Local = kLocalEtcd{kImageMeta: kImageMeta{ImageTag: c.EtcdImageTag}, DataDir: etcdDataDir}
	cc.APIServer.CertSANs = c.certSANs()
	kc := kKubeletConfiguration{TypeMeta: typeMeta("kubelet.config.k8s.io/v1beta1", "KubeletConfiguration"), CgroupDriver: c.CgroupDriver}
	return marshalDocs(initCfg, cc, kc)
}

// JoinConfig renders the JoinConfiguration of node n: a worker, or a
// further control plane (controlPlane set; the CAs are already on its disk
// from the seed, so no certificate key and no upload-certs).
func JoinConfig(c ClusterSpec, n NodeSpec, s Secrets, firstCP netip.Addr) ([]byte, error) {
	if err := checkSpecs(c, n, s); err != nil {
		return nil, fmt.Errorf("kubeadm join configuration: %w", err)
	}
	if n.Init {
		return nil, fmt.Errorf("kubeadm join configuration: node %q runs kubeadm init", n.Hostname)
	}
	if c.ControlPlaneEndpoint == "" && !firstCP.IsValid() {
		return nil, fmt.Errorf("kubeadm join configuration: no control-plane endpoint and no first control plane address")
	}
	hash, err := s.PKI.CAHash()
	if err != nil {
		return nil, fmt.Errorf("kubeadm join configuration: %w", err)
	}
	c = c.withDefaults()
	jc := kJoinConfiguration{
		TypeMeta:         typeMeta(kubeadmAPIVersion, "JoinConfiguration"),
		NodeRegistration: c.nodeRegistration(n),
		CACertPath:       PKIDir + "/ca.crt",
		Timeouts:         nodeTimeouts(true),
	}
	jc.Discovery.BootstrapToken = kBootstrapTokenDiscovery{Token: s.Token, APIServerEndpoint: c.endpoint(firstCP), CACertHashes: []string{hash}}
	if n.Role == RoleControlPlane {
		jc.ControlPlane = &kJoinControlPlane{LocalAPIEndpoint: kAPIEndpoint{AdvertiseAddress: n.Address.String(), BindPort: DefaultAPIServerPort}}
	}
	return marshalDocs(jc)
}

// marshalDocs renders docs as one YAML stream.
func marshalDocs(docs ...any) ([]byte, error) {
	var buf bytes.Buffer
	for i, d := range docs {
		b, err := yaml.Marshal(d)
		if err != nil {
			return nil, fmt.Errorf("render %T: %w", d, err)
		}
		if i > 0 {
			buf.WriteString("---\n")
		}
		buf.Write(b)
	}
	return buf.Bytes(), nil
}
