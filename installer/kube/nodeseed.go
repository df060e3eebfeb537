package kube

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"airlock.dev/airlock/installer/seed"
)

// Driver makes a machine a node of the cluster: the files and commands
// its cloud-init seed carries. kubeadm is the first; RKE2 or k0s can
// follow behind the same interface.
type Driver interface {
	// Name is the answer file's cluster.distribution.name.
	Name() string
	// NodeSeed returns the seed's Kubernetes part for node n of cluster c.
	// firstCP is the first control plane's address (the join endpoint of
	// a cluster without a VIP); now dates the certificates it issues.
	NodeSeed(c ClusterSpec, n NodeSpec, s Secrets, firstCP netip.Addr, now time.Time) (NodeSeed, error)
}

// NodeSeed is the Kubernetes part of one machine's seed: it goes into
// seed.Config's WriteFiles and RunCmd (after the caller's own commands).
type NodeSeed struct {
	Files  []seed.File
	RunCmd [][]string
}

// Kubeadm is the kubeadm Driver.
type Kubeadm struct{}

var _ Driver = Kubeadm{}

// Name implements Driver.
func (Kubeadm) Name() string { return "kubeadm" }

// Files airlock writes on a node, beside kubeadm's own.
const (
	ModulesLoadFile = "/etc/modules-load.d/airlock-kubernetes.conf"
	SysctlFile      = "/etc/sysctl.d/90-airlock-kubernetes.conf"
	// KubeVIPManifest is kube-vip's static pod; KubeVIPKubeconfig its
	// credential (not admin.conf, not super-admin.conf).
	KubeVIPManifest   = ManifestsDir + "/kube-vip.yaml"
	KubeVIPKubeconfig = AirlockDir + "/kube-vip.conf"
	// KubeVIPRBAC is the Role and RoleBinding kube-vip needs; the first
	// control plane applies it right after kubeadm init (with admin.conf),
	// then swaps its kube-vip to leader election (KubeVIPElectManifest).
	KubeVIPRBAC          = AirlockDir + "/kube-vip-rbac.yaml"
	KubeVIPElectManifest = AirlockDir + "/kube-vip-elect.yaml"
)

// kube-vip's identity: each control plane's kube-vip is the user
// KubeVIPUserPrefix+hostname in the group KubeVIPGroup, which KubeVIPRBAC
// allows only its leader-election Lease in kube-system.
const (
	KubeVIPGroup      = "airlock:kube-vip"
	KubeVIPUserPrefix = "airlock:kube-vip:"
	KubeVIPLease      = "plndr-cp-lock"
	KubeVIPCertTTL    = 365 * 24 * time.Hour
)

