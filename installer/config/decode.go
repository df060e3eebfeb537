package config

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// MaxFileBytes bounds what Decode parses and Load reads: answer files are
// hand-written and small (a rack plan of five thousand machines, one line
// each, fits in half of it), so anything larger is a mistake or an attack
// on the parser. The bound also bounds the work: a YAML node costs the
// parser a few hundred bytes, so the worst file under it is parsed and
// validated in well under a second and 200 MB (TestWorstCaseFilesAreCheap).
const MaxFileBytes = 512 << 10

// Alias expansion ("billion laughs") is bounded by what the aliases expand
// to, not by how many there are: every node decoded through an alias, and
// the bytes of every scalar among them, count against these budgets.
const (
	maxAliasNodes = 20_000
	maxAliasBytes = 256 << 10
)

// maxDepth bounds how deeply values nest: an answer file's deepest field
// is a few levels down and Helm values rarely pass twenty, and each level
// lengthens the path every problem carries.
const maxDepth = 64

// maxKeptProblems bounds the problems one decode or validation keeps in
// memory; the rest are counted. Load reports fewer still (MaxReported).
const maxKeptProblems = 1000

// Pos is a place in a source file (1-based line and column).
type Pos struct {
	Line, Col int
}

// Positions maps field paths ("network.dynamicRange.start",
// "machines[2].match.macs[0]") to where their values were written.
type Positions map[string]Pos

// Lookup finds the position of path, or of its nearest written ancestor
// when the field itself was absent (a missing field is reported where its
// parent is).
func (p Positions) Lookup(path string) (Pos, bool) {
	for path != "" {
		if pos, ok := p[path]; ok {
			return pos, true
		}
		path = parentPath(path)
	}
	pos, ok := p[""]
	return pos, ok
}

