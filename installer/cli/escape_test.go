package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/installer/termtext"
	"airlock.dev/airlock/services/agentapi"
)

// Hostile strings, as an answer file, a bundle's metadata or an agent's
// report could carry them.
const (
	oscTitle = "\x1b]0;pwned\x07"                                      // set the window title
	csiClear = "\x1b[2J"                                               // clear the screen
	osc8     = "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\" // a hyperlink
	rlo      = "admin\u202etxt.exe"                                    // right-to-left override
	c1CSI    = "\u009b31m"                                             // CSI as one C1 rune
	nulByte  = "nul\x00byte"
	overtype = "ok\rFAKE"
	delChar  = "del\x7fete"
	isolate  = "\u2066iso\u2069zero\u200bwidth"
)

var hostileValues = []string{oscTitle, csiClear, osc8, rlo, c1CSI, nulByte, overtype, delChar, isolate}

// assertEscaped fails when out holds a rune that must not reach a terminal
// raw (newlines and tabs are layout and allowed).
func assertEscaped(t *testing.T, what, out string) {
	t.Helper()
	if i := termtext.FindUnsafe(out); i >= 0 {
		t.Errorf("%s: raw %q at byte %d of:\n%s", what, out[i:min(len(out), i+8)], i, termtext.EscapeLines(out))
	}
}

// hostileAnswers has hostile text in a key, in values that validation
// refuses (quoting them) and in values it accepts (a rack's ToR name, a
// rule name, serials), so plan prints them.
const hostileAnswers = `apiVersion: airlock.dev/v1alpha1
kind: Install
site:
  name: "lab\e]0;pwned\a"
network:
  interface: eth1
  mode: full
  subnet: 10.40.0.0/24
  dynamicRange: {start: 10.40.0.100, end: 10.40.0.200}
racks:
  - name: "rack\e[31m-a"
    tor: "tor\e]8;;http://evil.example/\e\\click\e]8;;\e\\"
machines:
  - name: "cp\u202Eevil"
    match:
      serials: ["LAB\x00-0001", "LAB-\r0002", "LAB-0003\u200b"]
    role: control-plane
    hostname: cp-{index}
  - name: workers
    role: worker
    hostname: worker-{index}
    "\e[2Jcolour": "\e]0;title\a"
admission:
  policy: approve
cluster:
  name: lab
  controlPlaneEndpoint: 10.40.0.5:6443
`

// validHostileAnswers is hostileAnswers with the refused values fixed.
var validHostileAnswers = strings.NewReplacer(
	`name: "lab\e]0;pwned\a"`, "name: lab",
	`name: "rack\e[31m-a"`, "name: rack-a",
	`    "\e[2Jcolour": "\e]0;title\a"`+"\n", "",
	// Serials with control or invisible characters are refused since
	// validation checks identities (issue 13, class 1).
	`serials: ["LAB\x00-0001", "LAB-\r0002", "LAB-0003\u200b"]`, `serials: ["LAB-0001", "LAB-0002", "LAB-0003"]`,
).Replace(hostileAnswers)

