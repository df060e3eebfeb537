// Package bundle reads and writes airlock bundles: everything a site needs
// (container images, Helm charts, files such as kernels and OS images) in
// one signed file that airlock serves from in place.
//
// # Format
//
// A bundle is an uncompressed POSIX tar archive followed by a 64-byte
// trailer. The archive holds an OCI image layout (oci-layout, index.json,
// blobs/sha256/...), charts under charts/, files under files/, and, last,
// airlock/metadata.json and its ed25519 signature airlock/metadata.json.sig.
// The metadata lists every entry of the archive with the offset of its
// bytes, size, digest and media type, plus the images (reference, digest,
// platforms), charts (and the images they reference) and files. The
// trailer gives the offsets of the metadata and the signature, the size of
// the bundle and, for a bundle split into parts, the part size.
//
// Because entries are stored uncompressed at known offsets, a blob is read
// (and sent with sendfile) straight from the bundle file. `tar -x` of a
// bundle gives a plain OCI image layout.
//
// A bundle may be appended to the airlock executable (a self-contained
// executable): the trailer at the end of the file gives the bundle size,
// so the bundle starts at file size minus bundle size. It may also be
// split into numbered parts (site.bundle.001, .002, ...) that are read
// back as one.
//
// # Trust
//
// Every byte of a bundle is covered by its signature, directly or through
// a signed digest. The metadata is signed. The archive around the entries'
// contents (each entry's ustar header: name, mode 0644, owner root, type
// regular file, size and time; the zero padding after each content; the
// two zero end-of-archive blocks) and the trailer's fields are a function
// of the signed metadata: Open rebuilds them as the writer writes them and
// refuses a bundle whose bytes differ anywhere, so nothing unlisted,
// missing, reordered, setuid, linked or extended (PAX, GNU) can hide in
// it. Each entry's content is checked against its signed digest before it
// is first served (and remembered); Verify checks every digest at once,
// and the executable a self-contained bundle is appended to, whose size
// and digest the metadata records.
//
// Which key a bundle must be signed with is the caller's to say (Trust):
// Open refuses a bundle whose key nobody named.
package bundle

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// API version and kinds.
const (
	APIVersion   = "airlock.dev/v1alpha1"
	KindMetadata = "BundleMetadata"
)

// Paths of the metadata and signature in the archive.
const (
	MetadataPath  = "airlock/metadata.json"
	SignaturePath = "airlock/metadata.json.sig"
)

// Limits that bound what a reader allocates for untrusted input.
const (
	maxMetadataSize = 64 << 20 // some 250,000 entries
	trailerSize     = 64
)

var trailerMagic = [8]byte{'A', 'L', 'B', 'U', 'N', 'D', 'L', 'E'}

const formatVersion = 1

// Errors a caller may test for with errors.Is.
var (
	// ErrNotBundle: no airlock trailer at the end of the file.
	ErrNotBundle = errors.New("not an airlock bundle")
	// ErrCorrupt: the bundle's structure or a digest does not match.
	ErrCorrupt = errors.New("bundle is corrupt")
	// ErrSignature: the signature does not verify or is by another key.
	ErrSignature = errors.New("bundle signature is not valid")
	// ErrMissingPart: a part of a split bundle is missing or has the wrong size.
	ErrMissingPart = errors.New("bundle part missing")
)

// Metadata is the signed description of a bundle's contents.
type Metadata struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// Created is when the bundle was built (RFC 3339).
	Created string `json:"created"`
	// Name is the bundle's name from bundle.yaml.
	Name string `json:"name,omitempty"`
	// KeyID names the signing key: the first 16 hex digits of the SHA-256 of
	// the public key.
	KeyID string `json:"keyID"`
	// PublicKey is the signing key (ed25519, 32 bytes), so that a bundle's
	// integrity can be checked without the key file; trust still requires
	// the key to be given.
	PublicKey []byte `json:"publicKey"`
	// Entries lists every archive entry except the metadata and signature.
	Entries []Entry `json:"entries"`
	Images  []Image `json:"images,omitempty"`
	Charts  []Chart `json:"charts,omitempty"`
	Files   []File  `json:"files,omitempty"`
	// OSImages are the operating system images installs write to disks.
	OSImages []OSImage `json:"osImages,omitempty"`
	// Components are the platform catalog components the bundle serves.
	Components []string `json:"components,omitempty"`
	// Kubernetes is what the nodes need to form a cluster, when the
	// bundle carries it (bundle.yaml's kubernetes:).
	Kubernetes *Kubernetes `json:"kubernetes,omitempty"`
	// PartSize is the size of each part of a split bundle (the trailer
	// repeats it); 0 when the bundle is one file.
	PartSize int64 `json:"partSize,omitempty"`
	// Executable is the program a self-contained executable's bundle is
	// appended to; nil for a bundle file.
	Executable *Executable `json:"executable,omitempty"`
}

