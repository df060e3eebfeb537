//go:build osimage

// The seed boots a real system: the node OS image that e2e/osimage/build.sh
// makes (cached under .cache/osimage) is written to a larger virtual disk,
// the CIDATA filesystem this package builds goes in a last GPT partition at
// the disk's end (added by installer/agent/gpt, as the agent will), and QEMU (TCG) boots it under SeaBIOS and under OVMF. The
// seed's runcmd reports on the serial console what cloud-init did (hostname,
// static address, trusted CA, containerd mirrors, grown root filesystem);
// its phone-home reaches an HTTP server of this test through QEMU's
// restricted user network (a guestfwd to loopback, nothing else reachable).
//
//	go test -tags osimage -count=1 -timeout 40m -v -run TestSeedBoots ./installer/seed/
package seed

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"airlock.dev/airlock/installer/agent/gpt"
)

const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	diskSize = 2 << 30 // the virtual machine's disk; the image is 1 GiB
	bootWait = 15 * time.Minute
)

// osImage builds (or finds cached) the node image and returns its directory.
func osImage(t *testing.T) string {
	t.Helper()
	script, err := filepath.Abs("../../e2e/osimage/build.sh")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.Command("bash", script)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v (it needs root and: apt-get install debootstrap grub-pc-bin grub-efi-amd64-bin fdisk dosfstools mtools zstd)", script, err)
	}
	dir := strings.TrimSpace(string(out))
	t.Logf("node image %s (%.0f s)", dir, time.Since(start).Seconds())
	return dir
}

