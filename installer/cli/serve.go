package cli

import (
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"airlock.dev/airlock/installer/engine"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/ipxe"
)

func newServeCommand(g *globals) *cobra.Command {
	var (
		file         *string
		iface        string
		bootFiles    string
		image        engine.DiscoveryImage
		httpPort     int
		allowForeign bool
	)
	cmd := &cobra.Command{
		Use:   "serve -f FILE",
		Short: "Serve DHCP, TFTP, HTTP boot and the agent API on the provisioning network",
		Long: `Run the boot services on the answer file's provisioning network until
interrupted: DHCP (full, proxy or auto), TFTP for the iPXE first stage, HTTP
for iPXE scripts, the discovery kernel and boot image, and the agent API that
records discovered machines in the inventory. airlock serve refuses to start
until network.interface names the NIC to serve on.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := loadAnswers(g.streams.Err, *file)
			if err != nil {
				return err
			}
			if iface != "" {
				a.Network.Interface = iface
			}
			var files fs.FS
			if bootFiles != "" {
				if _, err := os.Stat(bootFiles); err != nil {
					return fmt.Errorf("--boot-files: %w", err)
				}
				files = os.DirFS(bootFiles)
			}
			ipxeFS, err := ipxe.FS()
			if err != nil {
				ipxeFS = nil // Serve warns that machines will get no boot file
			}
			st, err := state.Open(g.stateDir)
			if err != nil {
				return err
			}
			defer st.Close()
			return engine.Serve(cmd.Context(), engine.ServeOptions{
				Answers:          a,
				Store:            st,
				StateDir:         g.stateDir,
				IPXE:             ipxeFS,
				Files:            files,
				Image:            image,
				HTTPPort:         httpPort,
				AllowForeignDHCP: allowForeign,
				Log:              g.log,
				Ready: func(s engine.Serving) {
					fmt.Fprintf(g.streams.Err, "airlock: serving on %s (DHCP %s, HTTP %s, TFTP %v); Ctrl-C stops\n", s.Interface, s.Mode, s.HTTP, s.TFTP)
				},
			})
		},
	}
	file = answersFlag(cmd)
	f := cmd.Flags()
	f.StringVar(&iface, "interface", "", "serve on this NIC (overrides network.interface)")
	f.StringVar(&bootFiles, "boot-files", "", "directory served under /files/: the discovery kernel and boot image")
	f.StringVar(&image.Kernel, "kernel", "vmlinuz", "discovery kernel, relative to --boot-files")
	f.StringVar(&image.Initrd, "initrd", "initramfs.img", "discovery boot image, relative to --boot-files")
	f.StringVar(&image.Cmdline, "kernel-args", "console=ttyS0", "extra kernel arguments for the discovery image")
	f.IntVar(&httpPort, "http-port", 8080, "HTTP boot port")
	f.BoolVar(&allowForeign, "allow-foreign-dhcp", false, "DANGEROUS: serve full DHCP although another DHCP server answers on the segment")
	return cmd
}
