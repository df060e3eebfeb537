package lab

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/installer/lab/testkit"
	"airlock.dev/airlock/services/agentapi"
)

// bootFiles builds the agent and the discovery image (carrying caPEM, the
// one CA its agent trusts) with the airlock commands (the lab imports no
// other installer package: it boots what they build) and returns Debian's
// cloud kernel and the image.
func bootFiles(t *testing.T, caPEM []byte) (kernel, initrd string) {
	t.Helper()
	kernel, modules := testkit.CloudKernel(t)
	agent := testkit.BuildAgent(t)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	initrd = filepath.Join(t.TempDir(), "initrd.img")
	img := exec.Command("go", "run", "airlock.dev/airlock/installer/bootimage/cmd/airlock-bootimage", "-agent", agent, "-ca", caFile, "-modules", modules, "-o", initrd)
	if out, err := img.CombinedOutput(); err != nil {
		t.Fatalf("build boot image: %v\n%s", err, out)
	}
	return kernel, initrd
}

// testCA is a CA of the test's own, standing for airlock's, and a function
// that signs the agent API's certificate for an address.
func testCA(t *testing.T) (caPEM []byte, issue func(ip string) tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lab test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	issue = func(ip string) tls.Certificate {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "airlock"}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			IPAddresses: []net.IP{net.ParseIP(ip)}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), issue
}

// bootServer is the smallest airlock the lab needs: busybox udhcpd handing
// out an http:// boot file, HTTP serving iPXE scripts (one fresh token per
// boot), the kernel and the initrd, and the agent API over TLS with cert.
type bootServer struct {
	backend *agentapi.MemBackend
	logs    *testkit.Buffer
	url     string
	mu      sync.Mutex
	scripts map[string]time.Time // MAC -> when its script was served
}