// NodeSeed implements Driver. Every node gets the kernel modules and
// sysctls kubeadm's preflight checks, containerd's configuration for
// Kubernetes, its kubeadm configuration and the kubeadm command. Control
// planes also get the cluster's CAs and service-account keys under
// /etc/kubernetes/pki (so that no upload-certs window exists) and, when
// the endpoint is a VIP, kube-vip as a static pod.
//
// The first control plane's kube-vip starts without leader election: it
// holds the VIP alone while kubeadm init runs (kubeadm reaches the API
// through the endpoint before any RBAC exists). Right after init the seed
// applies KubeVIPRBAC with /etc/kubernetes/admin.conf and replaces the
// manifest with the leader-electing one, which every later control plane
// runs from the start.
func (k Kubeadm) NodeSeed(c ClusterSpec, n NodeSpec, s Secrets, firstCP netip.Addr, now time.Time) (NodeSeed, error) {
	var cfg []byte
	var err error
	if n.Init {
		cfg, err = InitConfig(c, n, s)
	} else {
		cfg, err = JoinConfig(c, n, s, firstCP)
	}
	if err != nil {
		return NodeSeed{}, fmt.Errorf("node seed of %s: %w", n.Hostname, err)
	}
	c = c.withDefaults()
	ctd, err := ContainerdConfig(c)
	if err != nil {
		return NodeSeed{}, fmt.Errorf("node seed of %s: %w", n.Hostname, err)
	}
	ns := NodeSeed{Files: []seed.File{
		{Path: ServiceGuardUnit, Content: serviceGuard(c.ServiceCIDR), Permissions: 0o644},
		{Path: ModulesLoadFile, Content: []byte("overlay\nbr_netfilter\n"), Permissions: 0o644},
		{Path: SysctlFile, Content: sysctls(n.Address), Permissions: 0o644},
		{Path: ContainerdToml, Content: ctd, Permissions: 0o644},
		{Path: KubeadmConfig, Content: cfg, Permissions: 0o600}, // it holds the bootstrap token
	}}
	ns.RunCmd = [][]string{
		{"systemctl", "enable", "--now", serviceGuardName},
		{"modprobe", "overlay"},
		{"modprobe", "br_netfilter"},
		{"sysctl", "--system"},
		{"systemctl", "restart", "containerd"}, // it started before cloud-init wrote its configuration
	}
	if n.Role != RoleControlPlane {
		ns.RunCmd = append(ns.RunCmd, []string{"kubeadm", "join", "--config", KubeadmConfig})
		return ns, nil
	}
	ns.Files = append(ns.Files, pkiFiles(s.PKI)...)
	vip, useVIP, err := kubeVIPAddr(c)
	if err != nil {
		return NodeSeed{}, fmt.Errorf("node seed of %s: %w", n.Hostname, err)
	}
	if useVIP {
		var ck CertKey
		if s.KubeVIP != nil {
			ck = *s.KubeVIP
		} else if ck, err = s.PKI.IssueClient(KubeVIPUserPrefix+n.Hostname, []string{KubeVIPGroup}, KubeVIPCertTTL, now); err != nil {
			return NodeSeed{}, fmt.Errorf("node seed of %s: kube-vip credential: %w", n.Hostname, err)
		}
		// kube-vip reaches its own node's API server (the name
		// "kubernetes" is 127.0.0.1 in its pod and in the server
		// certificate), never the VIP it may itself hold.
		kc, err := Kubeconfig("https://kubernetes:"+strconv.Itoa(DefaultAPIServerPort), c.Name, KubeVIPUserPrefix+n.Hostname, s.PKI.CA.CertPEM, ck)
		if err != nil {
			return NodeSeed{}, fmt.Errorf("node seed of %s: %w", n.Hostname, err)
		}
		elect, err := KubeVIPPod(c, n, vip, true)
		if err != nil {
			return NodeSeed{}, fmt.Errorf("node seed of %s: %w", n.Hostname, err)
		}
		ns.Files = append(ns.Files, seed.File{Path: KubeVIPKubeconfig, Content: kc, Permissions: 0o600})
		if n.Init {
			alone, err := KubeVIPPod(c, n, vip, false)
			if err != nil {
				return NodeSeed{}, fmt.Errorf("node seed of %s: %w", n.Hostname, err)
			}
			rbac, err := KubeVIPRBACManifest()
			if err != nil {
				return NodeSeed{}, fmt.Errorf("node seed of %s: %w", n.Hostname, err)
			}
			ns.Files = append(ns.Files,
				seed.File{Path: KubeVIPManifest, Content: alone, Permissions: 0o600},
				seed.File{Path: KubeVIPElectManifest, Content: elect, Permissions: 0o600},
				seed.File{Path: KubeVIPRBAC, Content: rbac, Permissions: 0o600})
		} else {
			ns.Files = append(ns.Files, seed.File{Path: KubeVIPManifest, Content: elect, Permissions: 0o600})
		}
	}
	if !n.Init {
		ns.RunCmd = append(ns.RunCmd, []string{"kubeadm", "join", "--config", KubeadmConfig})
		return ns, nil
	}
	ns.RunCmd = append(ns.RunCmd, []string{"kubeadm", "init", "--config", KubeadmConfig})
	if useVIP {
		ns.RunCmd = append(ns.RunCmd,
			[]string{"kubectl", "--kubeconfig", KubernetesDir + "/admin.conf", "apply", "-f", KubeVIPRBAC},
			[]string{"install", "-m", "0600", KubeVIPElectManifest, KubeVIPManifest})
	}
	return ns, nil
}

// ServiceGuardUnit keeps traffic for the cluster's Service addresses on
// the node until kube-proxy's rules rewrite it. Before they exist (the
// first seconds of a node, when CoreDNS already asks for the API server
// at its Service address) such traffic follows the default route off the
// provisioning network: the lab's uplink counted it. The unit drops, in
// the filter table, what is still addressed to the Service range: in
// FORWARD (pods; kube-proxy's DNAT happened before, in PREROUTING) and in
// OUTPUT (the node itself; nat OUTPUT's DNAT runs before filter OUTPUT),
// so rewritten traffic is never touched. It runs at every boot, before
// containerd and the kubelet.
const (
	serviceGuardName = "airlock-service-guard.service"
	ServiceGuardUnit = "/etc/systemd/system/" + serviceGuardName
	// DefaultServiceCIDR is kubeadm's Service range when none is given.
	DefaultServiceCIDR = "10.96.0.0/12"
)

// ServiceGuardRules are the iptables rules (argument lists after the
// program and -w) of the service guard for cidr; the program is iptables
// or, for IPv6, ip6tables.
func ServiceGuardRules(cidr netip.Prefix) (prog string, rules [][]string) {
	if !cidr.IsValid() {
		cidr = netip.MustParsePrefix(DefaultServiceCIDR)
	}
	prog = "iptables"
	if cidr.Addr().Is6() {
		prog = "ip6tables"
	}
	for _, chain := range []string{"FORWARD", "OUTPUT"} {
		rules = append(rules, []string{chain, "-d", cidr.Masked().String(), "-m", "comment", "--comment", "airlock: Service address not rewritten by kube-proxy", "-j", "DROP"})
	}
	return prog, rules
}

