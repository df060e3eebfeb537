package build

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"airlock.dev/airlock/installer/termtext"
)

// A chart's name and a registry's error come from outside: progress
// prints them escaped, one line each.
func TestProgressEscapesNames(t *testing.T) {
	for _, tty := range []bool{false, true} {
		var buf bytes.Buffer
		p := newProgress(&buf, tty)
		p.linef("chart %s %s: %d images when rendered", "evil\x1b]0;pwned\x07", "1.0\u202e\n2.0", 3)
		p.linef("blob %s: %v", "sha256:ab", errors.New("registry says \x1b[2J\r\u009b"))
		out := strings.ReplaceAll(buf.String(), "\r\x1b[K", "") // progress's own line rewriting
		if i := termtext.FindUnsafe(out); i >= 0 {
			t.Errorf("tty %v: raw rune at %d: %q", tty, i, out)
		}
		if want := "chart evil\\x1b]0;pwned\\a 1.0\\u202e\\n2.0: 3 images when rendered\n"; !strings.Contains(out, want) || strings.Count(out, "\n") != 2 {
			t.Errorf("tty %v: got %q, want two lines with %q", tty, out, want)
		}
	}
}
