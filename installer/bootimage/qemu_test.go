package bootimage

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/installer/lab/testkit"
	"airlock.dev/airlock/installer/pki"
	"airlock.dev/airlock/services/agentapi"
	"airlock.dev/airlock/services/agentapi/lldp"
)

var captureRegistration = flag.String("capture-registration", "", "write the registration the booted agent sent to this file (a fixture for services/agentapi)")

// TestBootInQEMU builds the image from Debian's cloud kernel modules and
// boots it in QEMU (TCG, -kernel/-initrd) on a tap inside a test
// namespace, with busybox udhcpd, an LLDP sender and the agent API over
// TLS with a certificate of airlock's CA (the one the image carries), and
// waits for the agent to register its inventory.
func TestBootInQEMU(t *testing.T) {
	qemu := netns.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	busybox := netns.RequireTool(t, "busybox", "busybox-static")
	kernel, modules := testkit.CloudKernel(t)
	dir := t.TempDir()
	ca, err := pki.LoadOrCreate(dir, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := ca.Serving(dir, []netip.Addr{netip.MustParseAddr("10.98.0.1")}, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	for _, comp := range []string{Gzip, Zstd} {
		t.Run(comp, func(t *testing.T) {
			var img bytes.Buffer
			rep, err := Build(&img, Options{Agent: readAgent(t), CACert: ca.CertPEM, ModulesDir: modules, Compression: comp})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("image %s: %d bytes, %d modules, built in %v, missing %v", comp, rep.Bytes, len(rep.Modules), rep.Builtin, rep.Missing)
			initrd := filepath.Join(dir, "initrd."+comp)
			if err := os.WriteFile(initrd, img.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			bootOnce(t, qemu, busybox, kernel, initrd, cert)
		})
	}
}

func bootOnce(t *testing.T, qemu, busybox, kernel, initrd string, cert tls.Certificate) {
	dir := t.TempDir()
	ns := netns.NewTest(t, "al")
	if err := ns.AddBridge("br0"); err != nil {
		t.Fatal(err)
	}
	ns.MustAddr(t, "br0", "10.98.0.1/24")
	if err := ns.AddTap("tap0", "br0"); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	conf := fmt.Sprintf("interface br0\nstart 10.98.0.100\nend 10.98.0.150\noption subnet 255.255.255.0\nlease_file %s\npidfile %s\n",
		filepath.Join(dir, "leases"), filepath.Join(dir, "udhcpd.pid"))
	os.WriteFile(filepath.Join(dir, "udhcpd.conf"), []byte(conf), 0o644)
	os.WriteFile(filepath.Join(dir, "leases"), nil, 0o644)
	udhcpd := ns.Command(ctx, busybox, "udhcpd", "-f", filepath.Join(dir, "udhcpd.conf"))
	if err := udhcpd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = udhcpd.Process.Kill(); _ = udhcpd.Wait() })

	logs := &testkit.Buffer{}
	backend := agentapi.NewMemBackend(2)
	tok, _ := agentapi.NewToken(nil)
	backend.Issue(tok)
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", "10.98.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(agentapi.Prefix, agentapi.NewHandler(backend, slog.New(slog.NewTextHandler(logs, nil))))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(tls.NewListener(ln, pki.ServerConfig(cert)))
	t.Cleanup(func() { srv.Close() })

	frame, _ := lldp.Encode(lldp.Frame{Source: net.HardwareAddr{2, 0, 0, 0, 0xa, 1}, ChassisID: "02:00:00:00:0a:01",
		PortID: "Eth1/7", SystemName: "rack-a-tor", PortDescription: "Ethernet1/7"})
	go func() {
		for ctx.Err() == nil {
			_ = ns.Do(func() error { return lldp.Send("tap0", frame) })
			time.Sleep(time.Second)
		}
	}()

	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 2<<30); err != nil { // sparse 2 GiB
		t.Fatal(err)
	}
	serial := filepath.Join(dir, "serial.log")
	appendLine := fmt.Sprintf("console=ttyS0 quiet panic=-1 no_timer_check airlock.url=http://%s airlock.api=https://%s airlock.token=%s airlock.lldp=2s", ln.Addr(), ln.Addr(), tok)
	args := []string{
		"-accel", "tcg", "-machine", "pc", "-m", "512", "-smp", "1", "-nodefaults", "-no-user-config",
		"-display", "none", "-serial", "file:" + serial, "-no-reboot",
		"-kernel", kernel, "-initrd", initrd, "-append", appendLine,
		"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=52:54:00:a1:00:01", "-device", "virtio-rng-pci",
		"-drive", "file=" + disk + ",if=virtio,format=raw",
		"-smbios", "type=1,manufacturer=airlock-lab,product=lab-node,serial=LAB-A-01,uuid=8a9f1c2e-0000-4000-8000-000000000001",
		"-smbios", "type=3,asset=asset-a-01",
	}
	start := time.Now()
	vm := ns.Command(ctx, qemu, args...)
	var qout testkit.Buffer
	vm.Stdout, vm.Stderr = &qout, &qout
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = vm.Process.Kill(); _ = vm.Wait() })

	for {
		ms := backend.Machines()
		if len(ms) == 1 && ms[0].Heartbeats >= 1 {
			m := ms[0]
			elapsed := time.Since(start)
			inv := m.Inventory
			t.Logf("QEMU start to registration %s, to first heartbeat %s; system %+v; disks %+v; nics %+v", m.Registered.Sub(start).Round(time.Millisecond), elapsed.Round(time.Millisecond), inv.System, inv.Disks, inv.NICs)
			if inv.System.Serial != "LAB-A-01" || inv.System.UUID != "8a9f1c2e-0000-4000-8000-000000000001" || inv.System.ChassisAssetTag != "asset-a-01" {
				t.Errorf("system = %+v", inv.System)
			}
			if len(inv.Disks) != 1 || inv.Disks[0].SizeBytes != 2<<30 {
				t.Errorf("disks = %+v", inv.Disks)
			}
			if len(inv.NICs) != 1 || inv.NICs[0].MAC != "52:54:00:a1:00:01" || inv.NICs[0].Driver != "virtio_net" || inv.NICs[0].LLDP == nil ||
				inv.NICs[0].LLDP.SystemName != "rack-a-tor" || inv.NICs[0].LLDP.PortID != "Eth1/7" {
				t.Errorf("nics = %+v lldp %+v", inv.NICs, inv.NICs[0].LLDP)
			}
			if *captureRegistration != "" {
				data, _ := json.MarshalIndent(m.Registration, "", "  ")
				if err := os.WriteFile(*captureRegistration, append(data, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if m.Registration.BootMAC != "52:54:00:a1:00:01" {
				t.Errorf("boot MAC %s", m.Registration.BootMAC)
			}
			break
		}
		if vm.ProcessState != nil || ctx.Err() != nil {
			out, _ := os.ReadFile(serial)
			t.Fatalf("no registration after %s\nqemu: %s\nserial:\n%s\nserver log:\n%s", time.Since(start), qout.String(), out, logs)
		}
		select {
		case <-backend.Changed():
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
		}
	}
	if t.Failed() {
		out, _ := os.ReadFile(serial)
		t.Logf("serial:\n%s", out)
	}
}

// readAgent builds the agent and returns the binary.
func readAgent(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile(testkit.BuildAgent(t))
	if err != nil {
		t.Fatal(err)
	}
	return data
}