// serviceGuard is ServiceGuardUnit's content.
func serviceGuard(cidr netip.Prefix) []byte {
	prog, rules := ServiceGuardRules(cidr)
	var b bytes.Buffer
	b.WriteString("[Unit]\nDescription=airlock: drop traffic to Service addresses that kube-proxy has not rewritten\n")
	b.WriteString("DefaultDependencies=no\nAfter=local-fs.target\nBefore=network-pre.target containerd.service kubelet.service\nWants=network-pre.target\n\n")
	b.WriteString("[Service]\nType=oneshot\nRemainAfterExit=yes\n")
	for _, r := range rules {
		fmt.Fprintf(&b, "ExecStart=%s -w -I %s \"%s\" -j DROP\n", prog, strings.Join(r[:6], " "), r[6])
	}
	for _, r := range rules {
		fmt.Fprintf(&b, "ExecStop=%s -w -D %s \"%s\" -j DROP\n", prog, strings.Join(r[:6], " "), r[6])
	}
	b.WriteString("\n[Install]\nWantedBy=multi-user.target\n")
	return b.Bytes()
}

// pkiFiles are the shared control-plane certificates and keys where
// kubeadm looks for them (it then makes every other certificate itself).
func pkiFiles(p *PKI) []seed.File {
	f := func(name string, b []byte) seed.File {
		return seed.File{Path: PKIDir + "/" + name, Content: b, Permissions: 0o600}
	}
	return []seed.File{
		f("ca.crt", p.CA.CertPEM), f("ca.key", p.CA.KeyPEM),
		f("front-proxy-ca.crt", p.FrontProxyCA.CertPEM), f("front-proxy-ca.key", p.FrontProxyCA.KeyPEM),
		f("etcd/ca.crt", p.EtcdCA.CertPEM), f("etcd/ca.key", p.EtcdCA.KeyPEM),
		f("sa.key", p.ServiceAccountKeyPEM), f("sa.pub", p.ServiceAccountPubPEM),
	}
}

// sysctls are what kubeadm's preflight requires (bridged traffic through
// iptables, forwarding).
func sysctls(addr netip.Addr) []byte {
	var b bytes.Buffer
	b.WriteString("# Written by airlock: what Kubernetes needs of the kernel.\n")
	b.WriteString("net.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\nnet.ipv4.ip_forward = 1\n")
	if addr.Is6() && !addr.Is4In6() {
		b.WriteString("net.ipv6.conf.all.forwarding = 1\n")
	}
	return b.Bytes()
}

// kubeVIPAddr returns the VIP kube-vip must hold: the endpoint's host when
// it is an address (a DNS name means a load balancer airlock does not
// run). kube-vip only moves the address, so the port must be the API
// server's own.
func kubeVIPAddr(c ClusterSpec) (netip.Addr, bool, error) {
	if c.ControlPlaneEndpoint == "" {
		return netip.Addr{}, false, nil
	}
	host, port, err := splitEndpoint(c.ControlPlaneEndpoint)
	if err != nil {
		return netip.Addr{}, false, err
	}
	vip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false, nil
	}
	if port != DefaultAPIServerPort {
		return netip.Addr{}, false, fmt.Errorf("control-plane endpoint %s: kube-vip moves the address only, so the port must be the API server's %d", c.ControlPlaneEndpoint, DefaultAPIServerPort)
	}
	return vip, true, nil
}

