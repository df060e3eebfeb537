package config

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite golden files")

// report renders problems the way airlock validate prints them.
func report(file string, problems Problems) string {
	var b strings.Builder
	for _, p := range problems {
		fmt.Fprintln(&b, p)
	}
	if problems.Err() == nil {
		b.WriteString("valid\n")
	} else {
		b.WriteString("invalid\n")
	}
	return b.String()
}

func TestProblemsGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/problems/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 25 {
		t.Fatalf("only %d broken answer files; the suite keeps at least 25", len(files))
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			_, problems, err := Load(file)
			if err != nil {
				t.Fatal(err)
			}
			if len(problems) == 0 {
				t.Fatalf("%s reports no problem at all", file)
			}
			got := report(file, problems)
			golden := strings.TrimSuffix(file, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./installer/config -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("problems differ from %s:\ngot:\n%swant:\n%s", golden, got, want)
			}
			for _, p := range problems {
				if p.File != file || p.Line < 1 || p.Col < 1 {
					t.Errorf("problem without a position: %+v", p)
				}
			}
		})
	}
}

// The issue's own acceptance case: an unknown field, a type error and a
// range outside its subnet are all reported in one run, with positions.
func TestAllThreeReportedAtOnce(t *testing.T) {
	_, problems, err := Load("testdata/problems/49-all-three-done-when.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"testdata/problems/49-all-three-done-when.yaml:5:3: site.colour: unknown field",
		"testdata/problems/49-all-three-done-when.yaml:7:14: network.leaseTime: expected a duration like 1h, got a list",
		"testdata/problems/49-all-three-done-when.yaml:12:12: network.dynamicRange.start: 10.40.1.100 is outside the subnet 10.40.0.0/24",
	}
	errs := problems.Errors()
	if len(errs) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%s", len(errs), len(want), errs)
	}
	for i := range want {
		if errs[i].String() != want[i] {
			t.Errorf("error %d = %q, want %q", i, errs[i], want[i])
		}
	}
}

func TestExamplesAreValid(t *testing.T) {
	files, _ := filepath.Glob("examples/*.yaml")
	if len(files) < 2 {
		t.Fatalf("expected example files in examples/, found %v", files)
	}
	for _, file := range files {
		_, problems, err := Load(file)
		if err != nil {
			t.Fatal(err)
		}
		if len(problems) > 0 {
			t.Errorf("%s has problems:\n%s", file, problems)
		}
	}
}

func TestExampleFromInitAlwaysValidates(t *testing.T) {
	for _, o := range []InitOptions{
		{},
		{Interface: "eno1", Mode: ModeFull},
		{Interface: "eth0.100", Mode: ModeProxy, Subnet: netip.MustParsePrefix("192.168.77.0/24")},
		{Interface: "br-prov", Mode: ModeAuto, Subnet: netip.MustParsePrefix("172.16.0.0/12")},
		{Mode: ModeFull, Subnet: netip.MustParsePrefix("10.9.8.0/29")},
		{Mode: ModeFull, Subnet: netip.MustParsePrefix("10.9.8.77/26"), Site: "rehearsal"},
		{Interface: "eno1", BundleKey: "/media/usb/hall b.pub"},
	} {
		out, err := Example(o)
		if err != nil {
			t.Fatalf("Example(%+v): %v", o, err)
		}
		a, src, problems := Parse("init.yaml", out)
		problems = append(problems, a.Validate(src)...)
		if err := problems.Err(); err != nil {
			t.Errorf("airlock init %+v does not validate:\n%v\n%s", o, err, out)
		}
		wantWarnings := 0
		if o.Interface == "" {
			wantWarnings++ // the interface is left for the engineer to name
		}
		if o.BundleKey == "" {
			wantWarnings++ // so is the bundle's key, never silently
			if !slices.ContainsFunc(problems.Warnings(), func(p Problem) bool { return p.Path == "bundle.publicKey" }) {
				t.Errorf("airlock init %+v: no warning that bundle.publicKey is not set", o)
			}
		} else if a.Bundle.PublicKey != o.BundleKey {
			t.Errorf("bundle.publicKey = %q, want %q", a.Bundle.PublicKey, o.BundleKey)
		}
		if n := len(problems.Warnings()); n != wantWarnings {
			t.Errorf("airlock init %+v: %d warnings, want %d:\n%s", o, n, wantWarnings, problems.Warnings())
		}
		if o.Interface != "" && a.Network.Interface != o.Interface {
			t.Errorf("interface = %q, want %q", a.Network.Interface, o.Interface)
		}
		validateAgainstSchema(t, "init output", out)
	}
	for _, bad := range []InitOptions{
		{Mode: "dhcp"},
		{Interface: "eth0; rm -rf /"},
		{Subnet: netip.MustParsePrefix("10.0.0.0/30")},
		{Subnet: netip.MustParsePrefix("fd00::/64")},
		{Site: "Hall B"},
		{BundleKey: "a\"b.pub"},
		{BundleKey: "a\nb.pub"},
	} {
		if _, err := Example(bad); err == nil {
			t.Errorf("Example(%+v) accepted bad options", bad)
		}
	}
}

func compiledSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	raw, err := Schema()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(SchemaID, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(SchemaID)
	if err != nil {
		t.Fatalf("the generated schema does not compile: %v", err)
	}
	return s
}

// yamlToJSONValue turns YAML into the generic values a JSON Schema
// validator expects.
func yamlToJSONValue(t *testing.T, data []byte) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func validateAgainstSchema(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := compiledSchema(t).Validate(yamlToJSONValue(t, data)); err != nil {
		t.Errorf("%s does not validate against airlock schema: %v", name, err)
	}
}

// Every example answer file in the repository validates against the
// schema that airlock schema prints, so editors complete them cleanly.
func TestSchemaValidatesEveryExample(t *testing.T) {
	var files []string
	err := filepath.WalkDir("../..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || d.Name() == ".git" || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if strings.HasSuffix(path, ".yaml") {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if bytes.Contains(data, []byte("kind: Install")) {
				files = append(files, path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("found only %v", files)
	}
	for _, f := range files {
		data, _ := os.ReadFile(f)
		validateAgainstSchema(t, f, data)
	}
	// And the schema is not vacuous: it rejects an unknown field and a bad enum.
	s := compiledSchema(t)
	for _, bad := range []string{
		"apiVersion: airlock.dev/v1alpha1\nkind: Install\nsite: {name: x, colour: red}\nnetwork: {subnet: 10.0.0.0/24}\ncluster: {name: x}\n",
		"apiVersion: airlock.dev/v1alpha1\nkind: Install\nsite: {name: x}\nnetwork: {subnet: 10.0.0.0/24, mode: fulll}\ncluster: {name: x}\n",
		"apiVersion: airlock.dev/v1alpha1\nkind: Install\nsite: {name: x}\nnetwork: {}\ncluster: {name: x}\n",
	} {
		if err := s.Validate(yamlToJSONValue(t, []byte(bad))); err == nil {
			t.Errorf("schema accepted:\n%s", bad)
		}
	}
}

func TestQuantityRoundTrip(t *testing.T) {
	for in, want := range map[string]uint64{"64Gi": 64 << 30, "500G": 500e9, "1024": 1024, "1Ki": 1024, "3T": 3e12} {
		q, err := ParseQuantity(in)
		if err != nil || uint64(q) != want {
			t.Errorf("ParseQuantity(%q) = %d, %v; want %d", in, q, err, want)
		}
		back, _ := ParseQuantity(q.String())
		if back != q {
			t.Errorf("%q -> %s does not round-trip", in, q)
		}
	}
	for _, bad := range []string{"", "Gi", "-1G", "1.5Gi", "64 GB", "99999999999999999999Pi"} {
		if _, err := ParseQuantity(bad); err == nil {
			t.Errorf("ParseQuantity(%q) accepted", bad)
		}
	}
}

// FuzzParse feeds arbitrary bytes to the answer-file loader: it must never
// panic, and every problem must point inside the file.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/problems/*.yaml")
	examples, _ := filepath.Glob("examples/*.yaml")
	for _, file := range append(seeds, examples...) {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("a: &a [*a, *a]\nb: *a\n"))
	f.Add([]byte("apiVersion: !!binary aGVsbG8=\n"))
	f.Add([]byte("network: {subnet: ::/0, dynamicRange: {start: 0.0.0.0, end: 255.255.255.255}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, src, problems := Parse("fuzz.yaml", data)
		if _, parsed := src.Positions[""]; parsed {
			problems = append(problems, a.Validate(src)...)
		}
		// Lines as YAML counts them: CR LF, CR, LF, NEL, LS and PS each
		// end one.
		lines := 1
		for _, r := range strings.ReplaceAll(string(data), "\r\n", "\n") {
			switch r {
			case '\n', '\r', '\u0085', '\u2028', '\u2029':
				lines++
			}
		}
		for _, p := range problems {
			if p.Line < 1 || p.Line > lines || p.Col < 1 {
				t.Fatalf("problem outside the file (%d lines): %+v", lines, p)
			}
		}
		// What Load reports is bounded, and keeps every error an error.
		limited := problems.Limit(MaxReported)
		if len(limited) > MaxReported+1 || (problems.Err() == nil) != (limited.Err() == nil) {
			t.Fatalf("Limit: %d problems kept of %d; errors before %v, after %v", len(limited), len(problems), problems.Err() != nil, limited.Err() != nil)
		}
	})
}
