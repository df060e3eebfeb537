// Package agentapi is the wire contract between the node agent running in
// the discovery initramfs and airlock: the JSON types the agent sends
// (registration, inventory, heartbeat), their strict decoding and
// validation, per-boot token authentication, and an http.Handler for the
// /api/v1/agent/ endpoints backed by a small Backend interface.
//
// Everything an agent sends is untrusted: it is decoded with size limits,
// unknown fields are refused, and Validate rejects any value that could not
// have come from a real machine before it reaches the backend.
package agentapi

// Endpoint paths, relative to the prefix the handler is mounted under
// (httpboot mounts it at /api/v1/agent/).
const (
	PathRegister  = "register"
	PathInventory = "inventory"
	PathHeartbeat = "heartbeat"
)

// Prefix is where airlock serves the agent API.
const Prefix = "/api/v1/agent/"

// Kernel command-line parameters the agent reads. airlock.url is the
// plain-HTTP boot server (the OS image, checked against the digest in its
// order, comes from it); airlock.api is the https URL of the agent API,
// seeds and everything else that carries a token or a secret.
const (
	CmdlineToken = "airlock.token"
	CmdlineURL   = "airlock.url"
	CmdlineAPI   = "airlock.api"
)

// CACertPath is where the discovery image airlock assembles holds
// airlock's CA certificate (PEM): the only certificate the agent trusts
// for airlock.api.
const CACertPath = "/etc/airlock/ca.pem"

// Registration is the first report of a booted agent: who the machine is
// and what it has.
type Registration struct {
	// BootMAC is the MAC address of the NIC the agent got its address on.
	BootMAC string `json:"bootMAC"`
	// AgentVersion is the agent's build version.
	AgentVersion string `json:"agentVersion,omitempty"`
	// Arch is the Go GOARCH of the agent (amd64, arm64).
	Arch      string    `json:"arch"`
	Inventory Inventory `json:"inventory"`
}

// Inventory is the hardware of one machine as the agent saw it.
type Inventory struct {
	System System      `json:"system"`
	CPU    CPU         `json:"cpu"`
	Memory Memory      `json:"memory"`
	Disks  []Disk      `json:"disks,omitempty"`
	NICs   []NIC       `json:"nics,omitempty"`
	PCI    []PCIDevice `json:"pci,omitempty"`
}

// System is the SMBIOS/DMI identity of the machine.
type System struct {
	Vendor          string `json:"vendor,omitempty"`
	Product         string `json:"product,omitempty"`
	Serial          string `json:"serial,omitempty"`
	UUID            string `json:"uuid,omitempty"`
	ChassisAssetTag string `json:"chassisAssetTag,omitempty"`
	// ChassisLocation is the SMBIOS baseboard "location in chassis".
	ChassisLocation string `json:"chassisLocation,omitempty"`
	BIOSVendor      string `json:"biosVendor,omitempty"`
	BIOSVersion     string `json:"biosVersion,omitempty"`
	// Firmware is "uefi" or "bios".
	Firmware string `json:"firmware,omitempty"`
}

// CPU summarises the processors.
type CPU struct {
	Model   string `json:"model,omitempty"`
	Sockets int    `json:"sockets"`
	Cores   int    `json:"cores"`
	Threads int    `json:"threads"`
}

// Memory is the usable RAM as the kernel reports it.
type Memory struct {
	TotalBytes uint64 `json:"totalBytes"`
}

// Disk is one block device (whole disk, not a partition).
type Disk struct {
	Name       string `json:"name"`
	SizeBytes  uint64 `json:"sizeBytes"`
	Model      string `json:"model,omitempty"`
	Serial     string `json:"serial,omitempty"`
	WWN        string `json:"wwn,omitempty"`
	Rotational bool   `json:"rotational"`
	Removable  bool   `json:"removable"`
}

// NIC is one physical network interface.
type NIC struct {
	Name   string `json:"name"`
	MAC    string `json:"mac"`
	Driver string `json:"driver,omitempty"`
	// SpeedMbps is 0 when unknown or the link is down.
	SpeedMbps int           `json:"speedMbps,omitempty"`
	Link      bool          `json:"link"`
	LLDP      *LLDPNeighbor `json:"lldp,omitempty"`
}

// LLDPNeighbor is what the switch port a NIC is plugged into says about
// itself.
type LLDPNeighbor struct {
	ChassisID       string `json:"chassisID"`
	PortID          string `json:"portID"`
	SystemName      string `json:"systemName,omitempty"`
	PortDescription string `json:"portDescription,omitempty"`
}

