package httpboot

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"text/template"
)

// The scripts. The local boot exits with an error on UEFI: the firmware
// then tries the next BootOrder entry (the installed disk's, which the
// agent put behind the network entries), where a success would send it to
// its boot manager menu. On BIOS iPXE boots the first disk itself.
// Every value put into them is checked first (paths and
// kernel arguments may not carry newlines or iPXE's ${} expansions from
// outside).
var scripts = template.Must(template.New("").Parse(`
{{- define "boot" -}}
#!ipxe
# airlock: {{.State}} for {{.MAC}}
echo airlock: {{.State}} {{.MAC}}
kernel {{.Base}}/files/{{.Kernel}} initrd={{.InitrdName}} airlock.url={{.Base}} airlock.mac={{.MAC}} airlock.state={{.State}}{{if .Cmdline}} {{.Cmdline}}{{end}} || goto failed
{{- range .Initrds}}
initrd {{$.Base}}/files/{{.}} || goto failed
{{- end}}
boot || goto failed
:failed
echo airlock: boot failed, retrying in 10 seconds
sleep 10
chain --replace {{.Base}}/ipxe/boot.ipxe?mac={{.MAC}}
{{end -}}
{{- define "local" -}}
#!ipxe
# airlock: local boot for {{.MAC}}
echo airlock: booting {{.MAC}} from its local disk
iseq ${platform} efi && exit 1 ||
sanboot --no-describe --drive 0x80 || exit 0
{{end -}}
{{- define "retry" -}}
#!ipxe
# airlock: no boot decision for {{.MAC}} yet: {{.Err}}
echo airlock: waiting for the installer, retrying in 10 seconds
sleep 10
chain --replace {{.Base}}/ipxe/boot.ipxe?mac={{.MAC}}
{{end -}}
{{- define "self" -}}
#!ipxe
chain --replace {{.Base}}/ipxe/boot.ipxe?mac=${net0/mac}
{{end -}}
`))

type scriptData struct {
	Base, MAC, Kernel, InitrdName, Cmdline, Err string
	State                                       State
	Initrds                                     []string
}

// safe reports whether s may go into a script: no line breaks, no iPXE
// setting expansion, no control characters.
func safe(s string) bool {
	if strings.Contains(s, "${") {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func safePath(p string) bool {
	return p != "" && safe(p) && !strings.ContainsAny(p, " \\") && !strings.HasPrefix(p, "/") && !strings.Contains(p, "..")
}

func renderScript(w io.Writer, base string, mac net.HardwareAddr, spec BootSpec) error {
	d := scriptData{Base: base, MAC: mac.String(), State: spec.State, Kernel: spec.Kernel, Initrds: spec.Initrds, Cmdline: spec.Cmdline}
	switch spec.State {
	case StateLocal:
		return scripts.ExecuteTemplate(w, "local", d)
	case StateDiscover, StateInstall:
	default:
		return renderRetry(w, base, mac, fmt.Errorf("unknown state %q", spec.State))
	}
	if !safePath(spec.Kernel) || len(spec.Initrds) == 0 || !safe(spec.Cmdline) {
		return renderRetry(w, base, mac, fmt.Errorf("invalid boot spec for state %s", spec.State))
	}
	for _, p := range spec.Initrds {
		if !safePath(p) {
			return renderRetry(w, base, mac, fmt.Errorf("invalid initrd path"))
		}
	}
	// The kernel argument initrd= names the first initrd by its file name
	// (needed by EFI stub kernels booted from iPXE).
	d.InitrdName = spec.Initrds[0][strings.LastIndex(spec.Initrds[0], "/")+1:]
	return scripts.ExecuteTemplate(w, "boot", d)
}

func renderRetry(w io.Writer, base string, mac net.HardwareAddr, err error) error {
	msg := strings.Map(func(r rune) rune {
		if r < 0x20 || r == '$' {
			return ' '
		}
		return r
	}, err.Error())
	return scripts.ExecuteTemplate(w, "retry", scriptData{Base: base, MAC: mac.String(), Err: msg})
}

func renderChainSelf(w io.Writer, base string) error {
	return scripts.ExecuteTemplate(w, "self", scriptData{Base: base})
}

// MemBackend is the in-memory Backend: a BootSpec per MAC and a default for
// unknown machines (normally discover).
type MemBackend struct {
	mu       sync.Mutex
	Default  BootSpec
	machines map[string]BootSpec
}

// NewMemBackend returns a backend that boots unknown machines with def.
func NewMemBackend(def BootSpec) *MemBackend {
	return &MemBackend{Default: def, machines: map[string]BootSpec{}}
}

// Set records the spec for mac.
func (b *MemBackend) Set(mac net.HardwareAddr, spec BootSpec) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.machines[mac.String()] = spec
}

// BootSpec implements Backend.
func (b *MemBackend) BootSpec(_ context.Context, mac net.HardwareAddr) (BootSpec, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s, ok := b.machines[mac.String()]; ok {
		return s, nil
	}
	return b.Default, nil
}
