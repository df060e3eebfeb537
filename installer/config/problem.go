package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"airlock.dev/airlock/installer/termtext"
)

// Problem is one thing wrong (or, for a warning, suspicious) in an answer
// file: where it is, which field, and what to do about it.
type Problem struct {
	File    string `json:"file,omitempty"`
	Line    int    `json:"line,omitempty"`
	Col     int    `json:"column,omitempty"`
	Path    string `json:"path,omitempty"`
	Message string `json:"message"`
	Warning bool   `json:"warning,omitempty"`

	// omitted is set on the one problem that counts those left out.
	omitted *omitted
}

// String renders FILE:LINE:COL: field.path: message, leaving out the parts
// that are unknown (an answer built by the wizard has no file). The file
// name, the path (its keys come from the file) and the message (which may
// quote values) are escaped for the terminal: nothing from the file reaches
// it raw, and one problem is always one line.
func (p Problem) String() string {
	var b strings.Builder
	if p.File != "" {
		b.WriteString(termtext.Escape(p.File))
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d:%d", p.Line, p.Col)
		}
		b.WriteString(": ")
	}
	if p.Warning {
		b.WriteString("warning: ")
	}
	if p.Path != "" {
		b.WriteString(termtext.Escape(p.Path))
		b.WriteString(": ")
	}
	b.WriteString(termtext.Escape(p.Message))
	return b.String()
}

// Problems is a list of problems; as an error it lists the errors only.
type Problems []Problem

// Errors returns the problems that are not warnings.
func (ps Problems) Errors() Problems {
	return slices.DeleteFunc(slices.Clone(ps), func(p Problem) bool { return p.Warning })
}

// Warnings returns the problems that are warnings.
func (ps Problems) Warnings() Problems {
	return slices.DeleteFunc(slices.Clone(ps), func(p Problem) bool { return !p.Warning })
}

// Err returns the errors among ps as one error, or nil when there are none.
func (ps Problems) Err() error {
	if errs := ps.Errors(); len(errs) > 0 {
		return errs
	}
	return nil
}

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Sort orders problems by file position, then path, then message, so
// output is stable whatever order the checks ran in.
func (ps Problems) Sort() {
	slices.SortStableFunc(ps, func(a, b Problem) int {
		return cmp.Or(
			compareBool(a.omitted != nil, b.omitted != nil), // the count of those left out comes last
			cmp.Compare(a.File, b.File),
			cmp.Compare(a.Line, b.Line),
			cmp.Compare(a.Col, b.Col),
			cmp.Compare(a.Path, b.Path),
			cmp.Compare(a.Message, b.Message),
		)
	})
}

// MaxReported is how many problems Load returns at most; past it, one more
// problem says how many were left out, so that a small hostile file cannot
// make megabytes of output.
const MaxReported = 100

// omitted counts the problems left out of a list.
type omitted struct{ errors, warnings int }

func (o *omitted) count(p Problem) {
	if p.Warning {
		o.warnings++
	} else {
		o.errors++
	}
}

// appendTo adds to ps one problem saying how many were left out (an error
// when any of them is), or returns ps as it is when none were.
func (o omitted) appendTo(ps Problems) Problems {
	if o.errors+o.warnings == 0 {
		return ps
	}
	counts := o
	p := Problem{omitted: &counts, Warning: o.errors == 0, Message: fmt.Sprintf("... and %d more (%d %s, %d %s) not shown", o.errors+o.warnings,
		o.errors, pluralize(o.errors, "error", "errors"), o.warnings, pluralize(o.warnings, "warning", "warnings"))}
	if len(ps) > 0 {
		last := ps[len(ps)-1]
		p.File, p.Line, p.Col = last.File, last.Line, last.Col
	}
	return append(ps, p)
}

func pluralize(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// Limit sorts ps and keeps the first n problems, adding one that counts
// the rest (an error if any of the rest is). An "... and N more" problem
// already in ps is folded into the new count.
func (ps Problems) Limit(n int) Problems {
	var o omitted
	kept := make(Problems, 0, min(len(ps), n+1))
	for _, p := range ps {
		if p.omitted != nil {
			o.errors += p.omitted.errors
			o.warnings += p.omitted.warnings
			continue
		}
		kept = append(kept, p)
	}
	kept.Sort()
	if len(kept) > n {
		for _, p := range kept[n:] {
			o.count(p)
		}
		kept = kept[:n]
	}
	return o.appendTo(kept)
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