// KubeVIPPod renders kube-vip's static pod for control plane n, holding
// vip by ARP (NDP for IPv6); elect turns leader election on.
func KubeVIPPod(c ClusterSpec, n NodeSpec, vip netip.Addr, elect bool) ([]byte, error) {
	c = c.withDefaults()
	bits := "32"
	if vip.Is6() {
		bits = "128"
	}
	env := []corev1.EnvVar{
		{Name: "address", Value: vip.String()},
		{Name: "port", Value: strconv.Itoa(DefaultAPIServerPort)},
		{Name: "vip_arp", Value: "true"},
		{Name: "vip_subnet", Value: bits},
		{Name: "cp_enable", Value: "true"},
		{Name: "cp_namespace", Value: "kube-system"},
		{Name: "svc_enable", Value: "false"},
		{Name: "vip_leaderelection", Value: strconv.FormatBool(elect)},
		{Name: "vip_leasename", Value: KubeVIPLease},
		{Name: "vip_leaseduration", Value: "5"},
		{Name: "vip_renewdeadline", Value: "3"},
		{Name: "vip_retryperiod", Value: "1"},
		{Name: "vip_nodename", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
	}
	if n.Interface != "" {
		env = append(env, corev1.EnvVar{Name: "vip_interface", Value: n.Interface})
	}
	hostPathFile := corev1.HostPathFile
	pod := corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "kube-vip", Namespace: "kube-system", Labels: map[string]string{"app.kubernetes.io/name": "kube-vip", "app.kubernetes.io/managed-by": "airlock"}},
		Spec: corev1.PodSpec{
			HostNetwork: true,
			HostAliases: []corev1.HostAlias{{IP: "127.0.0.1", Hostnames: []string{"kubernetes"}}},
			Containers: []corev1.Container{{
				Name:            "kube-vip",
				Image:           c.KubeVIPImage,
				ImagePullPolicy: corev1.PullIfNotPresent,
				Args:            []string{"manager"},
				Env:             env,
				SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{
					Add: []corev1.Capability{"NET_ADMIN", "NET_RAW"}, Drop: []corev1.Capability{"ALL"}}},
				// kube-vip reads /etc/kubernetes/admin.conf by default:
				// that path in its container is airlock's narrow
				// credential, not the node's admin.conf.
				VolumeMounts: []corev1.VolumeMount{{Name: "kubeconfig", MountPath: "/etc/kubernetes/admin.conf", ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{{Name: "kubeconfig", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: KubeVIPKubeconfig, Type: &hostPathFile}}}},
		},
	}
	return marshalDocs(pod)
}

// KubeVIPRBACManifest is the Role and RoleBinding that let kube-vip (the
// group KubeVIPGroup) create its leader-election Lease in kube-system and
// read and renew that one Lease: nothing else.
func KubeVIPRBACManifest() ([]byte, error) {
	meta := metav1.ObjectMeta{Name: "airlock:kube-vip", Namespace: "kube-system", Labels: map[string]string{"app.kubernetes.io/managed-by": "airlock"}}
	role := rbacv1.Role{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
		ObjectMeta: meta,
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{KubeVIPLease}, Verbs: []string{"get", "watch", "update", "patch"}},
		},
	}
	binding := rbacv1.RoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"},
		ObjectMeta: meta,
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: meta.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: KubeVIPGroup}},
	}
	return marshalDocs(role, binding)
}

// containerd's configuration (version 2: Debian's containerd 1.6 and 1.7
// read it, 2.x migrates it).
type containerdConfig struct {
	Version int                  `toml:"version"`
	Plugins containerdPluginsCfg `toml:"plugins"`
}

type containerdPluginsCfg struct {
	CRI criConfig `toml:"io.containerd.grpc.v1.cri"`
}

type criConfig struct {
	SandboxImage string `toml:"sandbox_image"`
	Containerd   struct {
		DefaultRuntimeName string                   `toml:"default_runtime_name"`
		Runtimes           map[string]runtimeConfig `toml:"runtimes"`
	} `toml:"containerd"`
	CNI struct {
		BinDir  string `toml:"bin_dir"`
		ConfDir string `toml:"conf_dir"`
	} `toml:"cni"`
	Registry struct {
		// ConfigPath makes containerd read the hosts.toml mirrors the seed
		// writes for each upstream registry name.
		ConfigPath string `toml:"config_path"`
	} `toml:"registry"`
}

type runtimeConfig struct {
	RuntimeType string `toml:"runtime_type"`
	Options     struct {
		SystemdCgroup bool `toml:"SystemdCgroup"`
	} `toml:"options"`
}

// ContainerdConfig renders /etc/containerd/config.toml for Kubernetes:
// runc with the cluster's cgroup driver, the pause image by its upstream
// name (pulled through the same mirrors as every image), the CNI
// directories, and the registry hosts directory of the seed's mirrors.
func ContainerdConfig(c ClusterSpec) ([]byte, error) {
	c = c.withDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("containerd configuration: %w", err)
	}
	var cfg containerdConfig
	cfg.Version = 2
	cri := &cfg.Plugins.CRI
	cri.SandboxImage = c.PauseImage
	cri.Containerd.DefaultRuntimeName = "runc"
	rc := runtimeConfig{RuntimeType: "io.containerd.runc.v2"}
	rc.Options.SystemdCgroup = c.CgroupDriver == "systemd"
	cri.Containerd.Runtimes = map[string]runtimeConfig{"runc": rc}
	cri.CNI.BinDir = c.CNIBinDir
	cri.CNI.ConfDir = "/etc/cni/net.d"
	cri.Registry.ConfigPath = seed.CertsDir
	var b bytes.Buffer
	b.WriteString("# Written by airlock: containerd for Kubernetes.\n")
	if err := toml.NewEncoder(&b).Encode(cfg); err != nil {
		return nil, fmt.Errorf("render containerd configuration: %w", err)
	}
	return b.Bytes(), nil
}
