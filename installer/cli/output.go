package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"airlock.dev/airlock/installer/termtext"
)

// outputFlag adds -o text|json|yaml to cmd and returns where it lands.
func outputFlag(cmd *cobra.Command) *string {
	format := new(string)
	cmd.Flags().StringVarP(format, "output", "o", "text", "output format: text, json or yaml")
	_ = cmd.RegisterFlagCompletionFunc("output", fixedCompletion("text", "json", "yaml"))
	return format
}

func checkOutput(format string) error {
	switch format {
	case "text", "json", "yaml":
		return nil
	}
	return fmt.Errorf("--output %q: use text, json or yaml", format)
}

// render writes v as JSON or YAML, or calls text for the text form. Every
// form reaches terminals, so none lets a control, bidi or invisible rune
// through raw: JSON and YAML write them as escapes inside their strings
// (the same values), and the text form passes through termtext's Writer
// behind whatever escaping text does itself.
func render(w io.Writer, format string, v any, text func(io.Writer) error) error {
	switch format {
	case "json":
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			return err
		}
		_, err := w.Write(termtext.EscapeJSON(buf.Bytes()))
		return err
	case "yaml":
		// Through JSON, so both forms use the same field names and omissions.
		raw, err := json.Marshal(v)
		if err != nil {
			return err
		}
		var generic any
		if err := json.Unmarshal(raw, &generic); err != nil {
			return err
		}
		var doc yaml.Node
		if err := doc.Encode(generic); err != nil {
			return err
		}
		quoteUnsafe(&doc)
		var buf bytes.Buffer
		enc := yaml.NewEncoder(&buf)
		enc.SetIndent(2)
		if err := enc.Encode(&doc); err != nil {
			return err
		}
		if err := enc.Close(); err != nil {
			return err
		}
		_, err = w.Write(termtext.EscapeYAML(buf.Bytes()))
		return err
	case "text":
		tw := termtext.NewWriter(w)
		if err := text(tw); err != nil {
			return err
		}
		return tw.Flush()
	}
	return checkOutput(format)
}

// quoteUnsafe double-quotes every string scalar under n that holds a rune
// that must not reach a terminal: double quotes are the only YAML style
// with escapes, which termtext.EscapeYAML then writes.
func quoteUnsafe(n *yaml.Node) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!str" && termtext.FindUnsafe(n.Value) >= 0 {
		n.Style = yaml.DoubleQuotedStyle
	}
	for _, c := range n.Content {
		quoteUnsafe(c)
	}
}
