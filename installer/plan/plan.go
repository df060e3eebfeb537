// Package plan works out what an install would do from an answer file and
// what the state store already records, without touching anything: the
// services airlock would run, the rules and the machines they expect, what
// each discovered machine would become, the cluster, the platform
// components in order, and the pipeline phases with those the journal
// shows finished, and which OS image each machine rule installs (checked
// against the bundle's signed metadata when the bundle could be opened).
package plan

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"airlock.dev/airlock/installer/assign"
	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/pipeline"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/manifests"
)

// Plan is what an install would do.
type Plan struct {
	Site      string    `json:"site"`
	Services  []Service `json:"services"`
	Bundle    string    `json:"bundle"`
	Admission string    `json:"admission"`
	Racks     []Rack    `json:"racks,omitempty"`
	Rules     []Rule    `json:"rules"`
	// Machines is what each discovered machine would become.
	Machines []assign.Assignment `json:"machines"`
	Cluster  Cluster             `json:"cluster"`
	Platform []Component         `json:"platform"`
	Phases   []Phase             `json:"phases"`
	// Problems are what would stop the install, each with the field path
	// of the answer file it is about (today: a rule's OS image the bundle
	// does not have).
	Problems []string `json:"problems,omitempty"`
}

// BundleView is what the plan knows of the answers' bundle: whether it
// could be opened (when not, Why says why) and its OS images from its
// signed metadata.
type BundleView struct {
	Opened   bool
	Why      string
	OSImages []BundleOSImage
}

// BundleOSImage is one OS image of the bundle, as its signed metadata
// records it.
type BundleOSImage struct {
	Name      string
	RawSize   int64
	RawSHA256 string
}

// Service is one network service airlock would run.
type Service struct {
	Name   string `json:"name"`
	Detail string `json:"detail"`
}

// Rack is one rack of the expected plan.
type Rack struct {
	Name     string `json:"name"`
	ToR      string `json:"tor,omitempty"`
	Expected int    `json:"expectedMachines"`
}

// Rule is one machine rule and what it expects.
type Rule struct {
	Name     string   `json:"name"`
	Role     string   `json:"role"`
	Hostname string   `json:"hostname"`
	Match    string   `json:"match"`
	Expected []string `json:"expected,omitempty"` // machines named by MAC or serial
	Admitted string   `json:"admitted"`
	OSImage  Image    `json:"osImage"`
}

// Image is the OS image a rule's machines get.
type Image struct {
	// Name is the rule's osImage or, when it names none, the bundle's
	// only OS image (Default); empty when there is none to install.
	Name    string `json:"name,omitempty"`
	Default bool   `json:"default,omitempty"`
	// InBundle says whether the bundle has it; nil when the bundle was
	// not opened. RawSize and RawSHA256 come from its signed metadata.
	InBundle  *bool  `json:"inBundle,omitempty"`
	RawSize   int64  `json:"rawSize,omitempty"`
	RawSHA256 string `json:"rawSHA256,omitempty"`
	// Note says in words what happens: the image to write, or why none.
	Note string `json:"note"`
}

// Cluster summarises the cluster to form.
type Cluster struct {
	Name          string `json:"name"`
	Distribution  string `json:"distribution"`
	PodCIDR       string `json:"podCIDR"`
	ServiceCIDR   string `json:"serviceCIDR"`
	Endpoint      string `json:"controlPlaneEndpoint"`
	ControlPlanes string `json:"controlPlanes"`
}

// Component is one platform component and whether it would be installed.
type Component struct {
	Name    string `json:"name"`
	Install bool   `json:"install"`
	Reason  string `json:"reason"`
}

// Phase is one step of the install pipeline.
type Phase struct {
	Name   string `json:"name"`
	Does   string `json:"does"`
	Status string `json:"status"` // pending, or the journal's latest status
}

