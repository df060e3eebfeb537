package bundle

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Bundle is an open, structurally checked bundle.
type Bundle struct {
	name  string // for messages
	parts []part
	ra    io.ReaderAt // the bundle's bytes, from 0 to size
	size  int64
	base  int64 // offset of the bundle in the first file (an executable prefix)
	auth  Authenticity
	meta  Metadata

	byPath   map[string]*Entry
	byDigest map[string]*Entry
	checks   map[string]*check
	// pathChecks remember the digest checks of entries served by path
	// (OS images and files).
	pathChecks map[string]*check
	repos      []string
	tags       map[string]map[string]string // repository -> tag -> digest
}

type part struct {
	name  string
	f     *os.File
	start int64 // bundle offset of the part's first byte
	size  int64 // bytes of the bundle in this part
	skip  int64 // bytes before the bundle in this file (executable)
}

type check struct {
	once sync.Once
	err  error
}

var partSuffix = regexp.MustCompile(`\.[0-9]{3}$`)

// Open opens the bundle at name: a bundle file, a self-contained
// executable, or the first part (or base name) of a split bundle; an
// empty name is the bundle appended to the running executable. It checks
// the bundle's structure and signature, and its signing key against
// trust: this is where every command decides whether a bundle is used.
func Open(name string, trust Trust) (*Bundle, error) {
	if name == "" {
		return OpenExecutable(trust)
	}
	files, err := openParts(name)
	if err != nil {
		return nil, err
	}
	return openTrusted(name, files, trust)
}

// OpenExecutable opens the bundle appended to the running executable, as
// Open does a bundle file. It returns an error wrapping ErrNotBundle when
// there is none.
func OpenExecutable(trust Trust) (*Bundle, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	f, err := OpenRegular(exe)
	if err != nil {
		return nil, fmt.Errorf("open own executable: %w", err)
	}
	return openTrusted(exe, []*os.File{f}, trust)
}

// openTrusted opens the bundle in files and, on first use, records its
// key once all of it checked out. It closes files when it fails.
func openTrusted(name string, files []*os.File, trust Trust) (*Bundle, error) {
	b, err := openFiles(name, files, trust)
	if err == nil && b.auth == FirstUse {
		if err = trust.pin(ed25519.PublicKey(b.meta.PublicKey)); err != nil {
			b.Close()
			return nil, fmt.Errorf("open bundle %s: %w", name, err)
		}
	}
	if err != nil {
		for _, f := range files {
			f.Close()
		}
		return nil, err
	}
	return b, nil
}

func openParts(name string) ([]*os.File, error) {
	base := name
	st, err := os.Stat(name)
	switch {
	case err == nil && st.Mode().IsRegular() && !partSuffix.MatchString(name):
		f, err := OpenRegular(name)
		if err != nil {
			return nil, fmt.Errorf("open bundle: %w", err)
		}
		return []*os.File{f}, nil
	case err == nil && st.Mode().IsRegular():
		base = name[:len(name)-4]
	case err == nil:
		return nil, fmt.Errorf("open bundle %s: %w", name, notRegular(st.Mode()))
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("open bundle: %w", err)
	}
	names, _ := filepath.Glob(globEscape(base) + ".[0-9][0-9][0-9]")
	sort.Strings(names)
	if len(names) == 0 {
		return nil, fmt.Errorf("open bundle: %s: no such file, and no split parts (%s.001 and on)", name, name)
	}
	for i, n := range names {
		if want := fmt.Sprintf("%s.%03d", base, i+1); n != want {
			return nil, fmt.Errorf("open bundle %s: %w: %s is missing (found %s); copy it next to the others", base, ErrMissingPart, want, filepath.Base(n))
		}
	}
	var files []*os.File
	for _, n := range names {
		f, err := OpenRegular(n)
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, fmt.Errorf("open bundle part: %w", err)
		}
		files = append(files, f)
	}
	return files, nil
}

