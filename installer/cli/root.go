// Package cli is airlock's command line and its only composition root: it
// reads flags and environment, builds the engine's parts (state store,
// services, bundle) and wires them together. Every command is built by a
// constructor; nothing here is a package-level global.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"airlock.dev/airlock/installer/termtext"
)

// version is set at link time: -ldflags "-X airlock.dev/airlock/installer/cli.version=v0.1.0".
var version = "dev"

// Streams are the command's standard streams.
type Streams struct {
	In       io.Reader
	Out, Err io.Writer
}

// globals are the flags every command shares.
type globals struct {
	streams   Streams
	stateDir  string
	logFormat string
	logLevel  string
	log       *slog.Logger
}

// Execute runs the airlock command line with args and returns its error;
// errors are already printed to stderr when Execute returns, escaped: an
// error may quote a file name, a bundle's metadata or an agent's report.
func Execute(ctx context.Context, args []string, in io.Reader, out, errOut io.Writer) error {
	root := NewRootCommand(Streams{In: in, Out: out, Err: errOut})
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	var exit *exitError
	if err != nil && !errors.As(err, &exit) {
		fmt.Fprintf(errOut, "airlock: %s\n", termtext.EscapeLines(err.Error()))
	}
	return err
}

// exitError ends a command with a code after its output has already said
// what went wrong (validate's problem list, for example).
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// ExitCode maps an error from Execute to a process exit code.
func ExitCode(err error) int {
	var exit *exitError
	var usage *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.code
	case errors.As(err, &usage):
		return 2
	case errors.Is(err, context.Canceled):
		return 130
	default:
		return 1
	}
}

// NewRootCommand builds the whole command tree.
func NewRootCommand(streams Streams) *cobra.Command {
	g := &globals{streams: streams}
	root := &cobra.Command{
		Use:   "airlock",
		Short: "Offline installer for bare-metal Kubernetes",
		Long: `airlock installs a complete Kubernetes platform on bare metal with no internet:
it network-boots the machines, learns their hardware, installs the OS, forms
the cluster and lays down the platform from one signed bundle.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(g.streams.Err, g.logFormat, g.logLevel)
			if err != nil {
				return err
			}
			g.log = log
			return nil
		},
	}
	root.SetIn(streams.In)
	root.SetOut(streams.Out)
	root.SetErr(streams.Err)
	defaultState := os.Getenv("AIRLOCK_STATE")
	if defaultState == "" {
		defaultState = "/var/lib/airlock"
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.stateDir, "state", defaultState, "state directory (env AIRLOCK_STATE)")
	pf.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	_ = root.RegisterFlagCompletionFunc("log-format", fixedCompletion("text", "json"))
	_ = root.RegisterFlagCompletionFunc("log-level", fixedCompletion("debug", "info", "warn", "error"))

	root.AddCommand(
		newVersionCommand(g),
		newInitCommand(g),
		newValidateCommand(g),
		newPlanCommand(g),
		newSchemaCommand(g),
		newInventoryCommand(g),
		newServeCommand(g),
		newInstallCommand(g),
		newStatusCommand(g),
		newDecideCommand(g, true),
		newDecideCommand(g, false),
		newLabCommand(g),
		newBundleCommand(g),
		newKubeconfigCommand(g),
	)
	return root
}

// newLogger builds the CLI's logger. Its handler writes through
// termtext's Writer: slog's text handler quotes most control and format
// runes itself but writes DEL raw, and its JSON handler leaves DEL, C1
// controls, bidi controls and zero-width runes raw; below either, every
// such rune in a message, key, value or error reaches the terminal (or log
// file) as a \u escape, and JSON lines stay valid JSON.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	w = termtext.NewWriter(w)
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}

func fixedCompletion(values ...string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return values, cobra.ShellCompDirectiveNoFileComp
	}
}
