package cli

import (
	"fmt"
	"io"
	"net/netip"
	"runtime"

	"github.com/spf13/cobra"

	"airlock.dev/airlock/installer/config"
)

func newVersionCommand(g *globals) *cobra.Command {
	var output *string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print airlock's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := struct {
				Version    string `json:"version"`
				GoVersion  string `json:"goVersion"`
				Platform   string `json:"platform"`
				APIVersion string `json:"apiVersion"`
			}{version, runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH, config.APIVersion}
			return render(g.streams.Out, *output, info, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "airlock %s (%s, %s, answer files %s)\n", info.Version, info.GoVersion, info.Platform, info.APIVersion)
				return err
			})
		},
	}
	output = outputFlag(cmd)
	return cmd
}

func newInitCommand(g *globals) *cobra.Command {
	var o config.InitOptions
	var subnet string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Write a commented example answer file to stdout",
		Example: `  airlock init --interface eno1 --subnet 10.40.0.0/24 --mode full > answers.yaml
  airlock validate -f answers.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if subnet != "" {
				p, err := netip.ParsePrefix(subnet)
				if err != nil {
					return fmt.Errorf("--subnet %q: want a CIDR like 10.40.0.0/24", subnet)
				}
				o.Subnet = p
			}
			out, err := config.Example(o)
			if err != nil {
				return fmt.Errorf("init: %w", err)
			}
			_, err = g.streams.Out.Write(out)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Interface, "interface", "", "provisioning NIC (airlock serves DHCP only on a named interface)")
	f.StringVar(&subnet, "subnet", "", "provisioning subnet (default 10.40.0.0/24)")
	f.StringVar(&o.Mode, "mode", "auto", "DHCP mode: auto, full or proxy")
	f.StringVar(&o.Site, "site", "dc1", "site and cluster name")
	f.StringVar(&o.BundleKey, "bundle-key", "", "the bundle's public key file (the builder's site.pub); left out, bundle.publicKey is a placeholder validate warns about")
	_ = cmd.RegisterFlagCompletionFunc("mode", fixedCompletion("auto", "full", "proxy"))
	return cmd
}

func newSchemaCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "schema",
		Short: "Print the answer file's JSON Schema (for editors and yaml-language-server)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := config.Schema()
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(g.streams.Out, "%s\n", s)
			return err
		},
	}
}
