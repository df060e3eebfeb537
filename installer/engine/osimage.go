package engine

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/services/sendbuf"
)

// BundleOSImages is where the engine finds the OS images it installs: the
// bundle (*bundle.Bundle), whose signed metadata gives each image's raw
// size and SHA-256 and whose blob is served as it lies in the bundle.
type BundleOSImages interface {
	OSImages() []bundle.OSImage
	OSImageContent(name string) (r io.ReaderAt, off, size int64, err error)
}

// osImagesPrefix is where airlock serves the OS images: /os/images/NAME.
const osImagesPrefix = "/os/images/"

// installImage is one OS image the engine can install.
type installImage struct {
	name      string
	rawSize   int64
	rawSHA256 string
	// open returns the image as it is served: its blob in the bundle.
	open func() (io.ReadSeeker, error)
}

// check opens the image as it is served: for a bundle's image that checks
// its blob's digest (once; the outcome is remembered).
func (im installImage) check() error {
	_, err := im.open()
	return err
}

// urlPath is where the image is served.
func (im installImage) urlPath() string { return osImagesPrefix + im.name }

// osImages are the images an engine installs, by name.
type osImages map[string]installImage

func (s osImages) names() []string {
	out := make([]string, 0, len(s))
	for n := range s {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (s osImages) describe() string {
	if len(s) == 0 {
		return "no OS image (build the bundle with osImages:)"
	}
	return fmt.Sprintf("%d: %s", len(s), strings.Join(s.names(), ", "))
}

// imagesFrom gathers the images the engine installs: the bundle's.
func imagesFrom(b BundleOSImages) osImages {
	set := osImages{}
	if b == nil {
		return set
	}
	for _, im := range b.OSImages() {
		name := im.Name
		set[name] = installImage{name: name, rawSize: im.RawSize, rawSHA256: im.RawSHA256,
			open: func() (io.ReadSeeker, error) {
				r, off, size, err := b.OSImageContent(name)
				if err != nil {
					return nil, err
				}
				if f, ok := r.(*os.File); ok {
					// Sent with sendfile, as the registry sends blobs
					// (bench/install8: 4.3x the registry's CPU per GiB
					// when copied through a buffer).
					return sendbuf.NewSection(f, off, size), nil
				}
				return io.NewSectionReader(r, off, size), nil
			}}
	}
	return set
}

// CheckRuleImages checks that every machine rule's osImage is an image of
// images (the names of the bundle's OS images), and that a rule naming
// none has exactly one to default to. It returns every problem at once.
// With no images at all and no rule naming one there is nothing to check:
// the install then ends once machines are assigned.
func CheckRuleImages(a *config.Answers, images []string) error {
	have := map[string]bool{}
	for _, n := range images {
		have[n] = true
	}
	var problems []string
	for i, r := range a.Machines {
		switch {
		case r.OSImage == "" && len(images) > 1:
			problems = append(problems, fmt.Sprintf("machines[%d] (rule %q) names no osImage, and the bundle has %d (%s): name one", i, r.Name, len(images), strings.Join(images, ", ")))
		case r.OSImage != "" && !have[r.OSImage]:
			list := "none"
			if len(images) > 0 {
				list = strings.Join(images, ", ")
			}
			problems = append(problems, fmt.Sprintf("machines[%d] (rule %q) installs osImage %q, which the bundle does not have (its OS images: %s)", i, r.Name, r.OSImage, list))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("OS images of the machine rules:\n  %s", strings.Join(problems, "\n  "))
	}
	return nil
}

// ruleOf returns the machine rule that assigned m.
func (e *Engine) ruleOf(m inventory.Machine) (config.Rule, error) {
	if m.Assignment == nil {
		return config.Rule{}, fmt.Errorf("machine %s has no recorded assignment", m.ID)
	}
	for _, r := range e.answers.Machines {
		if r.Name == m.Assignment.Rule {
			return r, nil
		}
	}
	return config.Rule{}, fmt.Errorf("machine %s was assigned by rule %q, which the answer file no longer has", m.ID, m.Assignment.Rule)
}

// imageFor is the OS image machine m installs: its rule's osImage, or the
// only image there is.
func (e *Engine) imageFor(r config.Rule) (installImage, error) {
	name := r.OSImage
	if name == "" {
		if len(e.images) != 1 {
			return installImage{}, fmt.Errorf("rule %q names no osImage, and there are %s", r.Name, e.images.describe())
		}
		name = e.images.names()[0]
	}
	im, ok := e.images[name]
	if !ok {
		return installImage{}, fmt.Errorf("rule %q installs osImage %q, and there are %s", r.Name, name, e.images.describe())
	}
	return im, nil
}

// serveOSImages serves each image at /os/images/NAME (ranges too, so
// that a fetch can take up where it broke off).
func (e *Engine) serveOSImages() {
	e.hb.Mount(osImagesPrefix, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		im, ok := e.images[strings.TrimPrefix(r.URL.Path, osImagesPrefix)]
		if !ok {
			http.NotFound(w, r)
			return
		}
		rs, err := im.open()
		if err != nil {
			e.log.Error("serve OS image", "image", im.name, "err", err)
			http.Error(w, "OS image unavailable", http.StatusInternalServerError)
			return
		}
		// A long stream to an installing machine: the registry's send
		// buffer rather than the boot server's (bench/install8).
		sendbuf.Enlarge(r.Context())
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "", time.Time{}, rs)
	}))
}
