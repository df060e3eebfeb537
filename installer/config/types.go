// Package config is the answer file: one typed description of an
// installation (site, provisioning network, bundle, racks, machine rules,
// admission, cluster and platform), its strict YAML decoding with line and
// column for every problem, its semantic validation, its JSON Schema, and
// the commented example that `airlock init` writes.
//
// The wizard fills the same Answers struct that an answer file decodes
// into, so both modes run the same engine on the same data.
package config

import (
	"encoding/binary"
	"net/netip"
)

// APIVersion and Kind identify an answer file.
const (
	APIVersion = "airlock.dev/v1alpha1"
	Kind       = "Install"
)

// Answers is everything airlock needs to know to install a site.
type Answers struct {
	APIVersion string    `yaml:"apiVersion" json:"apiVersion" doc:"Always airlock.dev/v1alpha1." enum:"airlock.dev/v1alpha1" required:"true"`
	Kind       string    `yaml:"kind" json:"kind" doc:"Always Install." enum:"Install" required:"true"`
	Site       Site      `yaml:"site" json:"site" doc:"Where this installation is." required:"true"`
	Network    Network   `yaml:"network" json:"network" doc:"The provisioning network airlock serves." required:"true"`
	Bundle     Bundle    `yaml:"bundle,omitempty" json:"bundle,omitempty" doc:"The signed bundle with everything the site needs."`
	Racks      []Rack    `yaml:"racks,omitempty" json:"racks,omitempty" doc:"Optional expected plan of racks and the machine on each switch port."`
	Machines   []Rule    `yaml:"machines,omitempty" json:"machines,omitempty" doc:"Rules that turn discovered machines into nodes; the first rule that matches wins."`
	Admission  Admission `yaml:"admission,omitempty" json:"admission,omitempty" doc:"Which discovered machines may be installed."`
	Cluster    Cluster   `yaml:"cluster" json:"cluster" doc:"The Kubernetes cluster to form." required:"true"`
	Platform   Platform  `yaml:"platform,omitempty" json:"platform,omitempty" doc:"The platform components laid down on the cluster."`
}

// Site names the installation.
type Site struct {
	Name     string `yaml:"name" json:"name" doc:"A short name for the site, used in reports and hostnames (DNS label)." required:"true"`
	Location string `yaml:"location,omitempty" json:"location,omitempty" doc:"Free text: building, hall, room."`
	Domain   string `yaml:"domain,omitempty" json:"domain,omitempty" doc:"DNS domain for node hostnames, e.g. hall-b.example.internal."`
	// Lab marks a rehearsal on a virtual rack, the only place where
	// admission policy any is allowed.
	Lab bool `yaml:"lab,omitempty" json:"lab,omitempty" doc:"This is a rehearsal on a virtual rack (airlock lab): only then may admission.policy be any."`
	// SSHAuthorizedKeys go into every installed node's seed.
	SSHAuthorizedKeys []string `yaml:"sshAuthorizedKeys,omitempty" json:"sshAuthorizedKeys,omitempty" doc:"Public keys allowed to log in to every installed node (its default user), one authorized_keys line each, e.g. ssh-ed25519 AAAA... admin@laptop."`
}

// Network modes.
const (
	ModeAuto  = "auto"
	ModeFull  = "full"
	ModeProxy = "proxy"
)