// PCIDevice is one PCI function.
type PCIDevice struct {
	Address string `json:"address"` // 0000:00:02.0
	Vendor  string `json:"vendor"`  // 0x10de
	Device  string `json:"device"`  // 0x20b0
	Class   string `json:"class"`   // 0x030200
	Driver  string `json:"driver,omitempty"`
	// Name is set for devices airlock cares about, e.g. NVIDIA GPUs.
	Name string `json:"name,omitempty"`
}

// RegisterReply answers a registration.
type RegisterReply struct {
	// MachineID is airlock's stable identity for this machine.
	MachineID string `json:"machineID"`
	// HeartbeatSeconds is how often the agent should send a heartbeat.
	HeartbeatSeconds int `json:"heartbeatSeconds"`
}

// InventoryReply answers an inventory update.
type InventoryReply struct {
	MachineID string `json:"machineID"`
}

// Heartbeat tells airlock the agent is alive and what it is doing.
type Heartbeat struct {
	// Seq increases by at least one with every heartbeat of a boot; a
	// heartbeat whose Seq is not above the last one is a replay.
	Seq uint64 `json:"seq"`
	// State is what the agent is doing: "waiting", or an order's progress.
	State         string `json:"state"`
	UptimeSeconds uint64 `json:"uptimeSeconds"`
	Message       string `json:"message,omitempty"`
	// Results answers the orders of the last reply (at most MaxResults):
	// an order the agent runs, finished or failed. airlock keeps sending
	// an order until a final result for its ID comes back; an agent that
	// gets an order it has carried out already answers with the result
	// instead of doing it again.
	Results []OrderResult `json:"results,omitempty"`
}

// MaxResults bounds the order results one heartbeat carries.
const MaxResults = 16

// OrderResult is how an order stands on the agent.
type OrderResult struct {
	ID     string `json:"id"`
	Status string `json:"status"` // running, done or failed
	Error  string `json:"error,omitempty"`
	// Done and Total are the order's progress (bytes written, say).
	Done  uint64 `json:"done,omitempty"`
	Total uint64 `json:"total,omitempty"`
}

// Order result statuses.
const (
	ResultRunning = "running"
	ResultDone    = "done"
	ResultFailed  = "failed"
)

// Final reports whether the result ends the order.
func (r OrderResult) Final() bool { return r.Status == ResultDone || r.Status == ResultFailed }

// HeartbeatReply carries orders for the agent. An empty Orders list means
// keep waiting.
type HeartbeatReply struct {
	Orders           []Order `json:"orders,omitempty"`
	HeartbeatSeconds int     `json:"heartbeatSeconds"`
}

// Order is an instruction for the agent. Each has an ID that airlock made
// unique: the agent carries an order out once, and answers a re-sent one
// (its reply was lost) with the result. Reboot and power-off end the agent
// and need no answer.
type Order struct {
	ID   string `json:"id"`
	Kind string `json:"kind"`
	// Install is the order's work when Kind is OrderInstall.
	Install *InstallOrder `json:"install,omitempty"`
}

// InstallOrder says which disk gets which image and seed. The disk is named
// by the identity airlock pinned at assignment: the agent resolves it again
// right before it wipes, and refuses no match, several, or a removable or
// read-only disk.
type InstallOrder struct {
	Disk DiskPin `json:"disk"`
	// AllowWipe lets the agent wipe a disk that holds a partition table,
	// a filesystem, LVM or RAID; without it such a disk is refused.
	AllowWipe bool `json:"allowWipe,omitempty"`
	// Image is the OS image, written whole from the disk's start.
	Image Artifact `json:"image"`
	// Seed is the cloud-init NoCloud seed (a CIDATA filesystem), put in a
	// partition of its own at the disk's end.
	Seed Artifact `json:"seed"`
}

// DiskPin names a disk by what identifies it (at least a WWN or serial).
type DiskPin struct {
	WWN       string `json:"wwn,omitempty"`
	Serial    string `json:"serial,omitempty"`
	SizeBytes uint64 `json:"sizeBytes,omitempty"`
}

// Artifact is a file the agent fetches from airlock: Path is under the
// agent's airlock URL (never another host), Size and SHA256 are those of
// the raw content (for an image, once decompressed).
type Artifact struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Ends reports whether carrying out the order ends the agent, so that no
// result can come back.
func (o Order) Ends() bool { return o.Kind == OrderReboot || o.Kind == OrderPowerOff }

// Order kinds.
const (
	OrderWait     = "wait"
	OrderReboot   = "reboot"
	OrderPowerOff = "poweroff"
	// OrderInstall wipes the pinned disk, writes the OS image and the seed.
	OrderInstall = "install"
)
