package termtext

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// hostile are strings an attacker would put in a serial, a rule name or a
// bundle's metadata to act on the operator's terminal or to hide text.
var hostile = []string{
	"\x1b]0;pwned\x07", // OSC: set the window title
	"\x1b[2J\x1b[H",    // CSI: clear the screen
	"\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\", // OSC 8 hyperlink
	"\x9b31m",                                 // C1 CSI as one byte (invalid UTF-8)
	"\u009b31m",                               // C1 CSI as a rune
	"\u0085next line",                         // C1 NEL
	"admin\u202etxt.exe",                      // right-to-left override
	"\u2066isolated\u2069\u2067\u2068",        // bidi isolates
	"\u202a\u202b\u202c\u202d\u200e\u200f",    // embeddings, marks
	"zero\u200bwidth\u200c\u200d\u2060\ufeff", // zero-width characters
	"nul\x00byte",
	"ok\rFAKE", // carriage return overwrite
	"del\x7f",
	"line\u2028para\u2029",
	"\xff\xfe invalid",
	"tag\U000e0041\U000e007f",
	"filler\u3164\u115f",
	"soft\u00adhyphen",
}

func TestUnsafeCoversEveryControlFormatAndSeparatorRune(t *testing.T) {
	categories := []*unicode.RangeTable{unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp, unicode.Co, unicode.Cs}
	for r := rune(0); r <= unicode.MaxRune; r++ {
		want := unicode.In(r, categories...) ||
			(r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) || r == 0x200e || r == 0x200f
		if want && !Unsafe(r) {
			t.Errorf("Unsafe(%U) = false, want true", r)
		}
		if r >= 0x20 && r < 0x7f && Unsafe(r) {
			t.Errorf("Unsafe(%q) = true for printable ASCII", r)
		}
	}
}