func TestValidateEscapesHostileInput(t *testing.T) {
	// The file's own name is hostile too: it is printed on every line.
	file := writeFile(t, "answers"+oscTitle+".yaml", hostileAnswers)
	out, errOut, code := run(t, "validate", "-f", file)
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s%s", code, out, errOut)
	}
	assertEscaped(t, "validate", out+errOut)
	for _, want := range []string{
		`answers\x1b]0;pwned\a.yaml:4:9: site.name: "lab\x1b]0;pwned\a" is not a DNS label`,
		`machines[1].\x1b[2Jcolour: unknown field`,
		`answers\x1b]0;pwned\a.yaml: invalid (`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("validate output lacks %q:\n%s", want, out)
		}
	}
	// JSON and YAML keep the values (escaped inside their strings).
	jsonOut, _, _ := run(t, "validate", "-f", file, "-o", "json")
	assertEscaped(t, "validate -o json", jsonOut)
	var v validation
	if err := json.Unmarshal([]byte(jsonOut), &v); err != nil {
		t.Fatalf("validate -o json: %v\n%s", err, jsonOut)
	}
	yamlOut, _, _ := run(t, "validate", "-f", file, "-o", "yaml")
	assertEscaped(t, "validate -o yaml", yamlOut)
	var y validation
	if err := yaml.Unmarshal([]byte(yamlOut), &y); err != nil {
		t.Fatalf("validate -o yaml: %v\n%s", err, yamlOut)
	}
	for name, got := range map[string]validation{"json": v, "yaml": y} {
		if got.File != file || !hasPath(got.Errors, "machines[1].\x1b[2Jcolour") {
			t.Errorf("-o %s lost the hostile values: file %q, errors %+v", name, got.File, got.Errors)
		}
	}

	// Raw control bytes in the file itself: a YAML syntax error that
	// points at them, escaped.
	raw := writeFile(t, "raw.yaml", "apiVersion: airlock.dev/v1alpha1\nkind: Install\nsite:\n  name: a\x1b[2Jb\x00\x9b\r\n  "+rlo+": x\n")
	out, errOut, code = run(t, "validate", "-f", raw)
	if code != 1 || out == "" {
		t.Fatalf("raw control bytes: exit %d:\n%s%s", code, out, errOut)
	}
	assertEscaped(t, "validate of raw control bytes", out+errOut)

	// The error main prints (a file that is not there) is escaped too.
	_, errOut, code = run(t, "validate", "-f", filepath.Join(t.TempDir(), "missing"+csiClear+rlo+".yaml"))
	if code != 1 || !strings.Contains(errOut, `read answer file`) || !strings.Contains(errOut, `missing\x1b[2Jadmin\u202etxt.exe.yaml`) {
		t.Errorf("missing hostile file: exit %d, %q", code, errOut)
	}
	assertEscaped(t, "error message", errOut)
	_, errOut, _ = run(t, oscTitle+overtype)
	if !strings.Contains(errOut, "unknown command") {
		t.Errorf("hostile command name: %q", errOut)
	}
	assertEscaped(t, "unknown command", errOut)
}

func hasPath(ps config.Problems, path string) bool {
	for _, p := range ps {
		if p.Path == path {
			return true
		}
	}
	return false
}

func TestPlanEscapesHostileInput(t *testing.T) {
	file := writeFile(t, "answers.yaml", validHostileAnswers)
	stateDir := t.TempDir()
	registerHostileMachine(t, stateDir)
	out, errOut, code := run(t, "plan", "-f", file, "--state", stateDir)
	if code != 0 {
		t.Fatalf("plan: exit %d:\n%s%s", code, out, errOut)
	}
	assertEscaped(t, "plan", out+errOut)
	for _, want := range []string{`cp\u202eevil`, `ToR tor\x1b]8;;http://evil.example/\x1b\click`} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
	for _, format := range []string{"json", "yaml"} {
		out, _, code := run(t, "plan", "-f", file, "--state", stateDir, "-o", format)
		assertEscaped(t, "plan -o "+format, out)
		var p struct {
			Racks []struct{ ToR string }
			Rules []struct{ Name string }
		}
		if err := yaml.Unmarshal([]byte(out), &p); err != nil || code != 0 {
			t.Fatalf("plan -o %s: exit %d, %v\n%s", format, code, err, out)
		}
		if len(p.Rules) == 0 || p.Rules[0].Name != "cp\u202eevil" || len(p.Racks) == 0 || !strings.HasPrefix(p.Racks[0].ToR, "tor\x1b]8;;") {
			t.Errorf("plan -o %s lost the values: %+v", format, p)
		}
	}
}