func parentPath(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// Decode strictly decodes one YAML document into v (a pointer to a struct
// whose fields carry `yaml` tags). Unknown fields, wrong types, duplicate
// keys and syntax errors are all problems; decoding goes on after each so
// that every problem is reported at once. Fields absent from the document
// keep the values v already had, so callers decode into defaults.
//
// Types implementing encoding.TextUnmarshaler (netip.Addr, netip.Prefix,
// Quantity, Duration) are decoded from scalars, and their parse errors are
// reported at the scalar.
func Decode(file string, data []byte, v any) (Positions, Problems) {
	d := decodeDocument(file, data, v)
	return d.pos, d.result()
}

// decodeDocument is Decode, keeping the decoder for what it learnt besides
// positions and problems (which paths failed).
func decodeDocument(file string, data []byte, v any) *decoder {
	d := &decoder{file: file, pos: Positions{}, failed: map[string]bool{}, types: map[reflect.Type]map[string]fieldInfo{}}
	d.decodeInto(data, v)
	return d
}

func (d *decoder) decodeInto(data []byte, v any) {
	file := d.file
	if len(data) > MaxFileBytes {
		d.addf(Pos{1, 1}, "", "file is %d bytes, more than the %d allowed for an answer file", len(data), MaxFileBytes)
		return
	}
	data = d.sanitize(data)
	root, err := parseDocument(data)
	if err != nil {
		d.add(syntaxProblem(file, data, err))
		return
	}
	if root == nil {
		d.addf(Pos{1, 1}, "", "the file is empty")
		return
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		// "---" or "~" alone: a document without settings. The parser
		// places such a node after the marker, which may be past the
		// file's last line.
		d.addf(Pos{1, 1}, "", "the file holds an empty document: no settings")
		return
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		panic("config.Decode: v must be a non-nil pointer")
	}
	d.pos[""] = Pos{root.Line, root.Column}
	d.decode(root, rv.Elem(), "")
	if d.overBudget {
		// What was decoded is a truncated fragment: checking it would
		// only bury the one problem that matters.
		delete(d.pos, "")
	}
}

// sanitize reports every character a YAML stream may not hold (control
// characters, invalid UTF-8) at its own line and column, and returns data
// with each replaced by a space, so that parsing goes on and the rest of the
// file is checked too: one NUL pasted into a serial does not hide every
// other problem. Columns stay where they were (one space per character,
// one per invalid byte); a space changes the structure least. Input in
// UTF-16 (with its byte order mark) is left to the parser.
func (d *decoder) sanitize(data []byte) []byte {
	if bytes.HasPrefix(data, []byte{0xfe, 0xff}) || bytes.HasPrefix(data, []byte{0xff, 0xfe}) {
		return data
	}
	var out []byte    // allocated at the first bad character
	line, col := 1, 1 // of data[off], counted as we go: linear in the file
	for off := 0; off < len(data); {
		if b := lineBreakAt(data[off:]); b > 0 {
			if out != nil {
				out = append(out, data[off:off+b]...)
			}
			off += b
			line, col = line+1, 1
			continue
		}
		r, size := utf8.DecodeRune(data[off:])
		invalid := r == utf8.RuneError && size <= 1
		if !invalid && !forbiddenInYAML(r, size) {
			if out != nil {
				out = append(out, data[off:off+size]...)
			}
			off += size
			col++
			continue
		}
		if out == nil {
			out = append(make([]byte, 0, len(data)), data[:off]...)
		}
		at := Pos{line, col}
		if d.full() {
			d.omitted.errors++
		} else if invalid {
			d.addf(at, "", "YAML syntax: invalid UTF-8 (byte 0x%02x); save the file as UTF-8", data[off])
		} else {
			d.addf(at, "", "YAML syntax: the control character %U is not allowed in YAML", r)
		}
		out = append(out, ' ')
		off += size
		col++
	}
	if out == nil {
		return data
	}
	return out
}

// parseDocument returns the single document node's content, or nil for an
// empty input. A second document in the stream is an error: an answer file
// describes one installation.
func parseDocument(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &secondDocError{line: extra.Line}
	} else if !errors.Is(err, io.EOF) {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	return doc.Content[0], nil
}

type secondDocError struct{ line int }

func (e *secondDocError) Error() string {
	return fmt.Sprintf("yaml: line %d: a second YAML document; an answer file holds exactly one", e.line)
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxProblem turns a YAML parser error into a positioned problem. The
// parser reports only a line; the column given is that of the first
// non-blank character on the line, which is where an editor should jump.
func syntaxProblem(file string, data []byte, err error) Problem {
	msg := err.Error()
	line := 1
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		if n, convErr := strconv.Atoi(m[1]); convErr == nil {
			line = n
		}
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	lines := yamlLines(data)
	if line > len(lines) {
		line = len(lines)
	}
	if line < 1 {
		line = 1
	}
	col := 1
	if line <= len(lines) {
		text := lines[line-1]
		col = len(text) - len(bytes.TrimLeft(text, " \t")) + 1
	}
	// Some errors come without a place (a control character, invalid
	// UTF-8, an undefined alias) or at the line before the one at fault
	// (a tab): find the offending byte.
	if off, hint := locateSyntaxError(data, msg, line); off >= 0 {
		line, col = position(data, off)
		msg += hint
	}
	return Problem{File: file, Line: line, Col: col, Message: "YAML syntax: " + msg}
}

var unknownAnchorRE = regexp.MustCompile(`unknown anchor '(.*)' referenced`)

// locateSyntaxError returns the offset in data of what msg complains
// about, and a few words to add to msg, or -1.
func locateSyntaxError(data []byte, msg string, line int) (int, string) {
	switch {
	case strings.Contains(msg, "control characters are not allowed"):
		for off := 0; off < len(data); {
			r, size := utf8.DecodeRune(data[off:])
			if forbiddenInYAML(r, size) {
				return off, fmt.Sprintf(" (%U here)", r)
			}
			off += size
		}
	case strings.Contains(msg, "UTF-8"):
		for off := 0; off < len(data); {
			r, size := utf8.DecodeRune(data[off:])
			if r == utf8.RuneError && size <= 1 {
				return off, fmt.Sprintf(" (byte 0x%02x here)", data[off])
			}
			off += size
		}
	case unknownAnchorRE.MatchString(msg):
		name := []byte("*" + unknownAnchorRE.FindStringSubmatch(msg)[1])
		for off := 0; ; {
			i := bytes.Index(data[off:], name)
			if i < 0 {
				break
			}
			end := off + i + len(name)
			if end == len(data) || bytes.IndexByte([]byte(" \t\r\n,]}#"), data[end]) >= 0 {
				return off + i, ""
			}
			off = end
		}
	case strings.Contains(msg, "tab character") || strings.Contains(msg, "cannot start any token"):
		// The parser names the line before the tab, or the tab's own.
		lines := yamlLines(data)
		for i := max(line-1, 0); i < len(lines) && i < line+1; i++ {
			indent := lines[i][:len(lines[i])-len(bytes.TrimLeft(lines[i], " \t"))]
			if t := bytes.IndexByte(indent, '\t'); t >= 0 {
				return lineOffset(data, i) + t, "; indent with spaces"
			}
		}
	}
	return -1, ""
}

// forbiddenInYAML reports the characters a YAML stream may not hold (the
// C0 and C1 controls but tab, line feed, carriage return and NEL; DEL; the
// non-characters U+FFFE and U+FFFF).
func forbiddenInYAML(r rune, size int) bool {
	switch {
	case r == utf8.RuneError && size <= 1:
		return false // invalid UTF-8: another error
	case r == '\t' || r == '\n' || r == '\r' || r == 0x85:
		return false
	case r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0xfffe || r == 0xffff:
		return true
	}
	return false
}

// lineOffset returns the offset of the start of the (0-based) line i.
func lineOffset(data []byte, i int) int {
	off := 0
	for n := 0; n < i && off < len(data); {
		if b := lineBreakAt(data[off:]); b > 0 {
			off += b
			n++
			continue
		}
		off++
	}
	return off
}

// position returns the 1-based line and column (in characters) of offset
// off in data, counting lines as YAML does.
func position(data []byte, off int) (line, col int) {
	line, start := 1, 0
	for i := 0; i < off; {
		if b := lineBreakAt(data[i:]); b > 0 {
			i += b
			line++
			start = i
			continue
		}
		i++
	}
	return line, utf8.RuneCount(data[start:off]) + 1
}

// yamlLines splits data into lines where the YAML parser counts them: at
// CR LF, a lone CR or LF, NEL, and the Unicode line and paragraph
// separators. A file saved with CR line endings is numbered as its editor
// numbers it.
func yamlLines(data []byte) [][]byte {
	var lines [][]byte
	start := 0
	for i := 0; i < len(data); {
		n := lineBreakAt(data[i:])
		if n == 0 {
			i++
			continue
		}
		lines = append(lines, data[start:i])
		i += n
		start = i
	}
	return append(lines, data[start:])
}

// lineBreakAt returns the length of the YAML line break that b starts
// with, or 0.
func lineBreakAt(b []byte) int {
	for _, brk := range yamlBreaks {
		if bytes.HasPrefix(b, brk) {
			return len(brk)
		}
	}
	return 0
}

// yamlBreaks are YAML's line breaks, CR LF before a lone CR.
var yamlBreaks = [][]byte{[]byte("\r\n"), []byte("\r"), []byte("\n"), []byte("\u0085"), []byte("\u2028"), []byte("\u2029")}

type decoder struct {
	file     string
	pos      Positions
	problems Problems
	omitted  omitted // problems past maxKeptProblems, counted
	failed   map[string]bool
	types    map[reflect.Type]map[string]fieldInfo
	// Inside an alias (depth > 0), nodes and scalar bytes decoded count
	// against the alias budgets; overBudget stops the expansion.
	depth                  int // nesting, see maxDepth
	aliasDepth             int
	aliasNodes, aliasBytes int
	aliasAt                Pos    // the outermost alias being expanded
	aliasPath              string // and its path
	overBudget             bool
}

func (d *decoder) addf(at Pos, path, format string, args ...any) {
	if d.full() {
		// Counted, not formatted: past the cap a problem costs nothing.
		d.failed[path] = true
		d.omitted.errors++
		return
	}
	d.add(Problem{File: d.file, Line: at.Line, Col: at.Col, Path: path, Message: fmt.Sprintf(format, args...)})
}

// full reports whether no more problems are kept.
func (d *decoder) full() bool { return len(d.problems) >= maxKeptProblems }

func (d *decoder) add(p Problem) {
	d.failed[p.Path] = true
	if len(d.problems) < maxKeptProblems {
		d.problems = append(d.problems, p)
		return
	}
	d.omitted.count(p)
}

// result returns the problems kept, and one more saying how many were not.
func (d *decoder) result() Problems {
	return d.omitted.appendTo(d.problems)
}

var textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	at := Pos{n.Line, n.Column}
	if !d.enter(n, path) {
		return
	}
	if n.Kind == yaml.AliasNode {
		d.aliasDepth++
		d.decode(n.Alias, v, path)
		d.aliasDepth--
		return
	}
	if msg := checkTag(n); msg != "" {
		d.addf(at, path, "%s", msg)
		return
	}
	d.depth++
	defer func() { d.depth-- }()
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		v.Set(reflect.Zero(v.Type()))
		return
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
		return
	}
	if reflect.PointerTo(v.Type()).Implements(textUnmarshalerType) {
		if n.Kind != yaml.ScalarNode {
			d.addf(at, path, "expected %s, got %s", describeType(v.Type()), describeNode(n))
			return
		}
		if n.Tag == "!!int" && !decimalRE.MatchString(n.Value) {
			// A size written 0755 is 755 here and 493 to a YAML 1.1 reader.
			d.addf(at, path, "%s", notDecimal(n.Value))
			return
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			d.addf(at, path, "%s", cleanParseError(err))
		}
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Map:
		d.decodeMap(n, v, path)
	case reflect.Slice:
		d.decodeSlice(n, v, path)
	case reflect.Interface:
		if x, ok := d.value(n, path); ok && x != nil {
			v.Set(reflect.ValueOf(x))
		}
	default:
		d.decodeScalar(n, v, path)
	}
}

