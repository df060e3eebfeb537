package main

import (
	"fmt"
	"go/parser"
	"go/token"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "airlock.dev/airlock"

// layerRule says which of the module's packages a package may import,
// following DESIGN.md: main -> installer/cli (the only composition root);
// services know nothing of the engine; bundle, manifests and the config
// schema are leaves; the TUI sees the engine only through config and events; the node
// agent stays small; the Kubernetes driver (installer/kube) renders from
// plain values and knows only the state store, the seed, the config and
// the manifests' data (image tables);
// the virtual rack (installer/lab) knows nothing of the engine (its
// switches speak through services/*); no product package
// imports e2e/ or the test kit. installer/termtext (escaping for the
// terminal) is a leaf every package may import.
func layerRule(pkg, imp string) error {
	under := func(p, prefix string) bool { return p == prefix || strings.HasPrefix(p, prefix+"/") }
	switch {
	case pkg == ".":
		if imp != "installer/cli" {
			return fmt.Errorf("main may import only installer/cli")
		}
	case under(pkg, "installer/termtext"):
		return fmt.Errorf("termtext is a leaf")
	case imp == "installer/termtext":
		return nil
	case imp == "installer/cli":
		return fmt.Errorf("only main imports installer/cli (the composition root)")
	case under(imp, "e2e"):
		return fmt.Errorf("product code never imports e2e/: it holds black-box tests of the built binary only")
	case under(imp, "installer/lab/testkit"):
		return fmt.Errorf("installer/lab/testkit is for tests only")
	case under(pkg, "services"):
		if !under(imp, "services") {
			return fmt.Errorf("services know nothing of the engine: they may import only services/*")
		}
	case under(pkg, "manifests"):
		if !under(imp, "manifests") {
			return fmt.Errorf("manifests is a leaf")
		}
	case under(pkg, "installer/config"):
		if !under(imp, "installer/config") && imp != "manifests" {
			return fmt.Errorf("the answer-file schema is a leaf: it may import only manifests")
		}
	case under(pkg, "bundle"):
		if !under(imp, "bundle") && imp != "manifests" && imp != "installer/config" {
			return fmt.Errorf("bundle is a leaf: it may import only bundle/*, manifests and installer/config")
		}
	case under(pkg, "installer/seed"):
		return fmt.Errorf("the cloud-init seed renderer is a leaf")
	case under(pkg, "installer/kube"):
		if !under(imp, "installer/kube") && imp != "installer/state" && imp != "installer/seed" && imp != "installer/config" && imp != "manifests" {
			return fmt.Errorf("the Kubernetes driver renders data from plain values: it may import only installer/state, installer/seed, installer/config and manifests")
		}
	case under(pkg, "installer/pki"):
		return fmt.Errorf("airlock's CA (installer/pki) is a leaf")
	case under(pkg, "installer/events"):
		return fmt.Errorf("the event and Decider types are a leaf (the wizard imports them)")
	case under(pkg, "installer/state"):
		if !under(imp, "installer/state") {
			return fmt.Errorf("the state store is a leaf")
		}
	case under(pkg, "installer/agent"):
		if !under(imp, "installer/agent") && !under(imp, "services/agentapi") {
			return fmt.Errorf("the node agent may import only installer/agent/* and services/agentapi")
		}
	case under(pkg, "tui"):
		if !under(imp, "tui") && imp != "installer/config" && imp != "installer/events" && imp != "manifests" {
			return fmt.Errorf("the wizard knows the engine only through installer/config and installer/events")
		}
	case under(pkg, "installer/lab/netns"), under(pkg, "installer/lab/testkit"):
		return fmt.Errorf("the namespace helpers and the test kit are leaves")
	case under(pkg, "installer/lab"):
		if !under(imp, "installer/lab") && !under(imp, "services") {
			return fmt.Errorf("the virtual rack knows nothing of the engine: it may import only installer/lab/* and services/*")
		}
	}
	return nil
}

// scanImports returns, for each package directory under root (relative,
// "." for the root), the module-internal imports of its non-test files.
func scanImports(root string) (map[string][]string, error) {
	out := map[string][]string{}
	err := walkGo(root, func(dir, file string) error {
		f, err := parser.ParseFile(token.NewFileSet(), file, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, spec := range f.Imports {
			imp, _ := strconv.Unquote(spec.Path.Value)
			if rest, ok := strings.CutPrefix(imp, module+"/"); ok {
				out[dir] = append(out[dir], rest)
			}
		}
		if _, ok := out[dir]; !ok {
			out[dir] = nil
		}
		return nil
	})
	return out, err
}

// walkGo calls fn for every non-test Go file outside testdata, hidden and
// build-output directories.
func walkGo(root string, fn func(dir, file string) error) error {
	return filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if p != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel(root, filepath.Dir(p))
		if err != nil {
			return err
		}
		return fn(filepath.ToSlash(rel), p)
	})
}