// Make computes the plan from the answers, the machines discovered so far
// and the journal (both empty when nothing has run yet), and what could be
// read of the answers' bundle.
func Make(a *config.Answers, machines []inventory.Machine, journal []state.Entry, b BundleView) Plan {
	p := Plan{Site: a.Site.Name, Admission: a.Admission.Policy}
	p.Services = services(a.Network)
	p.Bundle = a.Bundle.Path
	if p.Bundle == "" {
		p.Bundle = "appended to the airlock executable"
	}
	switch {
	case a.Bundle.PublicKey != "":
		p.Bundle += ", signed by " + a.Bundle.PublicKey
	case a.Bundle.TrustOnFirstUse:
		p.Bundle += ", signed by the key trusted on first use"
	default:
		p.Bundle += ", which is refused: no key named (bundle.publicKey) and no trust on first use"
	}
	if b.Opened {
		p.Bundle += fmt.Sprintf("; %d OS image(s)", len(b.OSImages))
	} else if b.Why != "" {
		p.Bundle += "; not opened: " + b.Why
	}
	for _, r := range a.Racks {
		p.Racks = append(p.Racks, Rack{Name: r.Name, ToR: r.ToR, Expected: len(r.Ports)})
	}
	for i, r := range a.Machines {
		pr := rule(r, a.Admission.Policy)
		var problem string
		pr.OSImage, problem = ruleImage(r, b)
		if problem != "" {
			p.Problems = append(p.Problems, fmt.Sprintf("machines[%d].osImage: %s", i, problem))
		}
		p.Rules = append(p.Rules, pr)
	}
	p.Machines = assign.Assign(a, machines)
	p.Cluster = cluster(a)
	p.Platform = platform(a, manifests.Default())
	status := pipeline.PhaseStatus(journal)
	for _, ph := range pipeline.Phases() {
		p.Phases = append(p.Phases, Phase{Name: ph.Name, Does: ph.Does, Status: status[ph.Name]})
	}
	return p
}

func services(n config.Network) []Service {
	var out []Service
	if n.Interface == "" {
		out = append(out, Service{"dhcp", "NOT SERVED: network.interface is not set"})
	} else {
		switch n.Mode {
		case config.ModeFull:
			out = append(out, Service{"dhcp", fmt.Sprintf("full on %s: leases %s", n.Interface, rangeText(n.DynamicRange))})
		case config.ModeProxy:
			out = append(out, Service{"dhcp", fmt.Sprintf("proxyDHCP on %s (ports 67 and 4011): boot options only, beside the existing server", n.Interface)})
		default:
			out = append(out, Service{"dhcp", fmt.Sprintf("auto on %s: probe the segment, then proxy beside a server that answers, else full with leases %s", n.Interface, rangeText(n.DynamicRange))})
		}
		for _, r := range n.RelayedSubnets {
			out = append(out, Service{"dhcp-relayed", fmt.Sprintf("%s via relay %s: leases %s", r.Subnet, addrOr(r.RelayAddress, "any"), rangeText(r.DynamicRange))})
		}
	}
	at := addrOr(n.Address, "the interface's address")
	out = append(out,
		Service{"tftp", "iPXE first stage at " + at + " (BIOS undionly.kpxe, UEFI snponly.efi/ipxe.efi)"},
		Service{"http", "iPXE scripts, kernel, boot image and the agent API at " + at},
		Service{"registry", "read-only OCI registry of the bundle's images at " + at},
	)
	return out
}

func rangeText(r *config.Range) string {
	if r == nil {
		return "none"
	}
	return fmt.Sprintf("%s-%s (%d addresses)", r.Start, r.End, r.Size())
}

func addrOr(a netip.Addr, fallback string) string {
	if a.IsValid() {
		return a.String()
	}
	return fallback
}

func rule(r config.Rule, policy string) Rule {
	out := Rule{Name: r.Name, Role: r.Role, Hostname: r.Hostname, Match: matchText(r.Match)}
	for _, m := range r.Match.MACs {
		out.Expected = append(out.Expected, "mac "+string(m))
	}
	for _, s := range r.Match.Serials {
		out.Expected = append(out.Expected, "serial "+s)
	}
	switch {
	case policy == config.AdmitAny:
		out.Admitted = "every matching machine"
	case policy == config.AdmitApprove:
		out.Admitted = "after an operator approves each"
	case r.Match.Identifies():
		out.Admitted = "the named machines (allowlist)"
	default:
		out.Admitted = "none: allowlist admits only machines named by MAC or serial"
	}
	return out
}

