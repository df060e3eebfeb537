// Command airlock-bootimage builds the discovery initramfs from an agent
// binary, a kernel module tree and airlock's CA certificate (STATE/ca.pem,
// the only certificate the agent will trust), for make targets and tests
// that need the image without the airlock CLI:
//
//	airlock-bootimage -agent airlock-agent -ca /var/lib/airlock/ca.pem -modules /lib/modules/6.1.0-56-cloud-amd64 -o initrd.img
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"airlock.dev/airlock/installer/bootimage"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "airlock-bootimage:", err)
		os.Exit(1)
	}
}

func run() error {
	agentPath := flag.String("agent", "", "static airlock-agent binary (becomes /init)")
	modules := flag.String("modules", "", "kernel module tree with modules.dep, e.g. /lib/modules/RELEASE")
	out := flag.String("o", "initrd.img", "output file")
	comp := flag.String("compress", bootimage.Gzip, "gzip, zstd or none")
	caPath := flag.String("ca", "", "airlock's CA certificate (PEM; airlock keeps it as STATE/ca.pem)")
	flag.Parse()
	if *agentPath == "" {
		return fmt.Errorf("-agent is required")
	}
	if *caPath == "" {
		return fmt.Errorf("-ca is required: the agent trusts only airlock's CA (STATE/ca.pem)")
	}
	ca, err := os.ReadFile(*caPath)
	if err != nil {
		return err
	}
	agent, err := os.ReadFile(*agentPath)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if _, err := bootimage.Build(&buf, bootimage.Options{Agent: agent, CACert: ca, ModulesDir: *modules, Compression: *comp, Log: log}); err != nil {
		return err
	}
	return os.WriteFile(*out, buf.Bytes(), 0o644)
}
