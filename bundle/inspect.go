package bundle

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"airlock.dev/airlock/installer/termtext"
)

// Inspection is what `airlock bundle inspect` shows.
type Inspection struct {
	Name     string   `json:"name"`
	Path     string   `json:"path"`
	Parts    []string `json:"parts,omitempty"`
	Embedded bool     `json:"embedded"`
	Size     int64    `json:"size"`
	Created  string   `json:"created"`
	KeyID    string   `json:"keyID"`
	Trusted  bool     `json:"trusted"`
	// Authenticity says in words how the signing key was trusted.
	Authenticity string  `json:"authenticity"`
	Entries      int     `json:"entries"`
	Images       []Image `json:"images"`
	Charts       []Chart `json:"charts"`
	Files        []File  `json:"files"`
	// OSImages are the disk images installs write, with their raw size
	// and SHA-256.
	OSImages []OSImage `json:"osImages"`
	// Components are the platform catalog components the bundle serves.
	Components []string `json:"components"`
	// Kubernetes is the Kubernetes release the bundle carries, if any.
	Kubernetes *Kubernetes `json:"kubernetes,omitempty"`
}

// Inspect describes the bundle's contents from its signed metadata.
func (b *Bundle) Inspect() Inspection {
	in := Inspection{
		Name: b.meta.Name, Path: b.name, Embedded: b.Embedded(), Size: b.size,
		Created: b.meta.Created, KeyID: b.meta.KeyID, Trusted: b.Trusted(), Authenticity: b.auth.String(),
		Entries: len(b.meta.Entries), Images: b.meta.Images, Charts: b.meta.Charts, Files: b.meta.Files,
		Components: b.meta.Components, OSImages: b.meta.OSImages, Kubernetes: b.meta.Kubernetes,
	}
	if in.OSImages == nil {
		in.OSImages = []OSImage{}
	}
	if in.Components == nil {
		in.Components = []string{}
	}
	if len(b.parts) > 1 {
		in.Parts = b.Parts()
	}
	if in.Images == nil {
		in.Images = []Image{}
	}
	if in.Charts == nil {
		in.Charts = []Chart{}
	}
	if in.Files == nil {
		in.Files = []File{}
	}
	return in
}

// HumanSize renders a byte count with a binary unit.
func HumanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// WriteText renders the inspection for a terminal. Names, references,
// dates and paths come from the bundle's metadata (signed, but by a key
// that may be anyone's) or from the command line: every text cell is
// escaped, so none can act on the terminal or forge a row.
func (in Inspection) WriteText(w io.Writer) error {
	e := termtext.Escape
	join := func(ss []string, sep string) string {
		out := make([]string, len(ss))
		for i, s := range ss {
			out[i] = e(s)
		}
		return strings.Join(out, sep)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	trust := "signature valid, " + e(in.Authenticity)
	where := e(in.Path)
	if in.Embedded {
		where += " (self-contained executable)"
	}
	if len(in.Parts) > 0 {
		where += fmt.Sprintf(" (%d parts)", len(in.Parts))
	}
	fmt.Fprintf(tw, "Bundle:\t%s\n", e(in.Name))
	fmt.Fprintf(tw, "File:\t%s\n", where)
	fmt.Fprintf(tw, "Size:\t%s (%d entries)\n", HumanSize(in.Size), in.Entries)
	fmt.Fprintf(tw, "Created:\t%s\n", e(in.Created))
	fmt.Fprintf(tw, "Key:\t%s (%s)\n", e(in.KeyID), trust)
	if len(in.Components) > 0 {
		fmt.Fprintf(tw, "Components:\t%s\n", join(in.Components, ", "))
	}
	in.writeKubernetes(tw, e)
	fmt.Fprintf(tw, "\nIMAGES (%d)\tDIGEST\tSIZE\tPLATFORMS\tFROM\n", len(in.Images))
	for _, im := range in.Images {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e(im.Ref()), e(shortDigest(im.Digest)), HumanSize(im.Size), join(im.Platforms, ","), join(im.From, ", "))
	}
	fmt.Fprintf(tw, "\nCHARTS (%d)\tVERSION\tIMAGES\n", len(in.Charts))
	for _, c := range in.Charts {
		imgs := append([]string(nil), c.Images...)
		sort.Strings(imgs)
		first := "-"
		if len(imgs) > 0 {
			first = imgs[0]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", e(c.Name), e(c.Version), e(first))
		for _, im := range imgs[min(1, len(imgs)):] {
			fmt.Fprintf(tw, "\t\t%s\n", e(im))
		}
	}
	fmt.Fprintf(tw, "\nFILES (%d)\tSIZE\tDIGEST\n", len(in.Files))
	for _, f := range in.Files {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", e(f.Name), HumanSize(f.Size), e(shortDigest(f.Digest)))
	}
	fmt.Fprintf(tw, "\nOS IMAGES (%d)\tSIZE\tCOMPRESSION\tRAW SIZE\tRAW SHA256\n", len(in.OSImages))
	for _, im := range in.OSImages {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s (%d bytes)\t%s\n", e(im.Name), HumanSize(im.Size), e(im.Compression), HumanSize(im.RawSize), im.RawSize, e(im.RawSHA256))
	}
	return tw.Flush()
}

func shortDigest(d string) string {
	if i := strings.IndexByte(d, ':'); i >= 0 && len(d) > i+13 {
		return d[:i+13]
	}
	return d
}