// registerHostileMachine records, in a real bbolt store in stateDir, a
// machine whose agent reports hostile text in every field airlock shows.
func registerHostileMachine(t *testing.T, stateDir string) {
	t.Helper()
	s, err := state.Open(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	inv := inventory.New(s, nil, slog.New(slog.DiscardHandler))
	raw, err := os.ReadFile("../../services/agentapi/testdata/registration.json")
	if err != nil {
		t.Fatal(err)
	}
	var reg agentapi.Registration
	if err := json.Unmarshal(raw, &reg); err != nil {
		t.Fatal(err)
	}
	sys := &reg.Inventory.System
	sys.Serial = "SN" + oscTitle + rlo
	sys.Product = csiClear + "server"
	sys.ChassisLocation = overtype
	sys.Firmware = "bios" + c1CSI
	lldp := reg.Inventory.NICs[0].LLDP
	lldp.SystemName = "tor" + osc8
	// A newline and a tab must not forge a row or a column either.
	lldp.PortID = "Eth1/7\nrack-z\tm-forged\tready" + delChar
	lldp.PortDescription = nulByte
	for i := range reg.Inventory.PCI {
		if reg.Inventory.PCI[i].Name != "" {
			reg.Inventory.PCI[i].Name = "NVIDIA " + isolate + rlo
		}
	}
	tok, err := inv.IssueBoot(reg.BootMAC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Register(context.Background(), tok.BootID, agentapi.Identity(&reg), &reg); err != nil {
		t.Fatal(err)
	}
	ms, err := inv.List()
	if err != nil || len(ms) != 1 || ms[0].Switch != "tor"+osc8 || !strings.Contains(ms[0].Summary.GPUModel, rlo) {
		t.Fatalf("the store did not keep the hostile report: %v %+v", err, ms)
	}
}

func TestInventoryEscapesAgentReports(t *testing.T) {
	stateDir := t.TempDir()
	registerHostileMachine(t, stateDir)
	out, errOut, code := run(t, "inventory", "--state", stateDir)
	if code != 0 {
		t.Fatalf("inventory: exit %d:\n%s%s", code, out, errOut)
	}
	assertEscaped(t, "inventory", out+errOut)
	if lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n"); len(lines) != 2 {
		t.Errorf("one machine printed as %d lines (a forged row?):\n%s", len(lines), out)
	}
	for _, want := range []string{`tor\x1b]8;;http://evil.example/\x1b\click`, `Eth1/7\nrack-z\tm-forged\tready`, `NVIDIA \u2066iso\u2069zero\u200bwidthadmin\u202etxt.exe`} {
		if !strings.Contains(out, want) {
			t.Errorf("inventory lacks %q:\n%s", want, out)
		}
	}
	for _, format := range []string{"json", "yaml"} {
		out, _, code := run(t, "inventory", "--state", stateDir, "-o", format)
		assertEscaped(t, "inventory -o "+format, out)
		var ms []inventory.Machine
		var err error
		if format == "json" {
			err = json.Unmarshal([]byte(out), &ms)
		} else {
			var generic any
			if err = yaml.Unmarshal([]byte(out), &generic); err == nil {
				raw, _ := json.Marshal(generic)
				err = json.Unmarshal(raw, &ms)
			}
		}
		if err != nil || code != 0 || len(ms) != 1 {
			t.Fatalf("inventory -o %s: exit %d, %v\n%s", format, code, err, out)
		}
		m := ms[0]
		if m.Switch != "tor"+osc8 || m.SwitchPort != "Eth1/7\nrack-z\tm-forged\tready"+delChar || m.Hardware.System.Product != csiClear+"server" {
			t.Errorf("inventory -o %s changed the values: switch %q port %q product %q", format, m.Switch, m.SwitchPort, m.Hardware.System.Product)
		}
	}
}

// writeHostileBundle writes, with the project's writer, a bundle whose
// signed metadata names everything with hostile text.
func writeHostileBundle(t *testing.T, path string) ed25519.PublicKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	w, err := bundle.Create(path, bundle.WriterOptions{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.AddBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`), ""); err != nil {
		t.Fatal(err)
	}
	fileDigest, err := w.AddBytes("files/vmlinuz", []byte("a kernel"), "")
	if err != nil {
		t.Fatal(err)
	}
	meta := bundle.Metadata{
		Name:       "site" + oscTitle,
		Components: []string{"cni" + csiClear, rlo},
		Charts:     []bundle.Chart{{Name: "chart" + osc8, Version: "1.0" + c1CSI, Images: []string{"img" + nulByte, "img" + overtype}}},
		Files:      []bundle.File{{Name: "vmlinuz" + delChar + isolate, Path: "files/vmlinuz", Size: 8, Digest: fileDigest}},
	}
	if _, err := w.Finish(meta, priv); err != nil {
		t.Fatal(err)
	}
	return pub
}

func TestBundleInspectEscapesMetadata(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "site"+csiClear+".bundle")
	pub := writeHostileBundle(t, path)
	keyPath := filepath.Join(dir, "site.pub")
	if err := os.WriteFile(keyPath, bundle.EncodePublicKey(pub), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := run(t, "bundle", "inspect", "--key", keyPath, path)
	if code != 0 {
		t.Fatalf("inspect: exit %d:\n%s%s", code, out, errOut)
	}
	assertEscaped(t, "bundle inspect", out+errOut)
	for _, want := range []string{`site\x1b]0;pwned\a`, `site\x1b[2J.bundle`, `chart\x1b]8;;http://evil.example/\x1b\click`, `imgnul\x00byte`, `imgok\rFAKE`, `vmlinuzdel\x7fete\u2066iso\u2069zero\u200bwidth`, `cni\x1b[2J, admin\u202etxt.exe`} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect lacks %q:\n%s", want, out)
		}
	}
	for _, format := range []string{"json", "yaml"} {
		out, _, code := run(t, "bundle", "inspect", "--key", keyPath, path, "-o", format)
		assertEscaped(t, "bundle inspect -o "+format, out)
		var in struct {
			Name   string
			Charts []struct{ Name string }
			Files  []struct{ Name string }
		}
		if err := yaml.Unmarshal([]byte(out), &in); err != nil || code != 0 {
			t.Fatalf("inspect -o %s: exit %d, %v\n%s", format, code, err, out)
		}
		if in.Name != "site"+oscTitle || len(in.Charts) != 1 || in.Charts[0].Name != "chart"+osc8 || len(in.Files) != 1 || in.Files[0].Name != "vmlinuz"+delChar+isolate {
			t.Errorf("inspect -o %s changed the values: %+v", format, in)
		}
	}
	out, errOut, code = run(t, "bundle", "verify", "--key", keyPath, path)
	if code != 0 || !strings.Contains(out, `site\x1b[2J.bundle: OK`) {
		t.Errorf("verify: exit %d:\n%s%s", code, out, errOut)
	}
	assertEscaped(t, "bundle verify", out+errOut)
	// Errors name the file: escaped by the CLI.
	notBundle := filepath.Join(dir, "evil"+oscTitle+rlo)
	if err := os.WriteFile(notBundle, bytes.Repeat([]byte("x"), 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = run(t, "bundle", "inspect", notBundle)
	if code != 1 || !strings.Contains(errOut, `evil\x1b]0;pwned\aadmin\u202etxt.exe`) {
		t.Errorf("inspect of a hostile non-bundle: exit %d, %q", code, errOut)
	}
	assertEscaped(t, "bundle inspect error", errOut)
}

func TestLogsEscapeHostileText(t *testing.T) {
	logAll := func(log *slog.Logger) {
		for _, h := range hostileValues {
			log.Info(h, "value", h, h, 1, "err", errors.New(h), slog.Group("g"+h, "v", h))
		}
	}
	// slog's text handler alone writes DEL raw: the case the wrapper is for.
	var plain bytes.Buffer
	logAll(slog.New(slog.NewTextHandler(&plain, nil)))
	if termtext.FindUnsafe(plain.String()) < 0 {
		t.Fatal("slog's text handler escaped everything by itself: this test shows nothing")
	}
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		log, err := newLogger(&buf, format, "debug")
		if err != nil {
			t.Fatal(err)
		}
		logAll(log)
		out := buf.String()
		assertEscaped(t, format+" logs", out)
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(lines) != len(hostileValues) {
			t.Fatalf("%s logs: %d lines for %d records:\n%s", format, len(lines), len(hostileValues), out)
		}
		if format != "json" {
			continue
		}
		for i, line := range lines {
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil || rec["msg"] != hostileValues[i] || rec["value"] != hostileValues[i] {
				t.Errorf("JSON log line %d does not keep the values: %v %v", i, err, rec)
			}
		}
	}
}
