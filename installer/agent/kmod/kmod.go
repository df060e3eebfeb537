// Package kmod resolves kernel modules and their dependencies from a
// module tree's modules.dep and loads them with finit_module(2). The boot
// image builder uses it to pick the modules to ship; the agent uses it to
// load them in order as PID 1.
package kmod

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// Deps is a parsed modules.dep: for each module path (relative to the
// module directory, e.g. kernel/drivers/net/virtio_net.ko) the paths it
// depends on, in modules.dep order.
type Deps struct {
	deps   map[string][]string
	byName map[string]string
}

// Name returns a module's name from its path: the base name without the
// .ko suffix (and compression suffix), with dashes as underscores.
func Name(p string) string {
	b := path.Base(p)
	for _, s := range []string{".xz", ".zst", ".gz"} {
		b = strings.TrimSuffix(b, s)
	}
	b = strings.TrimSuffix(b, ".ko")
	return strings.ReplaceAll(b, "-", "_")
}

// ParseDeps reads modules.dep.
func ParseDeps(r io.Reader) (*Deps, error) {
	d := &Deps{deps: map[string][]string{}, byName: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(text, ":")
		if !ok || mod == "" {
			return nil, fmt.Errorf("parse modules.dep line %d: no colon", line)
		}
		if strings.Contains(mod, "..") || strings.HasPrefix(mod, "/") {
			return nil, fmt.Errorf("parse modules.dep line %d: path %q leaves the module tree", line, mod)
		}
		deps := strings.Fields(rest)
		for _, dep := range deps {
			if strings.Contains(dep, "..") || strings.HasPrefix(dep, "/") {
				return nil, fmt.Errorf("parse modules.dep line %d: path %q leaves the module tree", line, dep)
			}
		}
		d.deps[mod] = deps
		d.byName[Name(mod)] = mod
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	return d, nil
}

// Path returns the path of the module called name, if the tree has it.
func (d *Deps) Path(name string) (string, bool) {
	p, ok := d.byName[strings.ReplaceAll(name, "-", "_")]
	return p, ok
}

// Resolve returns the paths of the named modules and all their
// dependencies in load order: for each module, its dependencies as
// modprobe loads them (modules.dep lists them with the deepest last, so in
// reverse), then the module itself. Names the tree does not have are
// returned in missing (they may be built in; see Builtin).
func (d *Deps) Resolve(names []string) (order []string, missing []string) {
	seen := map[string]bool{}
	var add func(p string)
	add = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		deps := d.deps[p]
		for i := len(deps) - 1; i >= 0; i-- {
			add(deps[i])
		}
		order = append(order, p)
	}
	for _, n := range names {
		p, ok := d.Path(n)
		if !ok {
			missing = append(missing, n)
			continue
		}
		add(p)
	}
	return order, missing
}

// Builtin parses modules.builtin and returns the names of built-in modules.
func Builtin(r io.Reader) (map[string]bool, error) {
	out := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if s := strings.TrimSpace(sc.Text()); s != "" {
			out[Name(s)] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.builtin: %w", err)
	}
	return out, nil
}

// Sorted returns every module path in the tree, sorted (for tests and
// listings).
func (d *Deps) Sorted() []string {
	out := make([]string, 0, len(d.deps))
	for p := range d.deps {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// DepsOf returns the dependencies of the module at path p as modules.dep
// lists them.
func (d *Deps) DepsOf(p string) []string { return d.deps[p] }
