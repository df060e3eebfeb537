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
			cmp.Compare(a.File, b.File),
			cmp.Compare(a.Line, b.Line),
			cmp.Compare(a.Col, b.Col),
			cmp.Compare(a.Path, b.Path),
			cmp.Compare(a.Message, b.Message),
		)
	})
}
