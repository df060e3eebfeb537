package termtext

import (
	"io"
	"unicode/utf8"
)

// EscapeJSON returns the JSON document b (as encoding/json writes it) with
// every unsafe rune written as a \u escape: encoding/json escapes C0
// controls but leaves DEL, C1 controls, bidi controls, zero-width spaces and
// the other format characters raw. Newlines and tabs, which encoding/json
// writes only between tokens, are kept, so the result is the same JSON
// value, still indented. Bytes that are not UTF-8 (encoding/json never
// writes them) become \ufffd. b is returned as is when it needs nothing.
func EscapeJSON(b []byte) []byte { return escapeDoc(b, jsonEscape) }

// EscapeYAML is EscapeJSON for a YAML document in which every scalar that
// holds an unsafe rune is double-quoted (the only YAML style with escapes):
// runes beyond the Basic Multilingual Plane are written as \U escapes.
func EscapeYAML(b []byte) []byte {
	return escapeDoc(b, func(r rune) string {
		if r > 0xffff {
			return `\U` + hex(uint32(r), 8)
		}
		return jsonEscape(r)
	})
}

func escapeDoc(b []byte, esc func(rune) string) []byte {
	first := findUnsafe(b)
	if first < 0 {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	out = append(out, b[:first]...)
	for i := first; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			out = append(out, `\ufffd`...)
		case Unsafe(r) && !layout(r):
			out = append(out, esc(r)...)
		default:
			out = append(out, b[i:i+n]...)
		}
		i += n
	}
	return out
}

func findUnsafe(b []byte) int {
	for i := 0; i < len(b); {
		if b[i] >= 0x20 && b[i] < 0x7f {
			i++
			continue
		}
		r, n := utf8.DecodeRune(b[i:])
		if (r == utf8.RuneError && n == 1) || (Unsafe(r) && !layout(r)) {
			return i
		}
		i += n
	}
	return -1
}

// Writer escapes what is written through it as EscapeJSON does, so that it
// can sit below any text or JSON encoder (slog's handlers, a table): every
// unsafe rune except newline and tab reaches the underlying writer as a \u
// escape. A rune split across two writes is held until the next one; Flush
// writes a held incomplete rune as \ufffd. Like a bytes.Buffer, a Writer
// is not for concurrent use: slog's handlers serialise their writes.
type Writer struct {
	w    io.Writer
	held []byte
}

// NewWriter returns a Writer that writes to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write escapes p and writes it. It reports len(p) written when the
// escaped bytes were all written.
func (w *Writer) Write(p []byte) (int, error) {
	buf := p
	if len(w.held) > 0 {
		buf = append(w.held, p...)
		w.held = nil
	}
	// Hold back the start of a rune that the next write completes.
	tail := 0
	for k := 1; k <= utf8.UTFMax-1 && k <= len(buf); k++ {
		c := buf[len(buf)-k]
		if c < utf8.RuneSelf {
			break
		}
		if utf8.RuneStart(c) {
			if !utf8.FullRune(buf[len(buf)-k:]) {
				tail = k
			}
			break
		}
	}
	if tail > 0 {
		w.held = append([]byte(nil), buf[len(buf)-tail:]...)
		buf = buf[:len(buf)-tail]
	}
	if len(buf) == 0 {
		return len(p), nil
	}
	if _, err := w.w.Write(EscapeJSON(buf)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes a held incomplete rune, escaped.
func (w *Writer) Flush() error {
	if len(w.held) == 0 {
		return nil
	}
	held := w.held
	w.held = nil
	_, err := w.w.Write(EscapeJSON(held))
	return err
}
