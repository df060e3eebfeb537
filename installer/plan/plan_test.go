package plan

import (
	"strings"
	"testing"

	"airlock.dev/airlock/installer/config"
)

// Each rule's OS image: the one it names or the bundle's only one, with
// the raw size and digest of the bundle's signed metadata; an image the
// bundle lacks, or no name while the bundle has several, is a problem
// naming the rule by its field path. Unopened bundles check nothing.
func TestRuleImages(t *testing.T) {
	rules := []config.Rule{
		{Name: "cp", Role: config.RoleControlPlane, OSImage: "debian-12"},
		{Name: "gpu", Role: config.RoleGPUWorker, OSImage: "rocky-9"},
		{Name: "workers", Role: config.RoleWorker},
	}
	a := &config.Answers{Machines: rules}
	deb := BundleOSImage{Name: "debian-12", RawSize: 2 << 30, RawSHA256: strings.Repeat("d", 64)}
	ubu := BundleOSImage{Name: "ubuntu-24.04", RawSize: 3 << 30, RawSHA256: strings.Repeat("e", 64)}

	type want struct {
		name     string
		inBundle string // yes, no, unknown
		rawSize  int64
		def      bool
	}
	in := func(w want, im Image) bool {
		got := "unknown"
		if im.InBundle != nil {
			got = map[bool]string{true: "yes", false: "no"}[*im.InBundle]
		}
		return im.Name == w.name && got == w.inBundle && im.RawSize == w.rawSize && im.Default == w.def && im.Note != ""
	}
	for _, c := range []struct {
		name     string
		b        BundleView
		rules    []want
		problems []string
	}{
		{"two images", BundleView{Opened: true, OSImages: []BundleOSImage{deb, ubu}},
			[]want{{"debian-12", "yes", 2 << 30, false}, {"rocky-9", "no", 0, false}, {"", "unknown", 0, false}},
			[]string{
				`machines[1].osImage: rule "gpu" installs "rocky-9", which the bundle does not have (its OS images: debian-12, ubuntu-24.04)`,
				`machines[2].osImage: rule "workers" names no OS image, and the bundle has 2 (debian-12, ubuntu-24.04): name one`,
			}},
		{"one image", BundleView{Opened: true, OSImages: []BundleOSImage{deb}},
			[]want{{"debian-12", "yes", 2 << 30, false}, {"rocky-9", "no", 0, false}, {"debian-12", "yes", 2 << 30, true}},
			[]string{`machines[1].osImage: rule "gpu" installs "rocky-9", which the bundle does not have (its OS images: debian-12)`}},
		{"no image", BundleView{Opened: true},
			[]want{{"debian-12", "no", 0, false}, {"rocky-9", "no", 0, false}, {"", "unknown", 0, false}},
			[]string{
				`machines[0].osImage: rule "cp" installs "debian-12", which the bundle does not have (its OS images: none)`,
				`machines[1].osImage: rule "gpu" installs "rocky-9", which the bundle does not have (its OS images: none)`,
			}},
		{"not opened", BundleView{Why: "open bundle: no such file"},
			[]want{{"debian-12", "unknown", 0, false}, {"rocky-9", "unknown", 0, false}, {"", "unknown", 0, false}}, nil},
	} {
		p := Make(a, nil, nil, c.b)
		for i, w := range c.rules {
			if !in(w, p.Rules[i].OSImage) {
				t.Errorf("%s: rule %s: %+v, want %+v", c.name, rules[i].Name, p.Rules[i].OSImage, w)
			}
		}
		if strings.Join(p.Problems, "\n") != strings.Join(c.problems, "\n") {
			t.Errorf("%s: problems:\n%s\nwant:\n%s", c.name, strings.Join(p.Problems, "\n"), strings.Join(c.problems, "\n"))
		}
		if !c.b.Opened && !strings.Contains(p.Bundle, "not opened: open bundle: no such file") {
			t.Errorf("%s: bundle line %q does not say why it was not opened", c.name, p.Bundle)
		}
	}
}