// ruleImage is the OS image rule r installs and, when the bundle was
// opened, whether it has it: a problem (which install would refuse to
// start with) when it names an image the bundle lacks, or names none
// while the bundle has several.
func ruleImage(r config.Rule, b BundleView) (Image, string) {
	im := Image{Name: r.OSImage}
	if !b.Opened {
		switch {
		case im.Name != "":
			im.Note = "bundle not opened: not checked"
		default:
			im.Note = "the bundle's only OS image (bundle not opened: not checked)"
		}
		return im, ""
	}
	names := make([]string, 0, len(b.OSImages))
	for _, o := range b.OSImages {
		names = append(names, o.Name)
	}
	list := "none"
	if len(names) > 0 {
		list = strings.Join(names, ", ")
	}
	if im.Name == "" {
		switch len(b.OSImages) {
		case 0:
			im.Note = "none: the bundle has no OS image, the install ends once machines are assigned"
			return im, ""
		case 1:
			im.Name, im.Default = b.OSImages[0].Name, true
		default:
			im.Note = "not named, and the bundle has several"
			return im, fmt.Sprintf("rule %q names no OS image, and the bundle has %d (%s): name one", r.Name, len(names), list)
		}
	}
	in := false
	for _, o := range b.OSImages {
		if o.Name == im.Name {
			in, im.RawSize, im.RawSHA256 = true, o.RawSize, o.RawSHA256
		}
	}
	im.InBundle = &in
	if !in {
		im.Note = "MISSING from the bundle"
		return im, fmt.Sprintf("rule %q installs %q, which the bundle does not have (its OS images: %s)", r.Name, im.Name, list)
	}
	im.Note = "in the bundle"
	if im.Default {
		im.Note = "the bundle's only OS image"
	}
	return im, ""
}

func matchText(m config.Match) string {
	if m.IsEmpty() {
		return "every machine not matched before"
	}
	var parts []string
	if len(m.MACs) > 0 {
		parts = append(parts, fmt.Sprintf("%d MAC(s)", len(m.MACs)))
	}
	if len(m.Serials) > 0 {
		parts = append(parts, fmt.Sprintf("%d serial(s)", len(m.Serials)))
	}
	if len(m.Racks) > 0 {
		parts = append(parts, "rack "+strings.Join(m.Racks, "|"))
	}
	if m.MinMemory > 0 {
		parts = append(parts, "memory >= "+m.MinMemory.String())
	}
	if m.MaxMemory > 0 {
		parts = append(parts, "memory <= "+m.MaxMemory.String())
	}
	if m.MinCPUs > 0 {
		parts = append(parts, fmt.Sprintf("CPUs >= %d", m.MinCPUs))
	}
	if m.MinGPUs > 0 {
		parts = append(parts, fmt.Sprintf("GPUs >= %d", m.MinGPUs))
	}
	if m.MaxGPUs != nil {
		parts = append(parts, fmt.Sprintf("GPUs <= %d", *m.MaxGPUs))
	}
	if len(m.GPUModels) > 0 {
		parts = append(parts, "GPU model "+strings.Join(m.GPUModels, "|"))
	}
	return strings.Join(parts, ", ")
}

func cluster(a *config.Answers) Cluster {
	c := a.Cluster
	out := Cluster{
		Name:         c.Name,
		Distribution: c.Distribution.Name + " " + c.Distribution.Version,
		PodCIDR:      c.PodCIDR.String(),
		ServiceCIDR:  c.ServiceCIDR.String(),
		Endpoint:     c.ControlPlaneEndpoint,
	}
	if out.Endpoint == "" {
		out.Endpoint = "the first control plane's address"
	}
	n, exact := 0, true
	for _, r := range a.Machines {
		if r.Role != config.RoleControlPlane {
			continue
		}
		if !r.Match.Identifies() {
			exact = false
			continue
		}
		n += max(len(r.Match.MACs), len(r.Match.Serials))
	}
	switch {
	case exact:
		out.ControlPlanes = fmt.Sprint(n)
	case n > 0:
		out.ControlPlanes = fmt.Sprintf("at least %d, plus every machine a hardware rule matches", n)
	default:
		out.ControlPlanes = "every machine the control-plane rules match"
	}
	return out
}

func platform(a *config.Answers, cat manifests.Catalog) []Component {
	hasGPU := slices.ContainsFunc(a.Machines, func(r config.Rule) bool { return r.Role == config.RoleGPUWorker })
	var out []Component
	for _, c := range cat.Components {
		setting, set := a.Platform.Components[c.Name]
		comp := Component{Name: c.Name, Install: c.Default, Reason: "catalog default"}
		if set && setting.Enabled != nil {
			comp.Install = *setting.Enabled
			comp.Reason = "answer file"
		}
		if comp.Install && c.GPU && !hasGPU {
			comp.Install = false
			comp.Reason = "no gpu-worker rule"
		}
		if comp.Install && set && len(setting.Values) > 0 {
			comp.Reason += ", with value overrides"
		}
		out = append(out, comp)
	}
	return out
}
