package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/termtext"
)

// answersFlag adds the required -f FILE flag.
func answersFlag(cmd *cobra.Command) *string {
	file := new(string)
	cmd.Flags().StringVarP(file, "file", "f", "", "answer file (YAML)")
	_ = cmd.MarkFlagRequired("file")
	_ = cmd.MarkFlagFilename("file", "yaml", "yml")
	return file
}

// validation is what validate prints with -o json|yaml.
type validation struct {
	File     string          `json:"file"`
	Valid    bool            `json:"valid"`
	Errors   config.Problems `json:"errors"`
	Warnings config.Problems `json:"warnings"`
}

// loadAnswers reads and validates an answer file, printing its problems.
// It returns the answers when they are valid, and an exit error otherwise.
func loadAnswers(w io.Writer, file string) (*config.Answers, error) {
	a, problems, err := config.Load(file)
	if err != nil {
		return nil, err
	}
	for _, p := range problems {
		fmt.Fprintln(w, p)
	}
	if errs := problems.Errors(); len(errs) > 0 {
		fmt.Fprintf(w, "%s: %s; fix them and run airlock validate -f %s\n", termtext.Escape(file), countProblems(problems), termtext.Escape(file))
		return nil, &exitError{code: 1}
	}
	return a, nil
}

func countProblems(ps config.Problems) string {
	e, w := len(ps.Errors()), len(ps.Warnings())
	return fmt.Sprintf("%d %s, %d %s", e, plural(e, "error", "errors"), w, plural(w, "warning", "warnings"))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func newValidateCommand(g *globals) *cobra.Command {
	var file, output *string
	cmd := &cobra.Command{
		Use:   "validate -f FILE",
		Short: "Check an answer file and report every problem (FILE:LINE:COL: path: message)",
		Long: `Check an answer file strictly: YAML syntax, unknown fields, wrong types and
the semantic checks (ranges, overlaps, duplicates, rules that can never match).
Every problem is reported at once. Exit status 0 when valid (warnings are
printed but allowed), 1 when not.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(*output); err != nil {
				return err
			}
			_, problems, err := config.Load(*file)
			if err != nil {
				return err
			}
			v := validation{File: *file, Valid: problems.Err() == nil, Errors: problems.Errors(), Warnings: problems.Warnings()}
			if v.Errors == nil {
				v.Errors = config.Problems{}
			}
			if v.Warnings == nil {
				v.Warnings = config.Problems{}
			}
			err = render(g.streams.Out, *output, v, func(w io.Writer) error {
				for _, p := range problems {
					fmt.Fprintln(w, p)
				}
				if v.Valid {
					fmt.Fprintf(w, "%s: valid (%s)\n", termtext.Escape(*file), countProblems(problems))
				} else {
					fmt.Fprintf(w, "%s: invalid (%s)\n", termtext.Escape(*file), countProblems(problems))
				}
				return nil
			})
			if err != nil {
				return err
			}
			if !v.Valid {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	file = answersFlag(cmd)
	output = outputFlag(cmd)
	return cmd
}