// Executable records the program a bundle was appended to.
type Executable struct {
	Size   int64  `json:"size"`
	Digest string `json:"digest"`
}

// Entry is one file in the archive.
type Entry struct {
	Path string `json:"path"`
	// Offset of the entry's bytes from the start of the bundle.
	Offset int64  `json:"offset"`
	Size   int64  `json:"size"`
	Digest string `json:"digest"`
	// MediaType is set for manifests and indexes.
	MediaType string `json:"mediaType,omitempty"`
}

// Image is a container image (or index) in the bundle.
type Image struct {
	// Repository is the full upstream name: docker.io/library/nginx.
	Repository string `json:"repository"`
	Tag        string `json:"tag,omitempty"`
	// Digest of the top manifest or index.
	Digest    string   `json:"digest"`
	MediaType string   `json:"mediaType"`
	Platforms []string `json:"platforms,omitempty"`
	// Size is the total of the manifests, configs and layers kept.
	Size int64 `json:"size"`
	// From says why the image is there: "bundle.yaml" or "chart NAME".
	From []string `json:"from,omitempty"`
}

// Ref returns repository:tag, or repository@digest for an untagged image.
func (i Image) Ref() string {
	if i.Tag != "" {
		return i.Repository + ":" + i.Tag
	}
	return i.Repository + "@" + i.Digest
}

// Chart is a packaged Helm chart in the bundle.
type Chart struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// Path of the chart archive (.tgz) in the bundle.
	Path   string `json:"path"`
	Digest string `json:"digest"`
	Source string `json:"source"`
	// Images lists every image the chart references when rendered with
	// the values of bundle.yaml.
	Images []string `json:"images,omitempty"`
}

// File is a file carried in the bundle (kernel, iPXE binary, OS image...).
type File struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	Digest string `json:"digest"`
	Source string `json:"source,omitempty"`
}

// Kubernetes is the Kubernetes release a bundle carries: its binaries and
// the images its nodes pull.
type Kubernetes struct {
	// Version is the release, vX.Y.Z.
	Version string `json:"version"`
	// Arch is the architecture of Binaries (linux/ARCH), e.g. amd64.
	Arch string `json:"arch"`
	// Binaries maps a binary's name (kubelet, kubeadm, kubectl) to the
	// bundle file (a Files Name, e.g. kubernetes/v1.35.4/linux-amd64/kubelet)
	// holding it; that File's Digest is its sha256.
	Binaries map[string]string `json:"binaries"`
	// OtherArches maps further architectures the bundle carries binaries
	// for (spec platforms naming several linux architectures) to their
	// binaries, as Binaries does for Arch.
	OtherArches map[string]map[string]string `json:"otherArches,omitempty"`
	// Images are the references nodes pull (kubeadm's images of Version,
	// and kube-vip), exactly as they ask for them; each is in Images.
	Images []string `json:"images"`
}

// KubernetesBinaries are the binaries a bundle's Kubernetes must carry.
var KubernetesBinaries = []string{"kubelet", "kubeadm", "kubectl"}

// trailer is the fixed-size record at the end of a bundle.
type trailer struct {
	metaOff, metaSize int64
	sigOff, sigSize   int64
	total             int64 // bundle size including the trailer
	partSize          int64 // 0 when the bundle is not split
}

func (t trailer) marshal() []byte {
	b := make([]byte, trailerSize)
	copy(b, trailerMagic[:])
	binary.BigEndian.PutUint32(b[8:], formatVersion)
	for i, v := range []int64{t.metaOff, t.metaSize, t.sigOff, t.sigSize, t.total, t.partSize} {
		binary.BigEndian.PutUint64(b[16+8*i:], uint64(v))
	}
	return b
}

func parseTrailer(b []byte) (trailer, error) {
	var t trailer
	if len(b) != trailerSize || string(b[:8]) != string(trailerMagic[:]) {
		return t, ErrNotBundle
	}
	if v := binary.BigEndian.Uint32(b[8:]); v != formatVersion {
		return t, fmt.Errorf("%w: format version %d, this airlock reads version %d (use a matching airlock)", ErrNotBundle, v, formatVersion)
	}
	if r := binary.BigEndian.Uint32(b[12:]); r != 0 {
		return t, fmt.Errorf("%w: trailer bytes 12-15 are %#x, the writer writes 0", ErrCorrupt, r)
	}
	vals := make([]int64, 6)
	for i := range vals {
		u := binary.BigEndian.Uint64(b[16+8*i:])
		if u > 1<<62 {
			return t, fmt.Errorf("%w: trailer field %d out of range", ErrCorrupt, i)
		}
		vals[i] = int64(u)
	}
	t = trailer{vals[0], vals[1], vals[2], vals[3], vals[4], vals[5]}
	switch {
	case t.total < trailerSize+1024:
		return t, fmt.Errorf("%w: trailer gives a bundle size of %d bytes", ErrCorrupt, t.total)
	case t.metaSize <= 0 || t.metaSize > maxMetadataSize:
		return t, fmt.Errorf("%w: trailer gives a metadata size of %d bytes", ErrCorrupt, t.metaSize)
	case t.sigSize != 64:
		return t, fmt.Errorf("%w: trailer gives a signature size of %d bytes (ed25519 signatures are 64)", ErrCorrupt, t.sigSize)
	case t.metaOff < 0 || t.metaOff+t.metaSize > t.total-trailerSize || t.sigOff < 0 || t.sigOff+t.sigSize > t.total-trailerSize:
		return t, fmt.Errorf("%w: trailer points outside the bundle", ErrCorrupt)
	case t.partSize < 0:
		return t, fmt.Errorf("%w: negative part size", ErrCorrupt)
	}
	return t, nil
}