func TestEscapeHostile(t *testing.T) {
	for _, s := range hostile {
		for name, got := range map[string]string{"Escape": Escape(s), "EscapeLines": EscapeLines(s), "Quote": Quote(s)} {
			if i := FindUnsafe(got); i >= 0 {
				t.Errorf("%s(%q) = %q: raw rune at %d", name, s, got, i)
			}
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"\x1b]0;pwned\x07", `\x1b]0;pwned\a`},
		{"admin\u202etxt", `admin\u202etxt`},
		{"a\nb\tc\rd", `a\nb\tc\rd`},
		{"\xff", `\xff`},
		{"\u0085", `\u0085`},
		{"\U000e0041", `\U000e0041`},
		{`back\slash "q"`, `back\slash "q"`},
		{"rack-7 Ünïcödé 机架", "rack-7 Ünïcödé 机架"},
	} {
		if got := Escape(tc.in); got != tc.want {
			t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got, want := EscapeLines("one\ntwo\tx\r\x1b[2J"), "one\ntwo\tx\\r\\x1b[2J"; got != want {
		t.Errorf("EscapeLines = %q, want %q", got, want)
	}
	if got, want := Quote("a\"b\\c\u202e"), `"a\"b\\c\u202e"`; got != want {
		t.Errorf("Quote = %q, want %q", got, want)
	}
}

func TestPrintableTextUnchanged(t *testing.T) {
	for _, s := range []string{"", "node-01", "rack 7/port 12", `C:\path "x"`, "Ünïcödé 机架 ✓", "ملف", "e\u0301"} {
		if Escape(s) != s || EscapeLines(s) != s || FindUnsafe(s) != -1 {
			t.Errorf("printable %q changed: Escape %q, EscapeLines %q, FindUnsafe %d", s, Escape(s), EscapeLines(s), FindUnsafe(s))
		}
		if b := []byte(strconv.Quote(s)); !bytes.Equal(EscapeJSON(b), b) {
			t.Errorf("EscapeJSON changed %s", b)
		}
	}
}

func TestEscapeJSONKeepsTheValue(t *testing.T) {
	v := map[string]any{"serial": hostile, "nested": map[string]string{"\u202ekey": "\x1b[2J"}}
	raw, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if FindUnsafe(string(raw)) < 0 {
		t.Fatal("encoding/json escaped everything: the test shows nothing")
	}
	esc := EscapeJSON(raw)
	if i := FindUnsafe(string(esc)); i >= 0 {
		t.Fatalf("raw rune left at %d: %q", i, esc[i:])
	}
	var a, b any
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(esc, &b); err != nil {
		t.Fatalf("escaped JSON does not parse: %v\n%s", err, esc)
	}
	ra, _ := json.Marshal(a)
	rb, _ := json.Marshal(b)
	if !bytes.Equal(ra, rb) {
		t.Errorf("value changed:\n%s\n%s", ra, rb)
	}
	if !bytes.Contains(esc, []byte("\n  ")) {
		t.Errorf("indentation lost: %s", esc)
	}
}

func TestWriterSplitsRunesAcrossWrites(t *testing.T) {
	s := strings.Join(hostile, "\n") + "\u202e"
	want := EscapeJSON([]byte(s))
	for chunk := 1; chunk <= 5; chunk++ {
		var out bytes.Buffer
		w := NewWriter(&out)
		for i := 0; i < len(s); i += chunk {
			if n, err := w.Write([]byte(s[i:min(len(s), i+chunk)])); err != nil || n != min(len(s), i+chunk)-i {
				t.Fatalf("Write = %d, %v", n, err)
			}
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Errorf("chunks of %d: %q, want %q", chunk, out.Bytes(), want)
		}
	}
	var out bytes.Buffer
	w := NewWriter(&out)
	w.Write([]byte("cut \xe2\x80"))
	w.Flush()
	if got := out.String(); got != `cut \ufffd\ufffd` {
		t.Errorf("incomplete rune flushed as %q", got)
	}
}

func FuzzEscape(f *testing.F) {
	for _, s := range hostile {
		f.Add(s)
	}
	f.Add("plain text")
	f.Fuzz(func(t *testing.T, s string) {
		e, l, q := Escape(s), EscapeLines(s), Quote(s)
		for name, got := range map[string]string{"Escape": e, "EscapeLines": l, "Quote": q} {
			if i := FindUnsafe(got); i >= 0 {
				t.Fatalf("%s(%q) = %q: raw rune at %d", name, s, got, i)
			}
		}
		if strings.ContainsAny(e, "\n\t") || strings.ContainsRune(l, '\r') {
			t.Fatalf("layout left in Escape %q or \\r in EscapeLines %q", e, l)
		}
		if back, err := strconv.Unquote(q); err != nil || back != s {
			t.Fatalf("Quote(%q) = %s does not unquote back: %q, %v", s, q, back, err)
		}
		if FindUnsafe(s) < 0 && !strings.ContainsAny(s, "\n\t") && (e != s || l != s) {
			t.Fatalf("safe %q changed: %q, %q", s, e, l)
		}
		raw, _ := json.Marshal(s)
		esc := EscapeJSON(raw)
		var back string
		if err := json.Unmarshal(esc, &back); err != nil || FindUnsafe(string(esc)) >= 0 {
			t.Fatalf("EscapeJSON(%s) = %s: %v", raw, esc, err)
		}
		if want := strings.ToValidUTF8(s, "\ufffd"); utf8.ValidString(s) && back != want {
			t.Fatalf("EscapeJSON changed %q to %q", s, back)
		}
		var out bytes.Buffer
		w := NewWriter(&out)
		for i := 0; i < len(s); i += 3 {
			w.Write([]byte(s[i:min(len(s), i+3)]))
		}
		w.Flush()
		if i := FindUnsafe(out.String()); i >= 0 {
			t.Fatalf("Writer let a raw rune through at %d: %q", i, out.String())
		}
		if utf8.ValidString(s) && !bytes.Equal(out.Bytes(), EscapeJSON([]byte(s))) {
			t.Fatalf("Writer in pieces %q, EscapeJSON %q", out.Bytes(), EscapeJSON([]byte(s)))
		}
	})
}
