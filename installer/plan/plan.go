// Package plan works out what an install would do from an answer file and
// what the state store already records, without touching anything: the
// services airlock would run, the rules and the machines they expect, what
// each discovered machine would become, the cluster, the platform
// components in order, and the pipeline phases with those the journal
// shows finished.
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
// and the journal (both empty when nothing has run yet).
func Make(a *config.Answers, machines []inventory.Machine, journal []state.Entry) Plan {
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
	for _, r := range a.Racks {
		p.Racks = append(p.Racks, Rack{Name: r.Name, ToR: r.ToR, Expected: len(r.Ports)})
	}
	for _, r := range a.Machines {
		p.Rules = append(p.Rules, rule(r, a.Admission.Policy))
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