// The archive's layout: what the writer puts around the entries' contents.
const (
	blockSize = 512
	// endOfArchive is the two zero blocks that end a tar archive.
	endOfArchive = 2 * blockSize
	// maxOctalSize is the largest size the ustar size field holds in octal
	// (11 digits); larger sizes are written base-256 (a GNU extension that
	// GNU tar, bsdtar, Python and Go read).
	maxOctalSize = 1<<33 - 1
	// maxMtime is the largest time the ustar mtime field holds.
	maxMtime = 1<<33 - 1
)

// padding is the number of zero bytes after size bytes of content.
func padding(size int64) int64 {
	if r := size % blockSize; r != 0 {
		return blockSize - r
	}
	return 0
}

// ustarHeader returns the archive header the writer puts before an
// entry's content: one POSIX ustar block for a regular file named name,
// of size bytes, mode 0644, owner and group root (0), modified at mtime
// (Unix seconds). For these fields it is what archive/tar writes
// (FormatUSTAR), byte for byte. The reader compares every header of a
// bundle with it, so no field can say what the writer did not.
func ustarHeader(name string, size, mtime int64) ([]byte, error) {
	if err := checkPathChars(name); err != nil {
		return nil, err
	}
	prefix, base := "", name
	if len(name) > 100 {
		// Split at a slash: prefix (at most 155 bytes) / name (at most 100).
		i := strings.LastIndexByte(name[:min(len(name), 156)], '/')
		if i <= 0 || len(name)-i-1 > 100 || len(name)-i-1 == 0 {
			return nil, fmt.Errorf("%w: path %q does not fit an archive header (at most 100 bytes after the last slash within the first 156)", ErrCorrupt, name)
		}
		prefix, base = name[:i], name[i+1:]
	}
	if size < 0 || mtime < 0 || mtime > maxMtime {
		return nil, fmt.Errorf("%w: entry %q: size %d or time %d out of range", ErrCorrupt, name, size, mtime)
	}
	h := make([]byte, blockSize)
	copy(h[0:100], base)
	octal(h[100:108], 0o644)
	octal(h[108:116], 0)
	octal(h[116:124], 0)
	if size <= maxOctalSize {
		octal(h[124:136], size)
	} else {
		h[124] = 0x80
		binary.BigEndian.PutUint64(h[128:136], uint64(size))
	}
	octal(h[136:148], mtime)
	h[156] = '0' // regular file
	copy(h[257:263], "ustar\x00")
	copy(h[263:265], "00")
	copy(h[265:297], "root")
	copy(h[297:329], "root")
	octal(h[329:337], 0)
	octal(h[337:345], 0)
	copy(h[345:500], prefix)
	var sum int64
	for i, c := range h {
		if i >= 148 && i < 156 {
			c = ' '
		}
		sum += int64(c)
	}
	octal(h[148:155], sum)
	h[155] = ' '
	return h, nil
}

// octal writes x as zero-padded octal digits and a NUL into field.
func octal(field []byte, x int64) {
	s := strconv.FormatInt(x, 8)
	for len(s) < len(field)-1 {
		s = "0" + s
	}
	copy(field, s)
	field[len(field)-1] = 0
}

// headerField names the ustar header field at offset i of a header block.
func headerField(i int64) string {
	fields := []struct {
		end  int64
		name string
	}{{100, "name"}, {108, "mode"}, {116, "uid"}, {124, "gid"}, {136, "size"}, {148, "mtime"}, {156, "checksum"},
		{157, "type"}, {257, "link name"}, {263, "magic"}, {265, "version"}, {297, "user name"}, {329, "group name"},
		{337, "device major"}, {345, "device minor"}, {500, "name prefix"}, {512, "padding"}}
	for _, f := range fields {
		if i < f.end {
			return f.name
		}
	}
	return "block"
}
