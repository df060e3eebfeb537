package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/agentbin"
	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/engine"
	"airlock.dev/airlock/installer/pki"
)

func newServeCommand(g *globals) *cobra.Command {
	var (
		file         *string
		iface        string
		bootFiles    string
		image        engine.DiscoveryImage
		httpPort     int
		apiPort      int
		allowForeign bool
		bundlePath   string
		bundleKey    string
		bundleTOFU   bool
	)
	cmd := &cobra.Command{
		Use:   "serve -f FILE",
		Short: "Serve DHCP, TFTP, HTTP boot and the agent API on the provisioning network",
		Long: `Run the boot services on the answer file's provisioning network until
interrupted: DHCP (full, proxy or auto), TFTP for the iPXE first stage, HTTP
for iPXE scripts, the discovery kernel and boot image, and the agent API that
records discovered machines in the inventory (over TLS on --api-port, with a
certificate of airlock's own CA, kept as STATE/ca.pem and carried by the
discovery image airlock assembles). airlock serve refuses to start until
network.interface names the NIC to serve on.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := loadAnswers(g.streams.Err, *file)
			if err != nil {
				return err
			}
			if iface != "" {
				a.Network.Interface = iface
			}
			var in engineInputs
			if bootFiles != "" {
				if _, err := os.Stat(bootFiles); err != nil {
					return fmt.Errorf("--boot-files: %w", err)
				}
				in.files, in.image = os.DirFS(bootFiles), image
			}
			if bundlePath != "" {
				a.Bundle.Path = bundlePath
			}
			if bundleKey != "" {
				a.Bundle.PublicKey, a.Bundle.TrustOnFirstUse = bundleKey, false
			} else if bundleTOFU {
				a.Bundle.TrustOnFirstUse = true
			}
			in.httpPort, in.apiPort, in.allowForeign = httpPort, apiPort, allowForeign
			e, closeAll, err := buildEngine(g, a, in)
			if err != nil {
				return err
			}
			defer closeAll()
			return e.Run(cmd.Context(), func(s engine.Serving) {
				fmt.Fprintf(g.streams.Err, "airlock: serving on %s (DHCP %s, HTTP %s, agent API %s, TFTP %v, registry %s); airlock's CA %s has SHA-256 fingerprint %s; Ctrl-C stops\n",
					s.Interface, s.Mode, s.HTTP, s.API, s.TFTP, dash(s.Registry), filepath.Join(g.stateDir, pki.CACertFile), s.CA)
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
	f.IntVar(&apiPort, "api-port", 8443, "agent API port (TLS, with airlock's CA from the state directory)")
	f.StringVar(&bundlePath, "bundle", "", "bundle to serve (overrides bundle.path; default: the one appended to this executable)")
	f.StringVar(&bundleKey, "bundle-key", "", "public key the bundle must be signed with (overrides bundle.publicKey)")
	f.BoolVar(&bundleTOFU, "bundle-trust-on-first-use", false, "trust the key of the first bundle opened in this state directory and refuse any other later (as bundle.trustOnFirstUse)")
	f.BoolVar(&allowForeign, "allow-foreign-dhcp", false, "DANGEROUS: serve full DHCP although another DHCP server answers on the segment")
	return cmd
}

// discoveryFromBundle assembles the discovery image from the bundle's
// kernel package and the agent this airlock carries; no kernel package
// means no discovery image (serve says so).
func discoveryFromBundle(b *bundle.Bundle, g *globals) (fs.FS, engine.DiscoveryImage, error) {
	files, image, err := engine.DiscoveryFromBundle(b, g.stateDir, agentbin.Binary, g.log)
	if errors.Is(err, engine.ErrNoKernelPackage) {
		return nil, engine.DiscoveryImage{}, nil
	}
	return files, image, err
}

// serveBundle opens the answers' bundle, or the one appended to this
// executable when the answers name none. It returns nil (and says so) when
// there is no bundle at all: serve then runs the boot services only.
func serveBundle(cfg config.Bundle, g *globals) (*bundle.Bundle, error) {
	b, err := engine.OpenBundle(cfg, g.stateDir)
	if cfg.Path == "" && errors.Is(err, bundle.ErrNotBundle) {
		g.log.Warn("no bundle: neither bundle.path nor a bundle appended to this executable; serving the boot services without a registry")
		return nil, nil
	}
	if err != nil {
		return nil, err // it names the bundle and what is wrong with it
	}
	logTrust(g, b)
	return b, nil
}

// logTrust says which key signed the bundle and why it is trusted; a key
// trusted on first use is a warning, with its ID to compare.
func logTrust(g *globals, b *bundle.Bundle) {
	if b.Authenticity() == bundle.FirstUse {
		g.log.Warn("bundle key trusted on first use and recorded: compare its ID with the one the bundle's builder gave you; bundles signed by any other key will be refused",
			"bundle", b.Name(), "key", b.Metadata().KeyID, "recorded", filepath.Join(g.stateDir, bundle.PinFileName))
		return
	}
	g.log.Info("bundle opened", "bundle", b.Name(), "key", b.Metadata().KeyID, "authenticity", b.Authenticity().String())
}