// globEscape quotes the glob metacharacters of a literal path.
func globEscape(p string) string {
	var b strings.Builder
	for _, r := range p {
		if strings.ContainsRune(`*?[\\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func openFiles(name string, files []*os.File, trust Trust) (*Bundle, error) {
	b := &Bundle{name: name}
	var total int64
	for _, f := range files {
		st, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("open bundle: %w", err)
		}
		b.parts = append(b.parts, part{name: f.Name(), f: f, start: total, size: st.Size()})
		total += st.Size()
	}
	whole := &multiReader{parts: b.parts}
	last := b.parts[len(b.parts)-1].name
	if total < trailerSize {
		return nil, fmt.Errorf("open bundle %s: %w: only %d bytes; the file is truncated (copy it again)", name, ErrNotBundle, total)
	}
	tb := make([]byte, trailerSize)
	if _, err := whole.ReadAt(tb, total-trailerSize); err != nil {
		return nil, fmt.Errorf("open bundle %s: read trailer: %w", name, err)
	}
	t, err := parseTrailer(tb)
	if err != nil {
		if errors.Is(err, ErrNotBundle) && !strings.Contains(err.Error(), "version") {
			return nil, fmt.Errorf("open bundle %s: %w", name, notBundleReason(whole, total, len(files), last))
		}
		return nil, fmt.Errorf("open bundle %s: %w", name, err)
	}
	if len(files) > 1 || partSuffix.MatchString(files[0].Name()) {
		if err := checkParts(b.parts, t, total); err != nil {
			return nil, fmt.Errorf("open bundle %s: %w", name, err)
		}
	}
	if t.total > total {
		return nil, fmt.Errorf("open bundle %s: %w: the trailer says %d bytes but there are %d; the file is truncated or damaged (copy it again)", name, ErrCorrupt, t.total, total)
	}
	b.base = total - t.total
	if b.base > 0 {
		// A self-contained executable: the bundle starts after the program.
		b.parts[0].skip = b.base
	}
	b.size = t.total
	b.ra = io.NewSectionReader(whole, b.base, t.total)
	if err := b.readMetadata(t, trust); err != nil {
		return nil, fmt.Errorf("open bundle %s: %w", name, err)
	}
	if err := b.checkEntries(t); err != nil {
		return nil, fmt.Errorf("open bundle %s: %w", name, err)
	}
	if err := b.checkArchive(t); err != nil {
		return nil, fmt.Errorf("open bundle %s: %w", name, err)
	}
	b.index()
	if err := b.checkOSImages(); err != nil {
		return nil, fmt.Errorf("open bundle %s: %w", name, err)
	}
	if err := b.checkKubernetes(); err != nil {
		return nil, fmt.Errorf("open bundle %s: %w", name, err)
	}
	return b, nil
}

// notBundleReason explains a missing trailer: a truncated bundle (the file
// starts like a bundle) or something else.
func notBundleReason(r io.ReaderAt, total int64, nparts int, last string) error {
	hdr := make([]byte, 512)
	if _, err := r.ReadAt(hdr, 0); err == nil {
		if h, err := tar.NewReader(bytes.NewReader(hdr)).Next(); err == nil && h.Name == "oci-layout" {
			if nparts > 1 {
				return fmt.Errorf("%w: no trailer at the end of %s: the last part is missing or truncated (copy every part again)", ErrMissingPart, last)
			}
			return fmt.Errorf("%w: no trailer at the end: the bundle is truncated (%d bytes); copy it again and run airlock bundle verify", ErrCorrupt, total)
		}
	}
	return fmt.Errorf("%w: no airlock trailer at the end of %s (is it a bundle? a bundle's last 64 bytes start with ALBUNDLE)", ErrNotBundle, last)
}

func checkParts(parts []part, t trailer, total int64) error {
	if t.partSize <= 0 {
		return fmt.Errorf("%w: %d parts found but the bundle was not split; remove the extra files", ErrCorrupt, len(parts))
	}
	want := int((t.total + t.partSize - 1) / t.partSize)
	base := strings.TrimSuffix(parts[0].name, ".001")
	for i := 0; i < want; i++ {
		size := t.partSize
		if i == want-1 {
			size = t.total - int64(want-1)*t.partSize
		}
		pn := fmt.Sprintf("%s.%03d", base, i+1)
		if i >= len(parts) {
			return fmt.Errorf("%w: %s (part %d of %d, %d bytes) is missing; copy it next to the others", ErrMissingPart, pn, i+1, want, size)
		}
		if parts[i].size != size {
			return fmt.Errorf("%w: %s has %d bytes, want %d (part %d of %d); copy it again", ErrMissingPart, pn, parts[i].size, size, i+1, want)
		}
	}
	if len(parts) > want {
		return fmt.Errorf("%w: %d parts found, the bundle has %d; remove %s", ErrCorrupt, len(parts), want, parts[want].name)
	}
	_ = total
	return nil
}

func (b *Bundle) readMetadata(t trailer, trust Trust) error {
	raw := make([]byte, t.metaSize)
	if _, err := b.ra.ReadAt(raw, t.metaOff); err != nil {
		return fmt.Errorf("read metadata: %w", err)
	}
	sig := make([]byte, t.sigSize)
	if _, err := b.ra.ReadAt(sig, t.sigOff); err != nil {
		return fmt.Errorf("read signature: %w", err)
	}
	// The key is read from the metadata before the signature is checked
	// with it; nothing else of the metadata is used until then.
	var keyOnly struct {
		KeyID     string `json:"keyID"`
		PublicKey []byte `json:"publicKey"`
	}
	if err := json.Unmarshal(raw, &keyOnly); err != nil || len(keyOnly.PublicKey) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: %s (%d bytes at offset %d, as the trailer says) is damaged: no signing key in it; copy the bundle again or rebuild it", ErrCorrupt, MetadataPath, t.metaSize, t.metaOff)
	}
	pub := ed25519.PublicKey(keyOnly.PublicKey)
	auth, err := trust.decide(pub)
	if err != nil {
		return err
	}
	if !ed25519.Verify(pub, raw, sig) {
		return fmt.Errorf("%w: %s does not match its signature %s (key %s): one of them was altered or damaged; copy the bundle again or rebuild it", ErrSignature, MetadataPath, SignaturePath, KeyID(pub))
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b.meta); err != nil {
		return fmt.Errorf("%w: decode %s: %v (built by a newer airlock?)", ErrCorrupt, MetadataPath, err)
	}
	if b.meta.APIVersion != APIVersion || b.meta.Kind != KindMetadata {
		return fmt.Errorf("%w: metadata is %q %q, want %s %s", ErrCorrupt, b.meta.APIVersion, b.meta.Kind, APIVersion, KindMetadata)
	}
	if b.meta.KeyID != KeyID(pub) {
		return fmt.Errorf("%w: metadata key ID %q does not match its key %s", ErrCorrupt, b.meta.KeyID, KeyID(pub))
	}
	b.auth = auth
	return nil
}

var digestRE = regexp.MustCompile(`^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$`)

// checkPath refuses paths that are absolute, unclean or escape the archive.
func checkPath(p string) error {
	switch {
	case p == "" || strings.HasPrefix(p, "/"):
		return fmt.Errorf("%w: path %q is not relative; refusing it (rebuild the bundle with airlock bundle build)", ErrCorrupt, p)
	case p == ".." || strings.HasPrefix(p, "../") || strings.Contains(p, "/../") || strings.HasSuffix(p, "/.."):
		return fmt.Errorf("%w: path %q escapes the bundle with ..; refusing it (rebuild the bundle with airlock bundle build)", ErrCorrupt, p)
	case path.Clean(p) != p:
		return fmt.Errorf("%w: path %q is not clean", ErrCorrupt, p)
	}
	return checkPathChars(p)
}

// checkPathChars refuses paths an archive header does not carry as they
// are: bytes outside printable ASCII (controls, escapes, UTF-8 that would
// need a PAX record), and backslashes.
func checkPathChars(p string) error {
	for i := 0; i < len(p); i++ {
		if c := p[i]; c < 0x20 || c > 0x7e || c == '\\' {
			return fmt.Errorf("%w: path %q has the byte %#02x at %d; bundle paths are printable ASCII without backslashes", ErrCorrupt, p, c, i)
		}
	}
	return nil
}

// checkEntries checks the metadata's entries: clean unique paths, valid
// digests, sorted non-overlapping ranges inside the archive.
func (b *Bundle) checkEntries(t trailer) error {
	seen := map[string]bool{MetadataPath: true, SignaturePath: true}
	var end int64
	for i, e := range b.meta.Entries {
		if err := checkPath(e.Path); err != nil {
			return fmt.Errorf("entry %d: %w", i, err)
		}
		if seen[e.Path] {
			return fmt.Errorf("%w: path %q appears twice; the bundle was tampered with or built by a broken tool: rebuild it", ErrCorrupt, e.Path)
		}
		seen[e.Path] = true
		if !digestRE.MatchString(e.Digest) {
			return fmt.Errorf("%w: entry %s: invalid digest %q", ErrCorrupt, e.Path, e.Digest)
		}
		if e.Size < 0 || e.Offset < end+512 || e.Offset%512 != 0 || e.Offset+e.Size > t.metaOff {
			return fmt.Errorf("%w: entry %s: bytes [%d, %d) are out of order or outside the archive", ErrCorrupt, e.Path, e.Offset, e.Offset+e.Size)
		}
		end = e.Offset + e.Size
	}
	if t.sigOff < t.metaOff+t.metaSize {
		return fmt.Errorf("%w: signature overlaps the metadata", ErrCorrupt)
	}
	return nil
}

// checkArchive compares every byte of the archive outside the entries'
// contents with what the writer writes for the signed metadata: each
// entry's header at its place, the zero padding after its content, the
// end-of-archive blocks, then the trailer's fields. A header changed in
// any field (mode, owner, time, type, link, PAX or GNU records), an entry
// added, dropped or moved, garbage in padding or before the trailer: all
// differ from that and are refused. Contents are covered by their digests.
func (b *Bundle) checkArchive(t trailer) error {
	created, err := time.Parse(time.RFC3339, b.meta.Created)
	if err != nil {
		return fmt.Errorf("%w: metadata creation time %q: %v", ErrCorrupt, b.meta.Created, err)
	}
	if b.meta.PartSize != t.partSize {
		return fmt.Errorf("%w: the trailer gives a part size of %d, the signed metadata %d", ErrCorrupt, t.partSize, b.meta.PartSize)
	}
	switch exe := b.meta.Executable; {
	case exe == nil && b.base > 0:
		return fmt.Errorf("%w: %d bytes precede the bundle, which was not built into an executable; copy it again", ErrCorrupt, b.base)
	case exe != nil && exe.Size != b.base:
		return fmt.Errorf("%w: the bundle was appended to an executable of %d bytes, but %d bytes precede it; copy the self-contained executable again", ErrCorrupt, exe.Size, b.base)
	case exe != nil && !digestRE.MatchString(exe.Digest):
		return fmt.Errorf("%w: invalid executable digest %q", ErrCorrupt, exe.Digest)
	}
	entries := append(append([]Entry(nil), b.meta.Entries...),
		Entry{Path: MetadataPath, Offset: t.metaOff, Size: t.metaSize},
		Entry{Path: SignaturePath, Offset: t.sigOff, Size: t.sigSize})
	var pos int64
	buf := make([]byte, blockSize)
	for _, e := range entries {
		h, err := ustarHeader(e.Path, e.Size, created.Unix())
		if err != nil {
			return err
		}
		if e.Offset != pos+int64(len(h)) {
			return fmt.Errorf("%w: %s starts at offset %d, the archive's layout puts it at %d; an entry was added, dropped or moved", ErrCorrupt, e.Path, e.Offset, pos+int64(len(h)))
		}
		if err := b.compare(pos, h, buf, "the archive header of "+strconv.Quote(e.Path), func() string { return "; fields that differ: " + b.headerDiff(pos, h) }); err != nil {
			return err
		}
		pos = e.Offset + e.Size
		if err := b.compare(pos, make([]byte, padding(e.Size)), buf, "the padding after "+strconv.Quote(e.Path), nil); err != nil {
			return err
		}
		pos += padding(e.Size)
	}
	if err := b.compare(pos, make([]byte, endOfArchive), buf, "the end-of-archive blocks", nil); err != nil {
		return err
	}
	pos += endOfArchive
	if t.total != pos+trailerSize {
		return fmt.Errorf("%w: the archive ends at offset %d, so the trailer must follow there, but it gives a bundle size of %d (the trailer at %d); bytes were added or the trailer altered", ErrCorrupt, pos, t.total, t.total-trailerSize)
	}
	return nil
}

// compare checks that the bundle holds want at off; where names those
// bytes and detail, if set, says more about a difference.
func (b *Bundle) compare(off int64, want, buf []byte, where string, detail func() string) error {
	for done := 0; done < len(want); {
		n := min(len(buf), len(want)-done)
		if _, err := b.ra.ReadAt(buf[:n], off+int64(done)); err != nil {
			return fmt.Errorf("%w: read %s at offset %d: %v", ErrCorrupt, where, off+int64(done), err)
		}
		if i := firstDiff(buf[:n], want[done:done+n]); i >= 0 {
			more := ""
			if detail != nil {
				more = detail()
			}
			return fmt.Errorf("%w: byte %d (%s) is %#02x, the writer wrote %#02x%s; the bundle was altered or damaged: copy it again or rebuild it", ErrCorrupt, off+int64(done+i), where, buf[i], want[done+i], more)
		}
		done += n
	}
	return nil
}

// headerDiff names the fields in which the header at off differs from h.
func (b *Bundle) headerDiff(off int64, h []byte) string {
	got := make([]byte, len(h))
	if _, err := b.ra.ReadAt(got, off); err != nil {
		return "unreadable"
	}
	var fields []string
	for i := range got {
		if got[i] != h[i] {
			if f := headerField(int64(i % blockSize)); !slices.Contains(fields, f) {
				fields = append(fields, f)
			}
		}
	}
	return strings.Join(fields, ", ")
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func (b *Bundle) index() {
	b.byPath = map[string]*Entry{}
	b.byDigest = map[string]*Entry{}
	b.checks = map[string]*check{}
	b.pathChecks = map[string]*check{}
	for i := range b.meta.Entries {
		e := &b.meta.Entries[i]
		b.byPath[e.Path] = e
		if strings.HasPrefix(e.Path, OSImagePathPrefix) || strings.HasPrefix(e.Path, FilePathPrefix) {
			b.pathChecks[e.Path] = &check{}
		}
		if strings.HasPrefix(e.Path, "blobs/") {
			if _, ok := b.byDigest[e.Digest]; !ok {
				b.byDigest[e.Digest] = e
				b.checks[e.Digest] = &check{}
			}
		}
	}
	b.tags = map[string]map[string]string{}
	for _, im := range b.meta.Images {
		if b.tags[im.Repository] == nil {
			b.tags[im.Repository] = map[string]string{}
			b.repos = append(b.repos, im.Repository)
		}
		if im.Tag != "" {
			b.tags[im.Repository][im.Tag] = im.Digest
		}
	}
	sort.Strings(b.repos)
}

// Close closes the bundle's files.
func (b *Bundle) Close() error {
	var err error
	for _, p := range b.parts {
		err = errors.Join(err, p.f.Close())
	}
	return err
}

// Metadata returns the bundle's signed metadata.
func (b *Bundle) Metadata() Metadata { return b.meta }

// Trusted reports whether the signing key was vouched for: given by the
// operator, or trusted on first use.
func (b *Bundle) Trusted() bool { return b.auth != NotChecked }

// Authenticity says how the signing key was trusted.
func (b *Bundle) Authenticity() Authenticity { return b.auth }

// Size is the bundle's size in bytes.
func (b *Bundle) Size() int64 { return b.size }

// Name is the path the bundle was opened from.
func (b *Bundle) Name() string { return b.name }

// Embedded reports whether the bundle is appended to an executable.
func (b *Bundle) Embedded() bool { return b.base > 0 }

// Parts lists the files the bundle is read from.
func (b *Bundle) Parts() []string {
	var n []string
	for _, p := range b.parts {
		n = append(n, p.name)
	}
	return n
}

// multiReader reads a sequence of files as one.
type multiReader struct{ parts []part }

func (m *multiReader) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for len(p) > 0 {
		i := sort.Search(len(m.parts), func(i int) bool { return m.parts[i].start+m.parts[i].size > off })
		if i == len(m.parts) {
			return n, io.EOF
		}
		pt := m.parts[i]
		chunk := p
		if rem := pt.start + pt.size - off; int64(len(chunk)) > rem {
			chunk = chunk[:rem]
		}
		k, err := pt.f.ReadAt(chunk, off-pt.start)
		n += k
		off += int64(k)
		p = p[k:]
		if err != nil && !(err == io.EOF && k == len(chunk)) {
			return n, err
		}
	}
	return n, nil
}