// enter counts n against the alias budgets when it is reached through an
// alias, and reports whether decoding may go on into it.
func (d *decoder) enter(n *yaml.Node, path string) bool {
	if d.overBudget {
		return false
	}
	if d.aliasDepth > 0 {
		d.aliasNodes++
		d.aliasBytes += len(n.Value)
		if d.aliasNodes > maxAliasNodes || d.aliasBytes > maxAliasBytes {
			d.overBudget = true
			d.addf(d.aliasAt, d.aliasPath, "YAML aliases expand to more than %d values or %d bytes: an answer file has no use for that many; write the values out", maxAliasNodes, maxAliasBytes)
			return false
		}
	}
	if n.Kind == yaml.AliasNode && n.Alias == nil {
		d.addf(Pos{n.Line, n.Column}, path, "alias *%s refers to no anchor", n.Value)
		return false
	}
	if n.Kind == yaml.AliasNode && d.aliasDepth == 0 {
		d.aliasAt, d.aliasPath = Pos{n.Line, n.Column}, path
	}
	if d.depth >= maxDepth && (n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode) {
		d.overBudget = true
		d.addf(Pos{n.Line, n.Column}, path, "values nest more than %d levels deep", maxDepth)
		return false
	}
	return true
}

// value turns a node into plain values (map[string]any, []any, strings,
// numbers, booleans, nil) as yaml.v3 would, with aliases counted against
// the budgets and every problem placed at its node.
func (d *decoder) value(n *yaml.Node, path string) (any, bool) {
	if !d.enter(n, path) {
		return nil, false
	}
	at := Pos{n.Line, n.Column}
	switch n.Kind {
	case yaml.AliasNode:
		d.aliasDepth++
		defer func() { d.aliasDepth-- }()
		return d.value(n.Alias, path)
	case yaml.ScalarNode:
		if err := checkTag(n); err != "" {
			d.addf(at, path, "%s", err)
			return nil, false
		}
		var x any
		if err := n.Decode(&x); err != nil {
			d.addf(at, path, "%s", strings.TrimPrefix(err.Error(), "yaml: "))
			return nil, false
		}
		return x, true
	case yaml.SequenceNode:
		d.depth++
		defer func() { d.depth-- }()
		out := make([]any, 0, len(n.Content))
		for i, c := range n.Content {
			x, ok := d.value(c, fmt.Sprintf("%s[%d]", path, i))
			if !ok {
				return nil, false
			}
			out = append(out, x)
		}
		return out, true
	case yaml.MappingNode:
		d.depth++
		defer func() { d.depth-- }()
		out := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				d.addf(Pos{k.Line, k.Column}, path, "map keys must be plain strings")
				return nil, false
			}
			if k.Value == "<<" && k.Style == 0 {
				d.addf(Pos{k.Line, k.Column}, path, "merge keys (<<) are not supported; write the fields out")
				return nil, false
			}
			child := joinPath(path, k.Value)
			if _, dup := out[k.Value]; dup {
				d.addf(Pos{k.Line, k.Column}, child, "duplicate key")
				return nil, false
			}
			x, ok := d.value(val, child)
			if !ok {
				return nil, false
			}
			out[k.Value] = x
		}
		return out, true
	}
	d.addf(at, path, "unexpected YAML node")
	return nil, false
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.addf(Pos{n.Line, n.Column}, path, "expected a mapping (%s), got %s", describeType(v.Type()), describeNode(n))
		return
	}
	fields, ok := d.types[v.Type()]
	if !ok {
		fields = yamlFields(v.Type())
		d.types[v.Type()] = fields
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		keyPos := Pos{k.Line, k.Column}
		if k.Kind == yaml.ScalarNode && k.Value == "<<" {
			d.addf(keyPos, path, "merge keys (<<) are not supported; write the fields out")
			continue
		}
		name := k.Value
		child := joinPath(path, name)
		if seen[name] {
			d.addf(keyPos, child, "duplicate field")
			continue
		}
		seen[name] = true
		f, ok := fields[name]
		if !ok {
			hint := ""
			if !d.full() {
				hint = suggest(name, fields)
			}
			d.addf(keyPos, child, "unknown field%s", hint)
			continue
		}
		d.pos[child] = Pos{val.Line, val.Column}
		d.decode(val, v.FieldByIndex(f.index), child)
	}
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.addf(Pos{n.Line, n.Column}, path, "expected a mapping, got %s", describeNode(n))
		return
	}
	if v.Type().Key().Kind() != reflect.String {
		panic("config.Decode: only string-keyed maps are supported")
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.addf(Pos{k.Line, k.Column}, path, "map keys must be plain strings")
			continue
		}
		child := joinPath(path, k.Value)
		if seen[k.Value] {
			d.addf(Pos{k.Line, k.Column}, child, "duplicate key")
			continue
		}
		seen[k.Value] = true
		d.pos[child] = Pos{val.Line, val.Column}
		elem := reflect.New(v.Type().Elem()).Elem()
		if existing := v.MapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key())); existing.IsValid() {
			elem.Set(existing)
		}
		d.decode(val, elem, child)
		v.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), elem)
	}
}

