// Package termtext makes text that came from an input (an answer file, a
// bundle's metadata, an agent's report, a file name) safe to print on a
// terminal: control characters (C0 and C1, ESC and DEL included), bidi
// overrides and isolates, zero-width and other invisible format characters,
// line and paragraph separators and invalid UTF-8 come out as visible
// escapes (\x1b, \u202e, \xff) instead of reaching the terminal as is.
//
// Escape and Quote are for one value (a table cell, a name in a message),
// EscapeLines for a message that may span lines, EscapeJSON and EscapeYAML
// for encoded documents, and Writer for a stream (logs). Printable text,
// backslashes included, is left unchanged by all but Quote, so escaping
// twice is harmless. The package imports nothing from the module, so every
// package may use it.
package termtext

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Unsafe reports whether r must not reach a terminal as is: every rune
// that is not printable (control characters, format characters such as
// bidi controls and zero-width spaces, separators other than the ASCII
// space, private-use and unassigned code points) and the default-ignorable
// runes that are printable but invisible (fillers, variation selectors).
func Unsafe(r rune) bool {
	if r >= 0x20 && r < 0x7f {
		return false
	}
	return !unicode.IsPrint(r) || invisible(r)
}

// invisible lists Unicode's Default_Ignorable_Code_Point runes that
// unicode.IsPrint accepts (marks and letters that render as nothing).
func invisible(r rune) bool {
	switch {
	case r == 0x034f, // combining grapheme joiner
		r == 0x115f, r == 0x1160, r == 0x3164, r == 0xffa0, // Hangul fillers
		r == 0x17b4, r == 0x17b5, // Khmer inherent vowels
		r >= 0x180b && r <= 0x180f,   // Mongolian variation selectors
		r >= 0xfe00 && r <= 0xfe0f,   // variation selectors
		r >= 0x1d173 && r <= 0x1d17a, // musical symbol format controls
		r >= 0xe0000 && r <= 0xe0fff: // tags, variation selectors supplement
		return true
	}
	return false
}

// layout reports whether r is newline or tab, the only control characters
// that EscapeLines, FindUnsafe, the JSON and YAML forms and Writer let
// through (as layout; neither can move the cursor back over text).
func layout(r rune) bool { return r == '\n' || r == '\t' }

// FindUnsafe returns the byte offset in s of the first rune Unsafe reports,
// or of the first byte that is not valid UTF-8, ignoring newlines and tabs;
// -1 when s is safe to print as it is.
func FindUnsafe(s string) int {
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && n == 1) || (Unsafe(r) && !layout(r)) {
			return i
		}
		i += n
	}
	return -1
}

// Escape returns s with every unsafe rune, newlines and tabs included, and
// every invalid UTF-8 byte written as a Go escape (\n, \x1b, \u202e,
// \U000e0041, \xff); anything else, backslashes included, is unchanged.
func Escape(s string) string { return escape(s, false, false) }

// EscapeLines is Escape for a message that may span lines: newlines and
// tabs are kept, carriage returns and everything else unsafe are escaped.
func EscapeLines(s string) string { return escape(s, true, false) }

// Quote returns s in double quotes with backslashes and double quotes
// escaped as well as every unsafe rune, like strconv.Quote but with
// invisible runes escaped too and printable non-ASCII text kept: for a name
// inside a message, where its start and end must be plain.
func Quote(s string) string { return escape(s, false, true) }

func escape(s string, keepLayout, quote bool) string {
	if !quote && clean(s, keepLayout) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	if quote {
		b.WriteByte('"')
	}
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b.WriteString(`\x`)
			b.WriteString(hex(uint32(s[i]), 2))
		case quote && (r == '"' || r == '\\'):
			b.WriteByte('\\')
			b.WriteRune(r)
		case keepLayout && layout(r):
			b.WriteRune(r)
		case Unsafe(r):
			b.WriteString(goEscape(r))
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	if quote {
		b.WriteByte('"')
	}
	return b.String()
}

func clean(s string, keepLayout bool) bool {
	for i := 0; i < len(s); {
		if s[i] >= 0x20 && s[i] < 0x7f {
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && n == 1) || (Unsafe(r) && !(keepLayout && layout(r))) {
			return false
		}
		i += n
	}
	return true
}

// goEscape writes r as Go would in a quoted string.
func goEscape(r rune) string {
	switch r {
	case '\a':
		return `\a`
	case '\b':
		return `\b`
	case '\f':
		return `\f`
	case '\n':
		return `\n`
	case '\r':
		return `\r`
	case '\t':
		return `\t`
	case '\v':
		return `\v`
	}
	switch {
	case r < 0x80:
		return `\x` + hex(uint32(r), 2)
	case r <= 0xffff:
		return `\u` + hex(uint32(r), 4)
	}
	return `\U` + hex(uint32(r), 8)
}

// jsonEscape writes r as a JSON string escape (a surrogate pair above the
// Basic Multilingual Plane), which YAML's double-quoted style reads too
// when r is in the BMP.
func jsonEscape(r rune) string {
	if r > 0xffff {
		r1, r2 := utf16Pair(r)
		return `\u` + hex(uint32(r1), 4) + `\u` + hex(uint32(r2), 4)
	}
	return `\u` + hex(uint32(r), 4)
}

func utf16Pair(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + (r>>10)&0x3ff, 0xdc00 + r&0x3ff
}

func hex(v uint32, width int) string {
	s := strconv.FormatUint(uint64(v), 16)
	return strings.Repeat("0", max(0, width-len(s))) + s
}