// writeDisk unpacks the image into a diskSize file, checking its size and
// digest, and adds the seed as partition 4 in the disk's last MiB.
func writeDisk(t *testing.T, imgDir, path string, seedImg []byte) {
	t.Helper()
	readTrim := func(name string) string {
		b, err := os.ReadFile(filepath.Join(imgDir, name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	wantSum, wantSize := readTrim("disk.raw.sha256"), readTrim("disk.raw.size")
	src, err := os.Open(filepath.Join(imgDir, "disk.raw.zst"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	zr, err := zstd.NewReader(src)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	dst, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(dst, h), zr)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != wantSum || strconv.FormatInt(n, 10) != wantSize {
		t.Fatalf("image: %d bytes sha256 %s, want %s bytes sha256 %s", n, got, wantSize, wantSum)
	}
	if err := dst.Truncate(diskSize); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	// The seed goes last, placed by the agent's GPT editor, which also moves
	// the backup table to the new end; growpart later grows partition 3 up
	// to it.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	p, err := gpt.AppendPartition(f, diskSize, int64(len(seedImg)), PartitionType, "cidata")
	if err != nil {
		t.Fatal(err)
	}
	if p.Number != 4 {
		t.Fatalf("seed partition %+v, want number 4", p)
	}
	if _, err := f.WriteAt(seedImg, p.Offset); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("sfdisk", "--dump", path).CombinedOutput()
	t.Logf("disk:\n%s", out)
}

// phoneHome is the test's end of the seed's phone-home.
type phoneHome struct {
	got chan url.Values
}

func (p *phoneHome) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	v := r.Form
	v.Set("path", r.URL.Path)
	select {
	case p.got <- v:
	default:
	}
	fmt.Fprintln(w, "ok")
}

func TestSeedBoots(t *testing.T) {
	for _, tool := range []struct{ bin, pkg string }{{"qemu-system-x86_64", "qemu-system-x86"}, {"sfdisk", "fdisk"}} {
		if _, err := exec.LookPath(tool.bin); err != nil {
			t.Fatalf("%s not found: apt-get install %s", tool.bin, tool.pkg)
		}
	}
	if _, err := os.Stat(ovmfCode); err != nil {
		t.Fatalf("%v: apt-get install ovmf", err)
	}
	imgDir := osImage(t)
	for _, fw := range []string{"bios", "uefi"} {
		t.Run(fw, func(t *testing.T) { bootOnce(t, imgDir, fw) })
	}
}

func bootOnce(t *testing.T, imgDir, fw string) {
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ph := &phoneHome{got: make(chan url.Values, 1)}
	// No read timeouts: QEMU's guestfwd opens its one connection to this
	// server when QEMU starts, and the request comes minutes later.
	srv := &http.Server{Handler: ph}
	go srv.Serve(ln)
	defer srv.Close()

	hostname := "node-" + fw
	const token = "boot-test-token-0123456789"
	const marker = "AIRLOCK-SEED-CHECK"
	report := `echo "` + marker + ` hostname=$(hostname) ip=$(ip -4 -o addr show dev eth0 | awk '{print $4}')` +
		` ca=$(openssl verify -CAfile /etc/ssl/certs/ca-certificates.crt ` + MirrorCAPath + ` 2>&1 | grep -c ': OK$')` +
		` mirrors=$(ls ` + CertsDir + ` | tr '\n' ,)` +
		` rootmib=$(df -m --output=size / | tail -1 | tr -d ' ')` +
		` seedlabel=$(blkid -o value -s LABEL /dev/vda4) end" > /dev/ttyS0`
	c := Config{
		InstanceID: "boot-test-" + fw,
		Hostname:   hostname,
		FQDN:       hostname + ".lab.airlock",
		Network: Network{Ethernets: []Ethernet{{
			Name: "eth0", MAC: mustMAC(t, "52:54:00:a1:0c:01"),
			IPConfig: IPConfig{
				Addresses:   []netip.Prefix{netip.MustParsePrefix("10.0.2.15/24")},
				Gateway:     netip.MustParseAddr("10.0.2.2"),
				Nameservers: []netip.Addr{netip.MustParseAddr("10.0.2.3")},
			},
		}}},
		NTPServers:        []string{"10.0.2.2"},
		CACertificates:    []string{testCA(t)},
		OnlyTheseCAs:      fw == "bios", // both ways: BIOS trusts only airlock's CA, UEFI keeps the defaults too
		SSHAuthorizedKeys: []string{testKey},
		Mirror:            &Mirror{Endpoint: "https://10.0.2.100:5000", CA: testCA(t)},
		PhoneHome:         &PhoneHome{URL: "http://10.0.2.100/phone-home/" + fw, Token: token, Tries: 5},
		RunCmd:            [][]string{{"sh", "-c", report}},
	}
	files, err := Render(c)
	if err != nil {
		t.Fatal(err)
	}
	seedImg, err := files.Image()
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.raw")
	writeDisk(t, imgDir, disk, seedImg)

	args := []string{
		"-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1024", "-nodefaults", "-no-reboot",
		"-display", "none", "-serial", "stdio",
		"-drive", "file=" + disk + ",if=virtio,format=raw",
		"-netdev", "user,id=n0,restrict=on,net=10.0.2.0/24,guestfwd=tcp:10.0.2.100:80-tcp:" + ln.Addr().String(),
		"-device", "virtio-net-pci,netdev=n0,mac=52:54:00:a1:0c:01",
	}
	if fw == "uefi" {
		vars := filepath.Join(dir, "OVMF_VARS.fd")
		b, err := os.ReadFile(ovmfVars)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vars, b, 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode, "-drive", "if=pflash,format=raw,file="+vars)
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	logPath := filepath.Join(os.TempDir(), "airlock-seed-boot-"+fw+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(io.TeeReader(stdout, logFile))
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if strings.Contains(sc.Text(), marker) && strings.HasSuffix(strings.TrimSpace(sc.Text()), " end") {
				lines <- sc.Text()
				return
			}
		}
		close(lines)
	}()
	var line string
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatalf("%s: QEMU's console ended without the seed's report (console log %s)", fw, logPath)
		}
		line = l
	case <-ctx.Done():
		t.Fatalf("%s: no report from the seed within %v (console log %s)", fw, bootWait, logPath)
	}
	toMarker := time.Since(start)
	t.Logf("%s: seed report %.1f s after QEMU start: %s", fw, toMarker.Seconds(), strings.TrimSpace(line))
	kv := map[string]string{}
	for _, m := range regexp.MustCompile(`(\w+)=(\S*)`).FindAllStringSubmatch(line, -1) {
		kv[m[1]] = m[2]
	}
	want := map[string]string{
		"hostname":  hostname,
		"ip":        "10.0.2.15/24",
		"ca":        "1",
		"mirrors":   "docker.io,ghcr.io,nvcr.io,quay.io,registry.k8s.io,",
		"seedlabel": Label,
	}
	for k, v := range want {
		if kv[k] != v {
			t.Errorf("%s: %s = %q, want %q", fw, k, kv[k], v)
		}
	}
	if mb, _ := strconv.Atoi(kv["rootmib"]); mb < 1500 {
		t.Errorf("%s: root filesystem %s MiB: growpart/resizefs did not grow it towards the seed partition", fw, kv["rootmib"])
	}

	select {
	case v := <-ph.got:
		t.Logf("%s: phone-home %.1f s after QEMU start: %v", fw, time.Since(start).Seconds(), v)
		if v.Get("token") != token || v.Get("hostname") != hostname || v.Get("fqdn") != c.FQDN || v.Get("instance_id") != c.InstanceID || v.Get("path") != "/phone-home/"+fw {
			t.Errorf("%s: phone-home carried %v", fw, v)
		}
	case <-time.After(3 * time.Minute):
		t.Errorf("%s: no phone-home within 3 min of the report (console log %s)", fw, logPath)
	case <-ctx.Done():
		t.Errorf("%s: no phone-home before the deadline", fw)
	}
}