func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.addf(Pos{n.Line, n.Column}, path, "expected a list, got %s", describeNode(n))
		return
	}
	out := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		child := path + "[" + strconv.Itoa(i) + "]"
		d.pos[child] = Pos{item.Line, item.Column}
		d.decode(item, out.Index(i), child)
	}
	v.Set(out)
}

func (d *decoder) decodeScalar(n *yaml.Node, v reflect.Value, path string) {
	at := Pos{n.Line, n.Column}
	if n.Kind != yaml.ScalarNode {
		d.addf(at, path, "expected %s, got %s", describeType(v.Type()), describeNode(n))
		return
	}
	switch v.Kind() {
	case reflect.String:
		if n.Tag != "!!str" && n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) == 0 && n.Tag != "!!int" && n.Tag != "!!float" {
			// Booleans and timestamps written where text is wanted are
			// almost always a mistake (yes/no, on/off); numbers are fine.
			d.addf(at, path, "expected a string, got %s; quote it if you mean the text %q", describeNode(n), n.Value)
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		if n.Tag != "!!bool" {
			d.addf(at, path, "expected true or false, got %s", describeNode(n))
			return
		}
		b, _ := strconv.ParseBool(strings.ToLower(n.Value))
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if n.Tag == "!!int" && !decimalRE.MatchString(n.Value) {
			d.addf(at, path, "%s", notDecimal(n.Value))
			return
		}
		i, err := strconv.ParseInt(n.Value, 10, v.Type().Bits())
		if n.Tag != "!!int" || err != nil {
			d.addf(at, path, "expected an integer, got %s", describeNode(n))
			return
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n.Tag == "!!int" && !decimalRE.MatchString(n.Value) {
			d.addf(at, path, "%s", notDecimal(n.Value))
			return
		}
		u, err := strconv.ParseUint(n.Value, 10, v.Type().Bits())
		if n.Tag != "!!int" || err != nil {
			d.addf(at, path, "expected a non-negative integer of at most %d bits, got %s", v.Type().Bits(), describeNode(n))
			return
		}
		v.SetUint(u)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(n.Value, v.Type().Bits())
		if (n.Tag != "!!float" && n.Tag != "!!int") || err != nil {
			d.addf(at, path, "expected a number, got %s", describeNode(n))
			return
		}
		v.SetFloat(f)
	default:
		panic(fmt.Sprintf("config.Decode: unsupported field kind %s at %s", v.Kind(), path))
	}
}

// decimalRE is how an answer file writes integers: decimal, no leading
// zero, no digit separators.
var decimalRE = regexp.MustCompile(`^[-+]?(0|[1-9][0-9]*)$`)

// notDecimal explains why an integer YAML accepts is refused: YAML 1.1
// reads 0755 as octal and YAML 1.2 as decimal, so a file that means one
// may be read as the other.
func notDecimal(v string) string {
	return fmt.Sprintf("%q is not a decimal integer: write integers in decimal without leading zeros (YAML readers disagree whether 0755 is octal; 0o, 0x and _ forms are not accepted either)", v)
}

// checkTag refuses explicit YAML tags that an answer file has no use for
// or whose value does not parse as the tag says (!!int abc), so that no
// tag is silently ignored.
func checkTag(n *yaml.Node) string {
	if n.Style&yaml.TaggedStyle == 0 {
		return ""
	}
	bad := func(what string) string {
		return fmt.Sprintf("%q is not %s, but it is tagged %s", n.Value, what, n.Tag)
	}
	switch n.Kind {
	case yaml.MappingNode:
		if n.Tag != "!!map" {
			return fmt.Sprintf("the tag %s cannot be used on a mapping", n.Tag)
		}
		return ""
	case yaml.SequenceNode:
		if n.Tag != "!!seq" {
			return fmt.Sprintf("the tag %s cannot be used on a list", n.Tag)
		}
		return ""
	}
	switch n.Tag {
	case "!!str":
	case "!!int":
		if !decimalRE.MatchString(n.Value) {
			return bad("a decimal integer")
		}
	case "!!float":
		if _, err := strconv.ParseFloat(n.Value, 64); err != nil || strings.ContainsAny(n.Value, "_xXoO") {
			return bad("a number")
		}
	case "!!bool":
		if _, err := strconv.ParseBool(strings.ToLower(n.Value)); err != nil || (strings.ToLower(n.Value) != "true" && strings.ToLower(n.Value) != "false") {
			return bad("true or false")
		}
	case "!!null":
		if !slices.Contains([]string{"", "~", "null", "Null", "NULL"}, n.Value) {
			return bad("null")
		}
	case "!!binary", "!!timestamp", "!!merge", "!!set", "!!omap", "!!pairs":
		return fmt.Sprintf("the YAML tag %s is not supported in an answer file; write the value as plain text", n.Tag)
	case "!!map", "!!seq":
		return fmt.Sprintf("the tag %s cannot be used on a scalar", n.Tag)
	default:
		return fmt.Sprintf("unknown YAML tag %s: an answer file uses no tags; remove it", n.Tag)
	}
	return ""
}

func joinPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

type fieldInfo struct {
	index []int
}

// yamlFields lists a struct's fields by their YAML names; embedded structs
// tagged `yaml:",inline"` contribute their fields.
func yamlFields(t reflect.Type) map[string]fieldInfo {
	out := map[string]fieldInfo{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if strings.Contains(opts, "inline") {
			for k, sub := range yamlFields(f.Type) {
				out[k] = fieldInfo{index: append([]int{i}, sub.index...)}
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name[:1]) + f.Name[1:]
		}
		out[name] = fieldInfo{index: []int{i}}
	}
	return out
}

// suggest offers the known field closest to a misspelled one.
func suggest(name string, fields map[string]fieldInfo) string {
	if len(name) > 64 {
		return "" // no field name is that long; and edit distance is quadratic
	}
	best, bestDist := "", 3
	for k := range fields {
		if dist := editDistance(strings.ToLower(name), strings.ToLower(k)); dist < bestDist || (dist == bestDist && k < best) {
			best, bestDist = k, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("; did you mean %q?", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!str":
			return fmt.Sprintf("the string %q", n.Value)
		case "!!int":
			return "the integer " + n.Value
		case "!!float":
			return "the number " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		case "!!null":
			return "null"
		default:
			return fmt.Sprintf("%q", n.Value)
		}
	}
	return "an unexpected YAML node"
}

func describeType(t reflect.Type) string {
	switch t {
	case reflect.TypeFor[netip.Addr]():
		return "an IP address"
	case reflect.TypeFor[netip.Prefix]():
		return "a CIDR like 10.40.0.0/24"
	case reflect.TypeFor[MAC]():
		return "a MAC address"
	case reflect.TypeFor[Quantity]():
		return "a size like 64Gi"
	case reflect.TypeFor[Duration]():
		return "a duration like 1h"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Slice:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping"
	}
	if reflect.PointerTo(t).Implements(textUnmarshalerType) {
		return "a string"
	}
	return t.String()
}

// cleanParseError strips the Go-internal prefixes that netip and friends
// put on their errors, keeping the part a person can act on.
func cleanParseError(err error) string {
	msg := err.Error()
	for _, prefix := range []string{"netip.ParsePrefix(", "ParseAddr(", "netip.ParseAddr("} {
		if strings.HasPrefix(msg, prefix) {
			if i := strings.Index(msg, "): "); i >= 0 {
				return "invalid " + kindOf(prefix) + " " + msg[len(prefix):i] + ": " + msg[i+3:]
			}
		}
	}
	return msg
}

func kindOf(prefix string) string {
	if strings.Contains(prefix, "Prefix") {
		return "CIDR"
	}
	return "IP address"
}
