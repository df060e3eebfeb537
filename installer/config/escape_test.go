package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"airlock.dev/airlock/installer/termtext"
)

// FuzzProblemText checks that whatever an answer file holds, every problem
// validate prints is one line with nothing raw for the terminal in it.
func FuzzProblemText(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/problems/escape-*.yaml")
	if len(seeds) == 0 {
		f.Fatal("no testdata/problems/escape-*.yaml seeds")
	}
	for _, file := range seeds {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add("answers.yaml", data)
	}
	f.Add("a\x1b[2J\u202e.yaml", []byte("site: {\"\\e]0;x\\a\": 1, name: \"\\u2066\\N\\r\"}\nmachines: [{name: \"\\x9b\", match: {serials: [\"\\0\"]}}]\n"))
	f.Add("raw.yaml", []byte("site:\n  name: \x1b]8;;http://x/\x1b\\\xff\u202e\n"))
	f.Fuzz(func(t *testing.T, file string, data []byte) {
		a, src, problems := Parse(file, data)
		if _, parsed := src.Positions[""]; parsed {
			problems = append(problems, a.Validate(src)...)
		}
		for _, p := range problems {
			s := p.String()
			if i := termtext.FindUnsafe(s); i >= 0 || strings.ContainsAny(s, "\n\t") {
				t.Fatalf("problem printed with a raw rune (at %d) or a line break: %q", i, s)
			}
		}
	})
}
