// Command airlock-agent is airlock's node agent. In the discovery
// initramfs it runs as /init (PID 1): it mounts the pseudo file systems,
// loads the kernel modules shipped in the image, brings the NICs up, gets
// an address by DHCP and reports to airlock (see package agent). Run by
// hand on a booted machine, it skips the init steps.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"airlock.dev/airlock/installer/agent"
	"airlock.dev/airlock/installer/agent/provision"
	"airlock.dev/airlock/services/agentapi"
)

func main() {
	pid1 := os.Getpid() == 1
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelInfo})).With("agent", "airlock")
	if pid1 {
		defer func() {
			// A panic in PID 1 would panic the kernel; log it and restart
			// the machine instead, which boots the agent afresh.
			if r := recover(); r != nil {
				log.Error("agent panicked; rebooting in 30s", "panic", fmt.Sprint(r))
				time.Sleep(30 * time.Second)
				unix.Sync()
				_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
			}
		}()
		err := initMain(log)
		// PID 1 must never exit: the kernel would panic.
		log.Error("agent stopped", "err", err)
		for {
			time.Sleep(time.Hour)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	err := userMain(ctx, log)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "airlock-agent:", err)
		os.Exit(1)
	}
}

// userMain runs the agent on an already booted machine (for trying it out).
func userMain(ctx context.Context, log *slog.Logger) error {
	fs := flag.NewFlagSet("airlock-agent", flag.ContinueOnError)
	cmdlineFile := fs.String("cmdline", "/proc/cmdline", "file holding the kernel command line with airlock.token=, airlock.url= and airlock.api=")
	caFile := fs.String("ca", agentapi.CACertPath, "airlock's CA certificate (PEM): the only one trusted for airlock.api (airlock keeps it as STATE/ca.pem)")
	root := fs.String("root", "/", "root of the file system to read /sys and /proc from")
	dhcp := fs.String("dhcp", "", "run DHCP on this interface first (normally the network is already up)")
	once := fs.Bool("once", false, "register and exit instead of heartbeating")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	raw, err := os.ReadFile(*cmdlineFile)
	if err != nil {
		return fmt.Errorf("read command line: %w", err)
	}
	cfg, err := agent.ParseCmdline(string(raw))
	if err != nil {
		return err
	}
	if *dhcp != "" {
		l, err := agent.DHCP(ctx, log, []string{*dhcp}, 60*time.Second)
		if err != nil {
			return err
		}
		cfg.BootMAC = l.MAC
	}
	ca, err := agent.ReadCA(*caFile)
	if err != nil {
		return err
	}
	api, err := agent.TLSClient(ca, 15*time.Second)
	if err != nil {
		return err
	}
	if *once {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		return run(ctx, log, cfg, api, *root, nil, cancel)
	}
	return run(ctx, log, cfg, api, *root, nil, nil)
}

func run(ctx context.Context, log *slog.Logger, cfg agent.Config, api *http.Client, root string, onOrder func(context.Context, agentapi.Order, func(done, total uint64)) error, registered func()) error {
	client := agent.NewClient(cfg.API, cfg.Token, api)
	opts := agent.Options{
		Root:     os.DirFS(root),
		Client:   client,
		BootMAC:  cfg.BootMAC,
		LLDPWait: cfg.LLDPWait,
		LLDPLate: cfg.LLDPLate,
		OnOrder:  onOrder,
		Log:      log,
	}
	if registered != nil {
		// -once: stop right after registering.
		opts.Log = log.With()
		inv, err := agent.Gather(ctx, opts)
		if err != nil {
			return err
		}
		reg, err := agent.Registration(inv, cfg.BootMAC)
		if err != nil {
			return err
		}
		out, err := client.Register(ctx, &reg)
		if err != nil {
			return err
		}
		log.Info("registered", "machine", out.MachineID)
		registered()
		return nil
	}
	return agent.Run(ctx, opts)
}