func startBootServer(t *testing.T, ctx context.Context, s *State, kernel, initrd string, cert tls.Certificate) *bootServer {
	t.Helper()
	busybox := netns.RequireTool(t, "busybox", "busybox-static")
	ns, err := netns.Open(s.Namespace)
	if err != nil {
		t.Fatal(err)
	}
	ip, _, _ := strings.Cut(s.ServerAddr, "/")
	var ln, apiLn net.Listener
	if err := ns.Do(func() (err error) {
		if ln, err = net.Listen("tcp", ip+":0"); err != nil {
			return err
		}
		apiLn, err = net.Listen("tcp", ip+":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	b := &bootServer{backend: agentapi.NewMemBackend(2), logs: &testkit.Buffer{}, url: "http://" + ln.Addr().String(), scripts: map[string]time.Time{}}
	log := slog.New(slog.NewTextHandler(b.logs, nil))
	apiMux := http.NewServeMux()
	apiMux.Handle(agentapi.Prefix, agentapi.NewHandler(b.backend, log))
	api := &http.Server{Handler: apiMux, ReadHeaderTimeout: 10 * time.Second}
	go api.Serve(tls.NewListener(apiLn, &tls.Config{Certificates: []tls.Certificate{cert}}))
	t.Cleanup(func() { api.Close() })
	mux := http.NewServeMux()
	mux.HandleFunc("GET /boot.ipxe", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "#!ipxe\nchain %s/node.ipxe?mac=${net0/mac}\n", b.url)
	})
	mux.HandleFunc("GET /node.ipxe", func(w http.ResponseWriter, r *http.Request) {
		mac, err := net.ParseMAC(r.URL.Query().Get("mac"))
		if err != nil {
			http.Error(w, "bad mac", http.StatusBadRequest)
			return
		}
		tok, _ := agentapi.NewToken(nil)
		b.backend.Issue(tok)
		b.mu.Lock()
		b.scripts[mac.String()] = time.Now()
		b.mu.Unlock()
		bootif := "01-" + strings.ReplaceAll(mac.String(), ":", "-")
		fmt.Fprintf(w, "#!ipxe\nkernel %s/vmlinuz initrd=initrd console=ttyS0 quiet panic=-1 no_timer_check airlock.url=%s airlock.api=https://%s airlock.token=%s airlock.lldp=2s BOOTIF=%s\ninitrd --name initrd %s/initrd\nboot\n",
			b.url, b.url, apiLn.Addr(), tok, bootif, b.url)
		log.Info("iPXE script served", "mac", mac)
	})
	mux.HandleFunc("GET /vmlinuz", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, kernel) })
	mux.HandleFunc("GET /initrd", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, initrd) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	dir := t.TempDir()
	conf := fmt.Sprintf("interface %s\nstart 10.77.0.100\nend 10.77.0.200\noption subnet 255.255.255.0\nboot_file %s/boot.ipxe\nlease_file %s\npidfile %s\n",
		s.Bridge, b.url, filepath.Join(dir, "leases"), filepath.Join(dir, "pid"))
	os.WriteFile(filepath.Join(dir, "udhcpd.conf"), []byte(conf), 0o644)
	os.WriteFile(filepath.Join(dir, "leases"), nil, 0o644)
	cmd := ns.Command(ctx, busybox, "udhcpd", "-f", filepath.Join(dir, "udhcpd.conf"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return b
}

// TestLabNetworkBoot brings up a BIOS and a UEFI VM in two racks; both
// network-boot through their iPXE ROMs into the discovery image and
// register with serials, MACs, disks and LLDP racks. Down then removes
// everything.
func TestLabNetworkBoot(t *testing.T) {
	netns.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	if _, err := os.Stat("/usr/lib/ipxe/qemu/efi-virtio.rom"); err != nil {
		t.Fatalf("no iPXE ROM for virtio-net: apt-get install ipxe-qemu")
	}
	caPEM, issue := testCA(t)
	kernel, initrd := bootFiles(t, caPEM)
	state := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 170*time.Second)
	defer cancel()
	opts := Options{StateDir: state, Nodes: 2, Racks: 2, Firmware: Mixed, DiskGB: 8, Log: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	s, err := Prepare(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	keep := os.Getenv("AIRLOCK_E2E_KEEP") == "1"
	t.Cleanup(func() {
		if keep && t.Failed() {
			t.Logf("keeping the lab: state in %s, namespace %s; remove with lab.Down", state, s.Namespace)
			return
		}
		if err := Down(state); err != nil {
			t.Errorf("Down: %v", err)
		}
	})
	serverIP, _, _ := strings.Cut(s.ServerAddr, "/")
	b := startBootServer(t, ctx, s, kernel, initrd, issue(serverIP))
	// The switches get their own copy of the lab: Start records PIDs and
	// start times in s while they run (in the product they run in
	// another process, the lab's airlock).
	switches := *s
	switches.VMs = slices.Clone(s.VMs)
	go switches.RunSwitches(ctx, opts.Log, time.Second)
	if err := Start(ctx, opts, s); err != nil {
		t.Fatal(err)
	}

	want := map[string]VM{}
	for _, vm := range s.VMs {
		want[vm.Serial] = vm
	}
	seen := map[string]bool{}
	for len(seen) < len(want) {
		for _, m := range b.backend.Machines() {
			inv := m.Inventory
			vm, ok := want[inv.System.Serial]
			if !ok || seen[vm.Serial] {
				continue
			}
			seen[vm.Serial] = true
			b.mu.Lock()
			script := b.scripts[vm.MAC]
			b.mu.Unlock()
			t.Logf("%s (%s, %s): from QEMU start: iPXE script %s, registered %s; agent: %s", vm.Name, vm.Firmware, vm.Rack,
				script.Sub(vm.Started).Round(time.Millisecond), m.Registered.Sub(vm.Started).Round(time.Millisecond), agentTimes(vm))
			if inv.System.UUID != vm.UUID || m.Registration.BootMAC != vm.MAC || inv.System.Firmware != vm.Firmware {
				t.Errorf("%s: uuid %s mac %s firmware %s, want %s %s %s", vm.Name, inv.System.UUID, m.Registration.BootMAC, inv.System.Firmware, vm.UUID, vm.MAC, vm.Firmware)
			}
			if inv.System.ChassisLocation != fmt.Sprintf("%s U%d", vm.Rack, vm.Slot) {
				t.Errorf("%s: chassis location %q", vm.Name, inv.System.ChassisLocation)
			}
			if len(inv.Disks) != 1 || inv.Disks[0].SizeBytes != 8<<30 {
				t.Errorf("%s: disks %+v", vm.Name, inv.Disks)
			}
			if len(inv.NICs) != 1 || inv.NICs[0].LLDP == nil || inv.NICs[0].LLDP.SystemName != vm.Rack+"-tor" || inv.NICs[0].LLDP.PortID != vm.Port() {
				t.Errorf("%s: nics %+v", vm.Name, inv.NICs)
			} else {
				t.Logf("%s: LLDP neighbour %s port %s", vm.Name, inv.NICs[0].LLDP.SystemName, inv.NICs[0].LLDP.PortID)
			}
		}
		if len(seen) == len(want) {
			break
		}
		select {
		case <-b.backend.Changed():
		case <-time.After(time.Second):
		case <-ctx.Done():
			var logs strings.Builder
			for _, vm := range s.VMs {
				out, _ := os.ReadFile(vm.SerialLog)
				q, _ := os.ReadFile(filepath.Join(s.Dir, vm.Name+".qemu.log"))
				fmt.Fprintf(&logs, "--- %s serial:\n%s\n--- qemu:\n%s\n", vm.Name, out, q)
			}
			t.Fatalf("only %d of %d VMs registered\n%s\nserver:\n%s", len(seen), len(want), logs.String(), b.logs)
		}
	}

	// A rebooted VM is the same machine: order the BIOS VM to reboot; it
	// network-boots again, gets a new token and registers as the same
	// machine ID.
	var first agentapi.MachineRecord
	var bios VM
	for _, vm := range s.VMs {
		if vm.Firmware == BIOS {
			bios = vm
		}
	}
	for _, m := range b.backend.Machines() {
		if m.Inventory.System.Serial == bios.Serial {
			first = m
		}
	}
	ordered := time.Now()
	b.backend.Order(first.MachineID, agentapi.Order{Kind: agentapi.OrderReboot})
	for again := false; !again; {
		for _, m := range b.backend.Machines() {
			if m.Inventory.System.Serial == bios.Serial && m.BootID != first.BootID {
				if m.MachineID != first.MachineID {
					t.Fatalf("rebooted VM registered as %s, was %s", m.MachineID, first.MachineID)
				}
				t.Logf("%s: reboot order to registration as the same machine %s: %s", bios.Name, m.MachineID, time.Since(ordered).Round(time.Millisecond))
				again = true
			}
		}
		if len(b.backend.Machines()) != len(want) {
			t.Fatalf("machines: %d, want %d", len(b.backend.Machines()), len(want))
		}
		if again {
			break
		}
		select {
		case <-b.backend.Changed():
		case <-time.After(time.Second):
		case <-ctx.Done():
			out, _ := os.ReadFile(bios.SerialLog)
			t.Fatalf("rebooted VM did not register again\nserial:\n%s\nserver:\n%s", out, b.logs)
		}
	}
	serial, _ := os.ReadFile(bios.SerialLog)
	for _, want := range []string{"SeaBIOS", "iPXE", "airlock", "registered"} {
		if !strings.Contains(string(serial), want) {
			t.Errorf("BIOS serial log lacks %q:\n%s", want, serial)
		}
	}

	st, err := Status(state)
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range st.VMs {
		if !vm.Running {
			t.Errorf("Status: %s not running", vm.Name)
		}
	}
	if err := Down(state); err != nil {
		t.Fatal(err)
	}
	assertGone(t, s)
}

// agentTimes reads the agent's log lines from a VM's serial console and
// says when (from QEMU start, by the guest clock, which QEMU sets from the
// host's) the agent started, had its network and registered.
func agentTimes(vm VM) string {
	data, _ := os.ReadFile(vm.SerialLog)
	var out []string
	seen := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		i := strings.Index(line, "time=")
		if i < 0 {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, strings.Fields(line[i+5:])[0])
		if err != nil {
			continue
		}
		for _, msg := range []string{`msg="kernel modules"`, "msg=links", `msg="DHCP lease"`, "msg=registered"} {
			if strings.Contains(line, msg) && !seen[msg] {
				seen[msg] = true
				out = append(out, fmt.Sprintf("%s at %s", strings.Trim(strings.TrimPrefix(msg, "msg="), `"`), ts.Sub(vm.Started).Round(100*time.Millisecond)))
			}
		}
	}
	return strings.Join(out, ", ")
}

func assertGone(t *testing.T, s *State) {
	t.Helper()
	for _, name := range []string{s.Namespace, s.Outside} {
		if _, err := os.Stat(filepath.Join(netns.RunDir, name)); err == nil {
			t.Errorf("namespace %s still exists", name)
		}
	}
	for _, vm := range s.VMs {
		if vm.PID > 0 && ours(vm.PID, s.Dir) {
			t.Errorf("VM %s (pid %d) still running", vm.Name, vm.PID)
		}
	}
	if _, err := os.Stat(s.Dir); err == nil {
		t.Errorf("lab directory %s still exists", s.Dir)
	}
}

// TestPrepareSizesAndUplink: a prepared lab (no VM started) records each
// VM's size, which its QEMU command line carries (the first VM sized as a
// control plane, the other by the defaults); its namespace's uplink has
// sent nothing, counts a datagram sent off the provisioning network, and
// Down removes both namespaces.
func TestPrepareSizesAndUplink(t *testing.T) {
	netns.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	state := t.TempDir()
	opts := Options{StateDir: state, Nodes: 2, Sizes: []Size{{CPUs: 2, MemoryMB: 3072}}}
	s, err := Prepare(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Down(state); err != nil {
			t.Errorf("Down: %v", err)
		}
		assertGone(t, s)
	})
	opts.Defaults()
	for i, want := range []string{"-smp 2 -nodefaults", "-smp 1 -nodefaults"} {
		args := strings.Join(qemuArgs(opts, s, &s.VMs[i], "sercon"), " ")
		mem := []string{"-m 3072 ", "-m 512 "}[i]
		if !strings.Contains(args, want) || !strings.Contains(args, mem) {
			t.Errorf("VM %s: QEMU arguments lack %q and %q: %s", s.VMs[i].Name, want, mem, args)
		}
	}
	if s.Router != "10.77.0.254" {
		t.Errorf("router %q, want 10.77.0.254 (the subnet's last host)", s.Router)
	}
	if got := lastHost(netip.MustParsePrefix("10.8.0.0/22")).String(); got != "10.8.3.254" {
		t.Errorf("lastHost(10.8.0.0/22) = %s", got)
	}
	if s.VMs[0].CPUs != 2 || s.VMs[0].MemoryMB != 3072 || s.VMs[1].CPUs != 1 || s.VMs[1].MemoryMB != 512 {
		t.Errorf("recorded sizes: %+v", s.VMs)
	}
	loaded, err := Load(state)
	if err != nil {
		t.Fatal(err)
	}
	n, err := loaded.UplinkPackets()
	if err != nil || n != 0 {
		t.Fatalf("a lab nobody used sent %d packets out of its uplink (%v), want 0", n, err)
	}
	ns, err := netns.Open(s.Namespace)
	if err != nil {
		t.Fatal(err)
	}
	// A machine on the bridge, through its gateway (the router address).
	vm := netns.NewTest(t, "alvm")
	netns.MustVeth(t, vm, "eth0", ns, "vmport0")
	if err := ns.SetMaster("vmport0", s.Bridge); err != nil {
		t.Fatal(err)
	}
	vm.MustAddr(t, "eth0", "10.77.0.50/24")
	vm.MustIP(t, "route", "add", "default", "via", s.Router)
	err = vm.Do(func() error {
		c, err := net.Dial("udp4", "203.0.113.9:123") // TEST-NET-3: off the lab
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("leak"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for n == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond) // the datagram waits on ARP for the router
		if n, err = loaded.UplinkPackets(); err != nil {
			t.Fatal(err)
		}
	}
	if n == 0 {
		t.Fatalf("a machine's datagram off the lab through its gateway %s: the uplink still counts %d", s.Router, n)
	}
	// A process of the namespace itself is routed the same way.
	out, err := exec.Command("ip", "-n", s.Namespace, "route", "get", "198.51.100.7").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "dev "+s.Uplink) {
		t.Errorf("ip route get 198.51.100.7 in the lab: %v: %s, want dev %s", err, out, s.Uplink)
	}
}

func TestValidateSizes(t *testing.T) {
	o := Options{StateDir: "x", Nodes: 2, CPUs: -1, Sizes: []Size{{CPUs: 99}, {MemoryMB: 64}, {}}}
	o.Defaults()
	err := o.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"cpus/memoryMB: -1 CPUs", "sizes[0]: 99 CPUs", "sizes[1]: 64 MiB", "sizes: 3 given for 2 nodes"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}