// Network is the provisioning network airlock serves DHCP, TFTP and HTTP on.
type Network struct {
	Interface      string          `yaml:"interface,omitempty" json:"interface,omitempty" doc:"The laptop's NIC on the provisioning network. airlock never serves DHCP until this is set."`
	Mode           string          `yaml:"mode,omitempty" json:"mode,omitempty" doc:"full: airlock hands out addresses; proxy: an existing DHCP server does, airlock adds boot options; auto: probe the segment at start and pick." enum:"auto,full,proxy"`
	Subnet         netip.Prefix    `yaml:"subnet" json:"subnet" doc:"The provisioning subnet, e.g. 10.40.0.0/24." format:"cidr" required:"true"`
	Address        netip.Addr      `yaml:"address,omitempty" json:"address,omitempty" doc:"airlock's own address on the interface (default: the first host address of the subnet)." format:"ip"`
	DynamicRange   *Range          `yaml:"dynamicRange,omitempty" json:"dynamicRange,omitempty" doc:"Addresses handed to machines during discovery and install (full mode)."`
	Gateway        netip.Addr      `yaml:"gateway,omitempty" json:"gateway,omitempty" doc:"Default gateway offered to machines, if the network has one." format:"ip"`
	DNS            []netip.Addr    `yaml:"dns,omitempty" json:"dns,omitempty" doc:"DNS servers offered to machines." format:"ip"`
	NTP            []netip.Addr    `yaml:"ntp,omitempty" json:"ntp,omitempty" doc:"NTP servers offered to machines (default: airlock itself)." format:"ip"`
	LeaseTime      Duration        `yaml:"leaseTime,omitempty" json:"leaseTime,omitempty" doc:"DHCP lease time, e.g. 1h." format:"duration"`
	RelayedSubnets []RelayedSubnet `yaml:"relayedSubnets,omitempty" json:"relayedSubnets,omitempty" doc:"Other rack subnets whose DHCP requests reach airlock through relays (giaddr)."`
}

// Range is an inclusive range of IPv4 addresses.
type Range struct {
	Start netip.Addr `yaml:"start" json:"start" doc:"First address of the range." format:"ip" required:"true"`
	End   netip.Addr `yaml:"end" json:"end" doc:"Last address of the range." format:"ip" required:"true"`
}

// Contains reports whether a lies in the range.
func (r Range) Contains(a netip.Addr) bool {
	return r.Start.Compare(a) <= 0 && a.Compare(r.End) <= 0
}

// Size is the number of addresses in the range (IPv4).
func (r Range) Size() uint32 { return toUint32(r.End) - toUint32(r.Start) + 1 }