// initMain is the PID 1 path.
func initMain(log *slog.Logger) error {
	start := time.Now()
	if err := agent.MountPseudoFS(); err != nil {
		log.Warn("mount pseudo file systems", "err", err)
	}
	release, err := agent.KernelRelease()
	if err != nil {
		return err
	}
	loaded, err := agent.LoadModules(filepath.Join("/lib/modules", release))
	log.Info("kernel modules", "release", release, "loaded", len(loaded), "modules", loaded, "err", err)
	// On UEFI machines the install adds a boot entry for the installed
	// disk through efivarfs.
	efiVars, err := agent.MountEFIVars()
	if err != nil {
		log.Error("UEFI variables", "err", err)
	} else if efiVars != "" {
		log.Info("booted by UEFI", "efivars", efiVars)
	}

	ctx := context.Background()
	raw, err := agent.Cmdline()
	if err != nil {
		return err
	}
	cfg, cfgErr := agent.ParseCmdline(raw)
	if cfgErr != nil {
		log.Error("kernel command line", "err", cfgErr)
	}

	// NICs appear as their drivers probe: wait up to 10 s for the first.
	var nics []string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if nics, _ = agent.EthernetNICs("/sys/class/net"); len(nics) > 0 {
			break
		}
	}
	if len(nics) == 0 {
		return errors.New("no Ethernet NIC appeared: is its driver in the boot image?")
	}
	if err := agent.LinksUp(nics); err != nil {
		log.Warn("bring links up", "err", err)
	}
	up := agent.WaitCarrier(ctx, "/sys/class/net", nics, 10*time.Second)
	log.Info("links", "nics", nics, "carrier", up, "after", time.Since(start).Round(time.Millisecond))
	if cfgErr != nil {
		return cfgErr
	}
	// airlock's CA, from the boot image airlock assembled: the only
	// certificate the agent trusts for the API and the seed.
	ca, err := agent.ReadCA(agentapi.CACertPath)
	if err != nil {
		return err
	}
	api, err := agent.TLSClient(ca, 15*time.Second)
	if err != nil {
		return err
	}
	seeds, err := agent.TLSClient(ca, 5*time.Minute)
	if err != nil {
		return err
	}
	try := up
	if cfg.BootMAC != nil {
		for _, n := range nics {
			if b, _ := os.ReadFile("/sys/class/net/" + n + "/address"); len(b) > 0 && string(b[:len(b)-1]) == cfg.BootMAC.String() {
				try = []string{n}
			}
		}
	}
	var lease agent.Lease
	for attempt := 1; ; attempt++ {
		lease, err = agent.DHCP(ctx, log, try, 30*time.Second)
		if err == nil {
			break
		}
		log.Warn("DHCP failed; retrying", "attempt", attempt, "err", err)
	}
	if cfg.BootMAC == nil {
		cfg.BootMAC = lease.MAC
	}
	log.Info("network up", "after", time.Since(start).Round(time.Millisecond))
	installer := agent.Installer{
		Host:    provision.Host{SysRoot: "/sys", DevRoot: "/dev"},
		Base:    cfg.URL,
		HTTP:    &http.Client{Timeout: 0}, // an image takes as long as it takes; ctx ends it
		API:     cfg.API,
		APIHTTP: seeds,
		Token:   cfg.Token,
		Log:     log,
		EFIVars: efiVars,
	}
	onOrder := func(ctx context.Context, o agentapi.Order, progress func(done, total uint64)) error {
		switch o.Kind {
		case agentapi.OrderInstall:
			return installer.Run(ctx, o, progress)
		case agentapi.OrderReboot:
			unix.Sync()
			return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
		case agentapi.OrderPowerOff:
			unix.Sync()
			return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		}
		return fmt.Errorf("unknown order kind %q", o.Kind)
	}
	for {
		err := run(ctx, log, cfg, api, "/", onOrder, nil)
		log.Error("agent run ended; restarting in 10s", "err", err)
		time.Sleep(10 * time.Second)
	}
}