func layerViolations(root string) ([]string, error) {
	imports, err := scanImports(root)
	if err != nil {
		return nil, err
	}
	var out []string
	for pkg, imps := range imports {
		for _, imp := range imps {
			if err := layerRule(pkg, imp); err != nil {
				out = append(out, fmt.Sprintf("%s imports %s: %v", pkg, imp, err))
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

func TestLayering(t *testing.T) {
	v, err := layerViolations(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range v {
		t.Error(msg)
	}
}

// writeTree makes a small source tree for the checkers' own tests.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// The layering check must fail when a forbidden import is added.
func TestLayeringCatchesForbiddenImports(t *testing.T) {
	ok := map[string]string{
		"main.go":                     "// Command x.\npackage main\nimport _ \"airlock.dev/airlock/installer/cli\"\n",
		"installer/cli/cli.go":        "// Package cli.\npackage cli\nimport _ \"airlock.dev/airlock/services/dhcp\"\n",
		"services/dhcp/dhcp.go":       "// Package dhcp.\npackage dhcp\nimport _ \"airlock.dev/airlock/services/ipxe\"\n",
		"services/dhcp/dhcp_test.go":  "package dhcp\nimport _ \"airlock.dev/airlock/installer/state\"\n",
		"bundle/inspect.go":           "// Package bundle.\npackage bundle\nimport _ \"airlock.dev/airlock/installer/termtext\"\n",
		"installer/config/problem.go": "// Package config.\npackage config\nimport _ \"airlock.dev/airlock/installer/termtext\"\n",
		"services/ra/ra.go":           "// Package ra.\npackage ra\nimport _ \"airlock.dev/airlock/installer/termtext\"\n",
		"tui/form.go":                 "// Package tui.\npackage tui\nimport _ \"airlock.dev/airlock/installer/termtext\"\n",
	}
	if v, err := layerViolations(writeTree(t, ok)); err != nil || len(v) != 0 {
		t.Fatalf("allowed tree reported %v, %v", v, err)
	}
	for _, tc := range []struct{ file, imp, want string }{
		{"services/dhcp/leases.go", "installer/state", "services/dhcp imports installer/state: services know nothing of the engine"},
		{"services/registry/r.go", "bundle", "services/registry imports bundle: services know nothing of the engine"},
		{"bundle/open.go", "installer/state", "bundle imports installer/state: bundle is a leaf"},
		{"installer/config/x.go", "installer/state", "installer/config imports installer/state: the answer-file schema is a leaf"},
		{"manifests/m.go", "installer/config", "manifests imports installer/config: manifests is a leaf"},
		{"tui/wizard.go", "installer/state", "tui imports installer/state: the wizard knows the engine only through installer/config"},
		{"installer/plan/p.go", "installer/cli", "installer/plan imports installer/cli: only main imports installer/cli"},
		{"other.go", "installer/state", ". imports installer/state: main may import only installer/cli"},
		{"installer/agent/a.go", "installer/state", "installer/agent imports installer/state: the node agent may import only"},
		{"installer/lab/lab.go", "installer/cli", "installer/lab imports installer/cli: only main imports installer/cli"},
		{"installer/engine/lab.go", "e2e/lab", "installer/engine imports e2e/lab: product code never imports e2e/"},
		{"installer/cli/lab.go", "e2e", "installer/cli imports e2e: product code never imports e2e/"},
		{"services/dhcp/ns.go", "e2e/netns", "services/dhcp imports e2e/netns: product code never imports e2e/"},
		{"installer/agent/k.go", "installer/lab/testkit", "installer/agent imports installer/lab/testkit: installer/lab/testkit is for tests only"},
		{"installer/lab/lab.go", "installer/engine", "installer/lab imports installer/engine: the virtual rack knows nothing of the engine"},
		{"installer/lab/netns/n.go", "installer/lab", "installer/lab/netns imports installer/lab: the namespace helpers and the test kit are leaves"},
		{"installer/termtext/t.go", "installer/config", "installer/termtext imports installer/config: termtext is a leaf"},
		{"installer/kube/k.go", "installer/engine", "installer/kube imports installer/engine: the Kubernetes driver renders data from plain values"},
	} {
		files := map[string]string{}
		for k, v := range ok {
			files[k] = v
		}
		pkg := path.Base(path.Dir(tc.file))
		if path.Dir(tc.file) == "." {
			pkg = "main"
		}
		files[tc.file] = fmt.Sprintf("package %s\nimport _ %q\n", pkg, module+"/"+tc.imp)
		v, err := layerViolations(writeTree(t, files))
		if err != nil {
			t.Fatal(err)
		}
		if len(v) != 1 || !strings.HasPrefix(v[0], tc.want) {
			t.Errorf("adding %s importing %s: got %q, want one violation starting %q", tc.file, tc.imp, v, tc.want)
		}
	}
}

// e2eHarness is what e2e's black-box tests may import from the module: the
// namespaces they put clients in, and the test kit (Debian's kernel, the
// agent built from source, a log buffer).
var e2eHarness = []string{"installer/lab/netns", "installer/lab/testkit"}

// e2eViolations checks that e2e/ holds black-box tests of the built binary
// only: every Go file is a test file, and the tests import nothing of the
// module but e2eHarness (they drive airlock as a process, never as a
// library). The layering scan skips test files, so this one reads them.
func e2eViolations(root string) ([]string, error) {
	dir := filepath.Join(root, "e2e")
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		return nil, nil
	}
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != dir && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
				return filepath.SkipDir
			}
			// A module of its own (e2e/k8s/tools: the Kubernetes binaries
			// the tests run, built from Go modules) is test tooling that
			// cannot see airlock's packages, as long as it does not require
			// airlock's module.
			if gomod, err := os.ReadFile(filepath.Join(p, "go.mod")); err == nil && p != dir {
				if regexp.MustCompile(`(?m)^\s*(require\s+)?` + regexp.QuoteMeta(module) + `\s+(v|=>)`).Match(gomod) {
					out = append(out, fmt.Sprintf("%s/go.mod names %s: a tools module under e2e/ must not use airlock's packages", p, module))
				}
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if !strings.HasSuffix(p, "_test.go") {
			out = append(out, fmt.Sprintf("%s is not a test file: e2e/ holds black-box tests only (product code goes under installer/, services/ or bundle/)", rel))
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, spec := range f.Imports {
			imp, _ := strconv.Unquote(spec.Path.Value)
			if rest, ok := strings.CutPrefix(imp, module+"/"); ok && !slices.Contains(e2eHarness, rest) {
				out = append(out, fmt.Sprintf("%s imports %s: e2e tests are black-box: from the module they may import only %s", rel, rest, strings.Join(e2eHarness, " and ")))
			}
		}
		return nil
	})
	slices.Sort(out)
	return out, err
}

func TestE2EIsBlackBox(t *testing.T) {
	v, err := e2eViolations(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range v {
		t.Error(msg)
	}
}

// The black-box check must fail when e2e/ gains a library or a test that
// imports an engine package.
func TestE2ECheckCatchesViolations(t *testing.T) {
	ok := map[string]string{
		"e2e/serve_test.go": "//go:build e2e\n\npackage e2e\nimport (\n\t_ \"airlock.dev/airlock/installer/lab/netns\"\n\t_ \"airlock.dev/airlock/installer/lab/testkit\"\n\t_ \"os/exec\"\n)\n",
		"e2e/demo.sh":       "#!/bin/sh\n",
	}
	if v, err := e2eViolations(writeTree(t, ok)); err != nil || len(v) != 0 {
		t.Fatalf("allowed tree reported %v, %v", v, err)
	}
	for _, tc := range []struct{ file, body, want string }{
		{"e2e/engine_test.go", "package e2e\nimport _ \"airlock.dev/airlock/installer/engine\"\n", "e2e/engine_test.go imports installer/engine: e2e tests are black-box"},
		{"e2e/lab/lab_test.go", "package lab\nimport _ \"airlock.dev/airlock/services/dhcp\"\n", "e2e/lab/lab_test.go imports services/dhcp: e2e tests are black-box"},
		{"e2e/lab/lab.go", "// Package lab.\npackage lab\n", "e2e/lab/lab.go is not a test file: e2e/ holds black-box tests only"},
	} {
		files := map[string]string{tc.file: tc.body}
		for k, v := range ok {
			files[k] = v
		}
		v, err := e2eViolations(writeTree(t, files))
		if err != nil {
			t.Fatal(err)
		}
		if len(v) != 1 || !strings.HasPrefix(v[0], tc.want) {
			t.Errorf("adding %s: got %q, want one violation starting %q", tc.file, v, tc.want)
		}
	}
}

// undocumented lists package directories none of whose files has a
// package doc comment.
func undocumented(root string) ([]string, error) {
	documented := map[string]bool{}
	err := walkGo(root, func(dir, file string) error {
		f, err := parser.ParseFile(token.NewFileSet(), file, nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			return err
		}
		documented[dir] = documented[dir] || (f.Doc != nil && strings.TrimSpace(f.Doc.Text()) != "")
		return nil
	})
	var out []string
	for dir, ok := range documented {
		if !ok {
			out = append(out, dir)
		}
	}
	slices.Sort(out)
	return out, err
}

func TestEveryPackageHasADocComment(t *testing.T) {
	missing, err := undocumented(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range missing {
		t.Errorf("package %s has no doc comment: add // Package ... to one file", dir)
	}
	caught, err := undocumented(writeTree(t, map[string]string{
		"a/a.go": "// Package a does a.\npackage a\n",
		"b/b.go": "package b\n",
	}))
	if err != nil || !slices.Equal(caught, []string{"b"}) {
		t.Errorf("doc check on a tree with one undocumented package found %v, %v", caught, err)
	}
}