// toUint32 and fromUint32 convert IPv4 addresses for arithmetic.
func toUint32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func fromUint32(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// RelayedSubnet is a subnet behind a DHCP relay.
type RelayedSubnet struct {
	Subnet       netip.Prefix `yaml:"subnet" json:"subnet" doc:"The relayed subnet." format:"cidr" required:"true"`
	RelayAddress netip.Addr   `yaml:"relayAddress,omitempty" json:"relayAddress,omitempty" doc:"The relay agent's address (giaddr) on that subnet; default: any address inside the subnet." format:"ip"`
	DynamicRange *Range       `yaml:"dynamicRange" json:"dynamicRange" doc:"Addresses handed out on the relayed subnet." required:"true"`
	Gateway      netip.Addr   `yaml:"gateway,omitempty" json:"gateway,omitempty" doc:"Default gateway on the relayed subnet." format:"ip"`
	DNS          []netip.Addr `yaml:"dns,omitempty" json:"dns,omitempty" doc:"DNS servers for that subnet (default: the provisioning network's)." format:"ip"`
}

// Bundle says where the signed bundle is and which key signs it.
type Bundle struct {
	Path      string `yaml:"path,omitempty" json:"path,omitempty" doc:"Path of the bundle file (or the first of its parts). Empty: the bundle appended to the airlock executable."`
	PublicKey string `yaml:"publicKey,omitempty" json:"publicKey,omitempty" doc:"Path of the ed25519 public key the bundle must be signed with (the builder's .pub file, handed over out of band). Without it, or trustOnFirstUse, a bundle is refused."`
	// TrustOnFirstUse trusts whichever key signs the first bundle opened
	// and records it in the state directory; later bundles must carry it.
	TrustOnFirstUse bool `yaml:"trustOnFirstUse,omitempty" json:"trustOnFirstUse,omitempty" doc:"Instead of publicKey: trust the key that signs the first bundle opened, record it in the state directory, and refuse any other key later. Compare the key ID airlock prints with the builder's."`
}

// Rack is one rack of the expected plan.
type Rack struct {
	Name  string     `yaml:"name" json:"name" doc:"Rack name (DNS label), e.g. rack-a." required:"true"`
	ToR   string     `yaml:"tor,omitempty" json:"tor,omitempty" doc:"LLDP system name of the rack's top-of-rack switch, e.g. rack-a-tor."`
	Ports []RackPort `yaml:"ports,omitempty" json:"ports,omitempty" doc:"Which machine is expected on which switch port."`
}

// RackPort is one expected cabling: a switch port and the machine on it.
type RackPort struct {
	Port   string `yaml:"port" json:"port" doc:"Switch port as LLDP reports it, e.g. Eth1/7." required:"true"`
	Serial string `yaml:"serial,omitempty" json:"serial,omitempty" doc:"Expected machine's DMI serial number."`
	MAC    MAC    `yaml:"mac,omitempty" json:"mac,omitempty" doc:"Expected machine's MAC address on this port." format:"mac"`
}

// Roles a machine can take.
const (
	RoleControlPlane = "control-plane"
	RoleWorker       = "worker"
	RoleGPUWorker    = "gpu-worker"
)

// Rule matches discovered machines and says what they become.
type Rule struct {
	Name        string       `yaml:"name" json:"name" doc:"Rule name, shown in plans and reports." required:"true"`
	Match       Match        `yaml:"match,omitempty" json:"match,omitempty" doc:"What a machine must have for this rule to apply. All given conditions must hold; an empty match matches every machine."`
	Role        string       `yaml:"role" json:"role" doc:"What the matched machines become." enum:"control-plane,worker,gpu-worker" required:"true"`
	Hostname    string       `yaml:"hostname" json:"hostname" doc:"Hostname or template with {rack}, {index} (1-based within the rule), {serial}, e.g. gpu-{rack}-{index}." required:"true"`
	Address     netip.Prefix `yaml:"address,omitempty" json:"address,omitempty" doc:"Static address with prefix length, for a rule that matches exactly one machine." format:"cidr"`
	Bonds       []Bond       `yaml:"bonds,omitempty" json:"bonds,omitempty" doc:"Bonded interfaces to configure on the installed OS."`
	VLANs       []VLAN       `yaml:"vlans,omitempty" json:"vlans,omitempty" doc:"VLAN interfaces to configure on the installed OS."`
	InstallDisk InstallDisk  `yaml:"installDisk,omitempty" json:"installDisk,omitempty" doc:"Which disk the OS goes on."`
	OSImage     string       `yaml:"osImage,omitempty" json:"osImage,omitempty" doc:"The OS image the matched machines get, by its name in the bundle (bundle inspect lists them under OS IMAGES). Default: the bundle's only OS image, when it has exactly one." pattern:"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"`
}

// Match holds the conditions of a rule.
type Match struct {
	MACs      []MAC    `yaml:"macs,omitempty" json:"macs,omitempty" doc:"Any of these MAC addresses." format:"mac"`
	Serials   []string `yaml:"serials,omitempty" json:"serials,omitempty" doc:"Any of these DMI serial numbers."`
	Racks     []string `yaml:"racks,omitempty" json:"racks,omitempty" doc:"In any of these racks."`
	MinMemory Quantity `yaml:"minMemory,omitempty" json:"minMemory,omitempty" doc:"At least this much memory, e.g. 64Gi." format:"quantity"`
	MaxMemory Quantity `yaml:"maxMemory,omitempty" json:"maxMemory,omitempty" doc:"At most this much memory." format:"quantity"`
	MinCPUs   int      `yaml:"minCPUs,omitempty" json:"minCPUs,omitempty" doc:"At least this many logical CPUs." minimum:"0"`
	MinGPUs   int      `yaml:"minGPUs,omitempty" json:"minGPUs,omitempty" doc:"At least this many NVIDIA GPUs." minimum:"0"`
	MaxGPUs   *int     `yaml:"maxGPUs,omitempty" json:"maxGPUs,omitempty" doc:"At most this many NVIDIA GPUs (0: machines without GPUs)." minimum:"0"`
	GPUModels []string `yaml:"gpuModels,omitempty" json:"gpuModels,omitempty" doc:"GPU model names, e.g. A100-SXM4-80GB."`
}

// IsEmpty reports whether the match has no conditions (it matches everything).
func (m Match) IsEmpty() bool {
	return len(m.MACs) == 0 && len(m.Serials) == 0 && len(m.Racks) == 0 && m.MinMemory == 0 &&
		m.MaxMemory == 0 && m.MinCPUs == 0 && m.MinGPUs == 0 && m.MaxGPUs == nil && len(m.GPUModels) == 0
}

// Identifies reports whether the match names machines individually (by a
// usable MAC or serial), which is what an allowlist admits. Empty and
// placeholder entries name nothing.
func (m Match) Identifies() bool {
	macs, serials := m.named()
	return macs > 0 || serials > 0
}

// named counts the usable MACs and serials of the match.
func (m Match) named() (macs, serials int) {
	for _, mac := range m.MACs {
		if mac.Usable() {
			macs++
		}
	}
	for _, s := range m.Serials {
		if SerialProblem(s) == "" {
			serials++
		}
	}
	return macs, serials
}

// Bond is a bonded interface.
type Bond struct {
	Name       string       `yaml:"name" json:"name" doc:"Bond interface name, e.g. bond0." required:"true"`
	Mode       string       `yaml:"mode,omitempty" json:"mode,omitempty" doc:"Bonding mode." enum:"802.3ad,active-backup,balance-xor,balance-alb,balance-tlb,balance-rr,broadcast"`
	Interfaces []string     `yaml:"interfaces" json:"interfaces" doc:"Member interfaces (names or MAC addresses)." required:"true"`
	Address    netip.Prefix `yaml:"address,omitempty" json:"address,omitempty" doc:"Static address of the bond." format:"cidr"`
	MTU        int          `yaml:"mtu,omitempty" json:"mtu,omitempty" doc:"MTU of the bond." minimum:"0"`
}

// VLAN is a tagged interface.
type VLAN struct {
	ID      int          `yaml:"id" json:"id" doc:"VLAN ID, 1-4094." required:"true" minimum:"1"`
	Link    string       `yaml:"link" json:"link" doc:"Parent interface or bond." required:"true"`
	Address netip.Prefix `yaml:"address,omitempty" json:"address,omitempty" doc:"Static address on the VLAN." format:"cidr"`
}

// Install disk policies.
const (
	DiskSmallest = "smallest"
	DiskLargest  = "largest"
	DiskFirst    = "first"
	DiskSerial   = "serial"
)

// InstallDisk chooses the OS disk.
type InstallDisk struct {
	Policy     string   `yaml:"policy,omitempty" json:"policy,omitempty" doc:"smallest or largest non-removable disk of at least minSize, the first one, or the one with the given serial." enum:"smallest,largest,first,serial"`
	Serial     string   `yaml:"serial,omitempty" json:"serial,omitempty" doc:"Disk serial (policy serial)."`
	MinSize    Quantity `yaml:"minSize,omitempty" json:"minSize,omitempty" doc:"Ignore disks smaller than this, e.g. 100G." format:"quantity"`
	Rotational *bool    `yaml:"rotational,omitempty" json:"rotational,omitempty" doc:"Only spinning (true) or only solid-state (false) disks."`
	AllowWipe  bool     `yaml:"allowWipe,omitempty" json:"allowWipe,omitempty" doc:"Install on the chosen disk even when it holds a partition table, filesystem, LVM or RAID signature: what is on it is lost. Without it such a disk is refused and the machine fails."`
}

// Admission policies.
const (
	AdmitAllowlist = "allowlist"
	AdmitApprove   = "approve"
	AdmitAny       = "any"
)

// Admission decides which discovered machines may be installed.
type Admission struct {
	Policy string `yaml:"policy,omitempty" json:"policy,omitempty" doc:"allowlist: only machines a rule names by MAC or serial; approve: an operator approves each; any: every machine a rule matches, on a lab site only (site.lab)." enum:"allowlist,approve,any"`
}

// Cluster describes the Kubernetes cluster.
type Cluster struct {
	Name                 string       `yaml:"name" json:"name" doc:"Cluster name (DNS label)." required:"true"`
	Distribution         Distribution `yaml:"distribution,omitempty" json:"distribution,omitempty" doc:"How Kubernetes is installed."`
	PodCIDR              netip.Prefix `yaml:"podCIDR,omitempty" json:"podCIDR,omitempty" doc:"Pod network." format:"cidr"`
	ServiceCIDR          netip.Prefix `yaml:"serviceCIDR,omitempty" json:"serviceCIDR,omitempty" doc:"Service network." format:"cidr"`
	ControlPlaneEndpoint string       `yaml:"controlPlaneEndpoint,omitempty" json:"controlPlaneEndpoint,omitempty" doc:"host:port of the API server for nodes and users: a virtual IP or load balancer; needed with more than one control plane."`
}

// Distribution names the Kubernetes distribution and version.
type Distribution struct {
	Name    string `yaml:"name,omitempty" json:"name,omitempty" doc:"Distribution driver." enum:"kubeadm"`
	Version string `yaml:"version,omitempty" json:"version,omitempty" doc:"Kubernetes version, e.g. v1.35.4; it must be in the bundle." pattern:"^v[0-9]+\\.[0-9]+\\.[0-9]+$"`
}

// Platform selects the components laid down on the cluster.
type Platform struct {
	Components map[string]Component `yaml:"components,omitempty" json:"components,omitempty" doc:"Per-component settings, by catalog name."`
	GPU        GPU                  `yaml:"gpu,omitempty" json:"gpu,omitempty" doc:"NVIDIA GPU sharing."`
}

// Component turns one catalog component on or off and overrides values.
type Component struct {
	Enabled *bool          `yaml:"enabled,omitempty" json:"enabled,omitempty" doc:"Install this component (default from the catalog)."`
	Values  map[string]any `yaml:"values,omitempty" json:"values,omitempty" doc:"Helm values merged over the catalog defaults."`
}

// GPU sharing strategies.
const (
	GPUShareNone        = "none"
	GPUShareMIG         = "mig"
	GPUShareTimeSlicing = "time-slicing"
)

// GPU configures how NVIDIA GPUs are shared.
type GPU struct {
	Sharing     string       `yaml:"sharing,omitempty" json:"sharing,omitempty" doc:"none, mig (Multi-Instance GPU) or time-slicing." enum:"none,mig,time-slicing"`
	MIG         *MIG         `yaml:"mig,omitempty" json:"mig,omitempty" doc:"MIG settings (sharing: mig)."`
	TimeSlicing *TimeSlicing `yaml:"timeSlicing,omitempty" json:"timeSlicing,omitempty" doc:"Time-slicing settings (sharing: time-slicing)."`
}

// MIG configures Multi-Instance GPU partitioning.
type MIG struct {
	Strategy string            `yaml:"strategy,omitempty" json:"strategy,omitempty" doc:"single: one profile per GPU; mixed: several profiles per GPU." enum:"single,mixed"`
	Profiles map[string]string `yaml:"profiles,omitempty" json:"profiles,omitempty" doc:"GPU model to MIG layout, e.g. A100-SXM4-80GB: all-1g.10gb."`
}

// TimeSlicing configures oversubscription of GPUs.
type TimeSlicing struct {
	Replicas int `yaml:"replicas" json:"replicas" doc:"How many pods may share one GPU (2 or more)." required:"true" minimum:"2"`
}
