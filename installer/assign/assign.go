// Package assign applies the answer file's machine rules to discovered
// machines: the first rule that matches a machine gives it its role and
// hostname (templates expanded), its static address if the rule has one,
// and the admission policy says whether it may be installed. It is a pure
// function of the answers and the inventory, so plan can show it and the
// install pipeline can record it.
package assign

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/inventory"
)

// Admission outcomes.
const (
	Admitted        = "admitted"
	AwaitsApproval  = "awaits-approval"
	NotInAllowlist  = "not-in-allowlist"
	NoRule          = "no-rule"
	DuplicateTarget = "duplicate-hostname"
)

// Assignment is what one machine becomes.
type Assignment struct {
	MachineID string `json:"machineID"`
	Serial    string `json:"serial,omitempty"`
	Rack      string `json:"rack,omitempty"`
	Rule      string `json:"rule,omitempty"`
	Role      string `json:"role,omitempty"`
	Hostname  string `json:"hostname,omitempty"`
	Address   string `json:"address,omitempty"`
	Admission string `json:"admission"`
	Reason    string `json:"reason,omitempty"`
}

// Assign works out every machine's assignment, in inventory order.
func Assign(a *config.Answers, machines []inventory.Machine) []Assignment {
	ordered := slices.Clone(machines)
	slices.SortStableFunc(ordered, func(x, y inventory.Machine) int {
		return cmp.Or(strings.Compare(x.Rack, y.Rack), x.FirstSeen.Compare(y.FirstSeen), strings.Compare(x.ID, y.ID))
	})
	index := map[int]int{} // rule -> machines matched so far
	out := make([]Assignment, 0, len(ordered))
	seen := map[string]string{} // hostname -> machine
	for _, m := range ordered {
		as := Assignment{MachineID: m.ID, Serial: m.Serial, Rack: m.Rack}
		ri := slices.IndexFunc(a.Machines, func(r config.Rule) bool { return Matches(r.Match, m) })
		if ri < 0 {
			as.Admission, as.Reason = NoRule, "no rule matches this machine"
			out = append(out, as)
			continue
		}
		r := a.Machines[ri]
		index[ri]++
		as.Rule, as.Role = r.Name, r.Role
		as.Hostname = Hostname(r.Hostname, m, index[ri])
		if r.Address.IsValid() {
			as.Address = r.Address.String()
		}
		switch a.Admission.Policy {
		case config.AdmitAny:
			as.Admission = Admitted
		case config.AdmitApprove:
			as.Admission, as.Reason = AwaitsApproval, "an operator approves each machine"
		default:
			if r.Match.Identifies() {
				as.Admission = Admitted
			} else {
				as.Admission, as.Reason = NotInAllowlist, fmt.Sprintf("rule %q matches by hardware, and the allowlist admits only machines named by MAC or serial", r.Name)
			}
		}
		if other, dup := seen[as.Hostname]; dup {
			as.Admission, as.Reason = DuplicateTarget, fmt.Sprintf("hostname %s is already %s's", as.Hostname, other)
		} else {
			seen[as.Hostname] = m.ID
		}
		out = append(out, as)
	}
	return out
}

// Matches reports whether every condition of match holds for m. An empty
// or placeholder identity never matches: a machine without a serial is not
// named by serials: [""], a MAC condition needs a real unicast MAC on both
// sides, an empty rack or GPU model matches nothing.
func Matches(match config.Match, m inventory.Machine) bool {
	if len(match.MACs) > 0 && !slices.ContainsFunc(match.MACs, func(mac config.MAC) bool {
		if !mac.Usable() {
			return false
		}
		return (config.UsableMAC(m.BootMAC) && strings.EqualFold(m.BootMAC, string(mac))) ||
			slices.ContainsFunc(m.MACs, func(have string) bool { return config.UsableMAC(have) && strings.EqualFold(have, string(mac)) })
	}) {
		return false
	}
	if len(match.Serials) > 0 && (config.SerialProblem(m.Serial) != "" || !slices.ContainsFunc(match.Serials, func(s string) bool {
		return config.SerialProblem(s) == "" && s == m.Serial
	})) {
		return false
	}
	if len(match.Racks) > 0 && (m.Rack == "" || !slices.Contains(match.Racks, m.Rack)) {
		return false
	}
	s := m.Summary
	if match.MinMemory > 0 && s.MemoryBytes < uint64(match.MinMemory) {
		return false
	}
	if match.MaxMemory > 0 && s.MemoryBytes > uint64(match.MaxMemory) {
		return false
	}
	if s.CPUs < match.MinCPUs || s.GPUs < match.MinGPUs {
		return false
	}
	if match.MaxGPUs != nil && s.GPUs > *match.MaxGPUs {
		return false
	}
	if len(match.GPUModels) > 0 && !slices.ContainsFunc(match.GPUModels, func(model string) bool {
		return strings.TrimSpace(model) != "" && s.GPUModel != "" && strings.Contains(strings.ToLower(s.GPUModel), strings.ToLower(model))
	}) {
		return false
	}
	return true
}

// Hostname expands a rule's hostname template for m, the index-th machine
// (from 1) the rule matched: {rack}, {index} and {serial} become DNS-safe
// text.
func Hostname(template string, m inventory.Machine, index int) string {
	label := func(s, fallback string) string {
		if s = inventory.DNSLabel(s); s == "" {
			return fallback
		}
		return s
	}
	h := strings.NewReplacer(
		"{rack}", label(m.Rack, "norack"),
		"{index}", fmt.Sprint(index),
		"{serial}", label(m.Serial, strings.TrimPrefix(m.ID, "m-")),
	).Replace(template)
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-")
	}
	return h
}
