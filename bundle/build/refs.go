package build

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

var digestRE = regexp.MustCompile(`^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$`)

// ImageRef is an image reference normalised the way containerd names
// images: docker.io for Docker Hub, library/ for its official images.
type ImageRef struct {
	Repository string // docker.io/library/nginx
	Tag        string // may be empty when Digest is set
	Digest     string // may be empty
}

// ParseImageRef parses and normalises a reference: nginx:1.25 becomes
// docker.io/library/nginx:1.25; a reference without tag or digest gets
// :latest; repo:tag@digest keeps both.
func ParseImageRef(s string) (ImageRef, error) {
	var r ImageRef
	base := s
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		base, r.Digest = s[:i], s[i+1:]
		if !digestRE.MatchString(r.Digest) {
			return r, fmt.Errorf("%q: invalid digest %q", s, r.Digest)
		}
	}
	if base == "" {
		return r, fmt.Errorf("%q: no repository", s)
	}
	t, err := name.NewTag(base)
	if err != nil {
		return r, fmt.Errorf("%q is not an image reference: %v", s, err)
	}
	host := t.RegistryStr()
	if host == name.DefaultRegistry {
		host = "docker.io"
	}
	r.Repository = host + "/" + t.RepositoryStr()
	if r.Digest == "" || strings.Contains(base[strings.LastIndexByte(base, '/')+1:], ":") {
		r.Tag = t.TagStr()
	}
	return r, nil
}

// String renders repository:tag, repository@digest or repository:tag@digest.
func (r ImageRef) String() string {
	s := r.Repository
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest
	}
	return s
}

// fetchRef is what to ask the upstream registry for: the digest when
// pinned, else the tag.
func (r ImageRef) fetchRef(opts ...name.Option) (name.Reference, error) {
	host, path, _ := strings.Cut(r.Repository, "/")
	if host == "docker.io" {
		host = name.DefaultRegistry
	}
	repo := host + "/" + path
	if r.Digest != "" {
		return name.NewDigest(repo+"@"+r.Digest, opts...)
	}
	return name.NewTag(repo+":"+r.Tag, opts...)
}
