package build

import (
	"testing"

	"airlock.dev/airlock/bundle"
)

// FuzzParseSpec: bundle.yaml decoding and validation never panic, and a
// spec that parses without problems has what Build relies on.
func FuzzParseSpec(f *testing.F) {
	f.Add([]byte("apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nimages:\n  - ref: nginx:1.25\n    platforms: [linux/amd64]\n"))
	f.Add([]byte("apiVersion: airlock.dev/v1alpha1\nkind: Bundle\ncharts:\n  - name: x\n    repo: https://charts.example.com\n    version: 1.0.0\n    values: {a: [1, {b: c}]}\nfiles:\n  - name: a/b\n    url: ./x\n    sha256: " + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" + "\n"))
	f.Add([]byte("images: [{ref: '@@@'}]\nfiles: [{name: ../x}]\n"))
	f.Add([]byte("apiVersion: airlock.dev/v1alpha1\nkind: Bundle\nosImages:\n  - {name: debian-12, path: debian-12.qcow2, rawSHA256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef}\n  - {name: ../x, path: 'http://x'}\n"))
	f.Add([]byte("- a\n- b\n"))
	f.Add([]byte("a: &a [*a, *a]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, problems := ParseSpec("bundle.yaml", data)
		if problems.Err() != nil {
			return
		}
		for _, im := range s.Images {
			if _, err := ParseImageRef(im.Ref); err != nil {
				t.Fatalf("valid spec with a bad image ref %q: %v", im.Ref, err)
			}
		}
		for _, im := range s.OSImages {
			if !bundle.ValidOSImageName(im.Name) || im.Path == "" {
				t.Fatalf("valid spec with a bad OS image: %+v", im)
			}
		}
		for _, c := range s.Charts {
			if (c.Repo != "") == (c.Path != "") && c.OCI == "" {
				t.Fatalf("valid spec with chart source unclear: %+v", c)
			}
		}
	})
}
