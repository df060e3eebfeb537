package bundle

import (
	"bytes"
	"strings"
	"testing"

	"airlock.dev/airlock/installer/termtext"
)

// FuzzInspectText checks that inspect's text form shows any metadata
// escaped: nothing raw for the terminal, and no name can add a line.
func FuzzInspectText(f *testing.F) {
	f.Add("site\x1b]0;pwned\x07", "docker.io/x\u202e", "chart\x1b]8;;http://evil/\x1b\\", "img\r\x00", "vmlinuz\x7f\u2066", "cni\x9b\xff")
	f.Add("plain", "docker.io/library/busybox", "mychart", "docker.io/library/nginx:1.25", "vmlinuz", "cni")
	f.Fuzz(func(t *testing.T, name, repo, chart, image, file, component string) {
		in := Inspection{
			Name: name, Path: name + ".bundle", Created: name, KeyID: component,
			Images:     []Image{{Repository: repo, Tag: image, Digest: "sha256:" + repo, Platforms: []string{image}, From: []string{chart}}},
			Charts:     []Chart{{Name: chart, Version: image, Images: []string{image, repo}}},
			Files:      []File{{Name: file, Digest: file}},
			Components: []string{component, name},
			OSImages:   []OSImage{{Name: file, Compression: chart, RawSHA256: image}},
			Kubernetes: &Kubernetes{Version: image, Arch: component, Binaries: map[string]string{"kubelet": file, "kubeadm": name}, Images: []string{repo, image}},
		}
		var buf bytes.Buffer
		if err := in.WriteText(&buf); err != nil {
			t.Fatal(err)
		}
		out := buf.String()
		if i := termtext.FindUnsafe(out); i >= 0 {
			t.Fatalf("raw rune at %d: %q", i, out)
		}
		if n := strings.Count(out, "\n"); n != 26 {
			t.Fatalf("%d lines, want 26 (a name added or removed one):\n%s", n, out)
		}
	})
}
