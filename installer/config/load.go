package config

import (
	"fmt"
	"net/netip"
	"os"
	"time"
)

// Defaults returns the answers airlock assumes for every field an answer
// file leaves out.
func Defaults() Answers {
	return Answers{
		APIVersion: APIVersion,
		Kind:       Kind,
		Network: Network{
			Mode:      ModeAuto,
			LeaseTime: Duration(time.Hour),
		},
		Admission: Admission{Policy: AdmitAllowlist},
		Cluster: Cluster{
			Name:         "airlock",
			Distribution: Distribution{Name: "kubeadm", Version: "v1.34.2"},
			PodCIDR:      netip.MustParsePrefix("10.244.0.0/16"),
			ServiceCIDR:  netip.MustParsePrefix("10.96.0.0/12"),
		},
		Platform: Platform{GPU: GPU{Sharing: GPUShareNone}},
	}
}

// Source remembers where an answer file came from, so that problems found
// later point at its lines.
type Source struct {
	File      string
	Positions Positions
	Failed    map[string]bool // paths whose values did not decode
}

// Parse decodes an answer file strictly over the defaults. It returns the
// answers (as far as they could be decoded) and every decoding problem;
// callers run Validate next for the semantic checks.
func Parse(file string, data []byte) (*Answers, *Source, Problems) {
	a := Defaults()
	pos, problems := Decode(file, data, &a)
	src := &Source{File: file, Positions: pos, Failed: map[string]bool{}}
	for _, p := range problems {
		src.Failed[p.Path] = true
	}
	a.fillDerived()
	return &a, src, problems
}

// Load reads, decodes and validates an answer file. The returned problems
// hold errors and warnings, sorted by position; the answers are usable only
// when problems.Err() is nil.
func Load(path string) (*Answers, Problems, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read answer file: %w", err)
	}
	a, src, problems := Parse(path, data)
	// Semantic checks run even after decoding errors, so that one run
	// reports everything; each check skips values that failed to decode.
	if _, parsed := src.Positions[""]; parsed {
		problems = append(problems, a.Validate(src)...)
	}
	problems.Sort()
	return a, problems, nil
}

// fillDerived sets defaults that depend on other fields.
func (a *Answers) fillDerived() {
	n := &a.Network
	if !n.Address.IsValid() && n.Subnet.IsValid() && n.Subnet.Addr().Is4() && n.Subnet.Bits() <= 30 {
		n.Address = n.Subnet.Masked().Addr().Next()
	}
	if a.Admission.Policy == "" {
		a.Admission.Policy = AdmitAllowlist
	}
	for i := range a.Machines {
		if a.Machines[i].InstallDisk.Policy == "" {
			a.Machines[i].InstallDisk.Policy = DiskSmallest
		}
	}
}
