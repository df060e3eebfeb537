package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"syscall"
	"time"

	"airlock.dev/airlock/manifests"
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
			Distribution: Distribution{Name: "kubeadm", Version: manifests.DefaultKubernetesVersion},
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
	// failedTree holds every path at or above a failed one, so that
	// "did anything under this path fail" is one lookup.
	failedTree map[string]bool
}

// Parse decodes an answer file strictly over the defaults. It returns the
// answers (as far as they could be decoded) and every decoding problem;
// callers run Validate next for the semantic checks.
func Parse(file string, data []byte) (*Answers, *Source, Problems) {
	a := Defaults()
	d := decodeDocument(file, data, &a)
	src := &Source{File: file, Positions: d.pos, Failed: d.failed}
	a.fillDerived()
	return &a, src, d.result()
}

// ErrNotRegular is returned for an answer file that is not a regular file
// (a FIFO, a device such as /dev/zero, a directory).
var ErrNotRegular = errors.New("not a regular file")

// ReadFile reads an answer file, refusing before reading anything a path
// that is not a regular file or is larger than MaxFileBytes. The file is
// opened without blocking, so a FIFO with no writer is refused at once
// instead of hanging.
func ReadFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("read answer file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("answer file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("answer file %s: %w (it is %s)", path, ErrNotRegular, describeMode(fi.Mode()))
	}
	if fi.Size() > MaxFileBytes {
		return nil, fmt.Errorf("answer file %s is %d bytes, more than the %d allowed: an answer file is written by hand", path, fi.Size(), MaxFileBytes)
	}
	// The file may grow between Stat and reading: read one byte more
	// than allowed to notice.
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read answer file %s: %w", path, err)
	}
	if len(data) > MaxFileBytes {
		return nil, fmt.Errorf("answer file %s is more than the %d bytes allowed: an answer file is written by hand", path, MaxFileBytes)
	}
	return data, nil
}

func describeMode(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	}
	return "not a regular file"
}

// Load reads, decodes and validates an answer file. The returned problems
// hold errors and warnings, sorted by position, at most MaxReported of
// them and one more counting the rest; the answers are usable only when
// problems.Err() is nil.
func Load(path string) (*Answers, Problems, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	a, src, problems := Parse(path, data)
	// Semantic checks run even after decoding errors, so that one run
	// reports everything; each check skips values that failed to decode.
	if _, parsed := src.Positions[""]; parsed {
		problems = append(problems, a.Validate(src)...)
	}
	return a, problems.Limit(MaxReported), nil
}

// fillDerived sets defaults that depend on other fields.
func (a *Answers) fillDerived() {
	n := &a.Network
	if n.Mode == "" { // mode: "" or mode: ~ means the default, as leaving it out does
		n.Mode = ModeAuto
	}
	if !n.Address.IsValid() && n.Subnet.IsValid() && n.Subnet.Addr().Is4() && n.Subnet.Bits() <= 30 {
		n.Address = n.Subnet.Masked().Addr().Next()
	}
	if a.Admission.Policy == "" {
		a.Admission.Policy = AdmitAllowlist
	}
	// A field written empty or null ("version: ~") means its default, as
	// leaving it out does, rather than an empty value that install would
	// only refuse later.
	def := Defaults()
	c := &a.Cluster
	if c.Distribution.Name == "" {
		c.Distribution.Name = def.Cluster.Distribution.Name
	}
	if c.Distribution.Version == "" {
		c.Distribution.Version = def.Cluster.Distribution.Version
	}
	if !c.PodCIDR.IsValid() {
		c.PodCIDR = def.Cluster.PodCIDR
	}
	if !c.ServiceCIDR.IsValid() {
		c.ServiceCIDR = def.Cluster.ServiceCIDR
	}
	if a.Platform.GPU.Sharing == "" {
		a.Platform.GPU.Sharing = GPUShareNone
	}
	for i := range a.Machines {
		if a.Machines[i].InstallDisk.Policy == "" {
			a.Machines[i].InstallDisk.Policy = DiskSmallest
		}
	}
}
