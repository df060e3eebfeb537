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
	Denied          = "denied"
)

// Assignment is what one machine becomes.
type Assignment struct {
	MachineID string `json:"machineID"`
	Serial    string `json:"serial,omitempty"`
	Rack      string `json:"rack,omitempty"`
	Rule      string `json:"rule,omitempty"`
	Role      string `json:"role,omitempty"`
	Hostname  string `json:"hostname,omitempty"`
	// Index is the machine's {index} among its rule's machines.
	Index     int    `json:"index,omitempty"`
	Address   string `json:"address,omitempty"`
	Admission string `json:"admission"`
	Reason    string `json:"reason,omitempty"`
}

// Assign works out every machine's assignment, in inventory order. A
// machine whose assignment is recorded (inventory.Store.Assign) keeps it:
// its hostname and its {index} stay taken, and machines that come later get
// the lowest index their rule has free.
func Assign(a *config.Answers, machines []inventory.Machine) []Assignment {
	ordered := slices.Clone(machines)
	slices.SortStableFunc(ordered, func(x, y inventory.Machine) int {
		return cmp.Or(strings.Compare(x.Rack, y.Rack), x.FirstSeen.Compare(y.FirstSeen), strings.Compare(x.ID, y.ID))
	})
	used := map[string]map[int]bool{} // rule -> indexes taken
	take := func(rule string, index int) {
		if used[rule] == nil {
			used[rule] = map[int]bool{}
		}
		used[rule][index] = true
	}
	seen := map[string]string{} // hostname -> machine
	byID := map[string]Assignment{}
	for _, m := range ordered {
		if r := m.Assignment; r != nil {
			byID[m.ID] = Assignment{MachineID: m.ID, Serial: m.Serial, Rack: m.Rack, Rule: r.Rule, Role: r.Role,
				Hostname: r.Hostname, Index: r.Index, Address: r.Address, Admission: Admitted, Reason: "recorded at admission"}
			take(r.Rule, r.Index)
			seen[r.Hostname] = m.ID
		}
	}
	for _, m := range ordered {
		if _, recorded := byID[m.ID]; recorded {
			continue
		}
		as := Assignment{MachineID: m.ID, Serial: m.Serial, Rack: m.Rack}
		ri := slices.IndexFunc(a.Machines, func(r config.Rule) bool { return Matches(r.Match, m) })
		if ri < 0 {
			as.Admission, as.Reason = NoRule, "no rule matches this machine"
			byID[m.ID] = as
			continue
		}
		r := a.Machines[ri]
		index := 1
		for used[r.Name][index] {
			index++
		}
		take(r.Name, index)
		as.Rule, as.Role, as.Index = r.Name, r.Role, index
		as.Hostname = Hostname(r.Hostname, m, index)
		if r.Address.IsValid() {
			as.Address = r.Address.String()
		}
		as.Admission, as.Reason = admission(a, r, m)
		if other, dup := seen[as.Hostname]; dup {
			as.Admission, as.Reason = DuplicateTarget, fmt.Sprintf("hostname %s is already %s's", as.Hostname, other)
		} else {
			seen[as.Hostname] = m.ID
		}
		byID[m.ID] = as
	}
	out := make([]Assignment, 0, len(ordered))
	for _, m := range ordered {
		out = append(out, byID[m.ID])
	}
	return out
}

// admission applies the policy to a machine that rule r matches.
func admission(a *config.Answers, r config.Rule, m inventory.Machine) (string, string) {
	switch m.State {
	case inventory.StateDenied:
		return Denied, "denied by an operator"
	case inventory.StateDiscovered, inventory.StateAwaitingApproval, "":
	default:
		return Admitted, "" // admitted earlier (an operator approved it)
	}
	switch a.Admission.Policy {
	case config.AdmitAny:
		return Admitted, ""
	case config.AdmitApprove:
		return AwaitsApproval, "an operator approves each machine"
	default:
		if r.Match.Identifies() {
			return Admitted, ""
		}
		return NotInAllowlist, fmt.Sprintf("rule %q matches by hardware, and the allowlist admits only machines named by MAC or serial", r.Name)
	}
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
