package seed

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite golden files")

func mustMAC(t testing.TB, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func testCA(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("testdata/ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const testKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMq0tb5v2Xz6m5PZ3bC4C2mO0I2mZ3Jb8vRr8F3a1b2c operator@airlock"

// cases are the golden seeds: each a kind of machine the answer file makes.
func cases(t testing.TB) map[string]Config {
	ca := testCA(t)
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	return map[string]Config{
		// A worker with one NIC and a static address; https mirror signed by
		// airlock's CA.
		"static": {
			InstanceID: "m-3fa2-1",
			Hostname:   "worker-r1-1",
			FQDN:       "worker-r1-1.rack1.example.net",
			Network: Network{Ethernets: []Ethernet{{
				Name: "eth0", MAC: mustMAC(t, "52:54:00:12:34:56"),
				IPConfig: IPConfig{
					Addresses:   []netip.Prefix{pfx("10.40.0.21/24")},
					Gateway:     addr("10.40.0.1"),
					Nameservers: []netip.Addr{addr("10.40.0.2"), addr("10.40.0.3")},
					Search:      []string{"rack1.example.net"},
				},
			}}},
			NTPServers:        []string{"10.40.0.2"},
			CACertificates:    []string{ca},
			OnlyTheseCAs:      true,
			SSHAuthorizedKeys: []string{testKey},
			Mirror:            &Mirror{Endpoint: "https://10.40.0.2:5000", CA: ca},
			PhoneHome:         &PhoneHome{URL: "https://10.40.0.2:8443/v1/phone-home/m-3fa2", Token: "t0k3n-single-use_0123456789abcdef"},
		},
		// A GPU worker with an LACP bond, a VLAN on it and a static route;
		// plain http mirror; bootstrap hooks (one binary file, one command).
		"bond-vlan": {
			InstanceID: "m-77c1-2",
			Hostname:   "gpu-r2-1",
			Network: Network{
				Ethernets: []Ethernet{
					{Name: "eno1", MAC: mustMAC(t, "0c:42:a1:00:00:01")},
					{Name: "eno2", MAC: mustMAC(t, "0c:42:a1:00:00:02")},
					{Name: "mgmt0", MAC: mustMAC(t, "52:54:00:00:00:10"), IPConfig: IPConfig{DHCP4: true}},
				},
				Bonds: []Bond{{
					Name: "bond0", Interfaces: []string{"eno1", "eno2"}, Mode: "802.3ad",
					LACPRate: "fast", TransmitHashPolicy: "layer3+4", IPConfig: IPConfig{MTU: 9000},
				}},
				VLANs: []VLAN{{
					Name: "bond0.100", ID: 100, Link: "bond0",
					IPConfig: IPConfig{
						Addresses:   []netip.Prefix{pfx("10.50.100.11/24"), pfx("fd00:50:100::11/64")},
						Gateway:     addr("10.50.100.1"),
						Routes:      []Route{{To: pfx("10.60.0.0/16"), Via: addr("10.50.100.254"), Metric: 100}},
						Nameservers: []netip.Addr{addr("10.50.100.2")},
					},
				}},
			},
			NTPServers: []string{"10.50.100.2", "ntp.example.net"},
			Mirror:     &Mirror{Endpoint: "http://10.50.100.2:5000"},
			PhoneHome:  &PhoneHome{URL: "http://10.50.100.2:8080/phone-home", Token: "AAAABBBBCCCCDDDD", Tries: 3},
			WriteFiles: []File{
				{Path: "/etc/airlock/join.yaml", Content: []byte("token: \"abc\"\n- not: a list item of the seed\n"), Permissions: 0o600},
				{Path: "/usr/local/bin/blob", Content: []byte{0, 1, 2, 0xff}, Permissions: 0o755, Defer: true},
			},
			RunCmd: [][]string{{"sh", "-c", "echo 'done: $(hostname)' > /dev/ttyS0"}},
		},
		// A lab machine: DHCP, https mirror without verification, no phone-home.
		"lab-dhcp": {
			InstanceID: "lab-1",
			Hostname:   "lab-1",
			Network: Network{Ethernets: []Ethernet{{
				Name: "eth0", MAC: mustMAC(t, "52:54:00:00:00:01"), IPConfig: IPConfig{DHCP4: true},
			}}},
			Mirror: &Mirror{Endpoint: "https://airlock.lab:5000", SkipVerify: true, Upstreams: []string{"docker.io", "registry.k8s.io"}},
		},
	}
}

var docs = []string{"meta-data", "user-data", "network-config"}

func (f Files) doc(name string) []byte {
	switch name {
	case "meta-data":
		return f.MetaData
	case "user-data":
		return f.UserData
	}
	return f.NetworkConfig
}

func TestGolden(t *testing.T) {
	for name, c := range cases(t) {
		t.Run(name, func(t *testing.T) {
			f, err := Render(c)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range docs {
				golden := filepath.Join("testdata", "golden", name, d)
				if *update {
					if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(golden, f.doc(d), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (run go test ./installer/seed -update to create it)", err)
				}
				if !bytes.Equal(f.doc(d), want) {
					t.Errorf("%s differs from %s:\ngot:\n%s\nwant:\n%s", d, golden, f.doc(d), want)
				}
			}
		})
	}
}

// The documents read back (as YAML and TOML) to exactly what went in: no
// input string changed the documents' structure.
func TestRoundTrip(t *testing.T) {
	c := cases(t)["bond-vlan"]
	f, err := Render(c)
	if err != nil {
		t.Fatal(err)
	}
	var ud struct {
		Hostname   string `yaml:"hostname"`
		WriteFiles []struct {
			Path, Content, Encoding, Permissions string
		} `yaml:"write_files"`
		RunCmd    [][]string `yaml:"runcmd"`
		PhoneHome struct {
			URL string `yaml:"url"`
		} `yaml:"phone_home"`
	}
	if !bytes.HasPrefix(f.UserData, []byte("#cloud-config\n")) {
		t.Fatalf("user-data does not start with #cloud-config")
	}
	if err := yaml.Unmarshal(f.UserData, &ud); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, w := range ud.WriteFiles {
		got[w.Path] = w.Content
		if w.Path == "/usr/local/bin/blob" && (w.Encoding != "b64" || w.Content != "AAEC/w==" || w.Permissions != "0755") {
			t.Errorf("binary file rendered as %+v", w)
		}
	}
	if got["/etc/airlock/join.yaml"] != string(c.WriteFiles[0].Content) {
		t.Errorf("join.yaml content changed: %q", got["/etc/airlock/join.yaml"])
	}
	if len(ud.RunCmd) != 1 || strings.Join(ud.RunCmd[0], "\x00") != strings.Join(c.RunCmd[0], "\x00") {
		t.Errorf("runcmd = %q", ud.RunCmd)
	}
	if ud.PhoneHome.URL != "http://10.50.100.2:8080/phone-home?token=AAAABBBBCCCCDDDD" {
		t.Errorf("phone-home URL = %q", ud.PhoneHome.URL)
	}
	// Each upstream's hosts.toml names airlock as a pull/resolve mirror.
	for _, up := range DefaultUpstreams {
		content, ok := got[CertsDir+"/"+up+"/hosts.toml"]
		if !ok {
			t.Errorf("no hosts.toml for %s", up)
			continue
		}
		var h hostsFile
		if _, err := toml.Decode(content, &h); err != nil {
			t.Fatalf("hosts.toml for %s: %v", up, err)
		}
		m, ok := h.Host["http://10.50.100.2:5000"]
		if !ok || strings.Join(m.Capabilities, ",") != "pull,resolve" || h.Server == "" {
			t.Errorf("hosts.toml for %s: %+v", up, h)
		}
	}
}

func TestValidateRejects(t *testing.T) {
	ok := cases(t)["static"]
	for name, mutate := range map[string]func(c *Config){
		"hostname newline":   func(c *Config) { c.Hostname = "a\nb: c" },
		"hostname upper":     func(c *Config) { c.Hostname = "Worker" },
		"fqdn other host":    func(c *Config) { c.FQDN = "other.example.net" },
		"instance id":        func(c *Config) { c.InstanceID = "" },
		"mac short":          func(c *Config) { c.Network.Ethernets[0].MAC = net.HardwareAddr{1, 2} },
		"ifname long":        func(c *Config) { c.Network.Ethernets[0].Name = "averyveryverylongname" },
		"gateway off subnet": func(c *Config) { c.Network.Ethernets[0].Gateway = netip.MustParseAddr("192.168.9.1") },
		"ntp junk":           func(c *Config) { c.NTPServers = []string{"a b"} },
		"ca not pem":         func(c *Config) { c.CACertificates = []string{"hello"} },
		"ca key block": func(c *Config) {
			c.CACertificates = []string{"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}
		},
		"ssh key two lines":   func(c *Config) { c.SSHAuthorizedKeys = []string{"ssh-ed25519 AAAA a\nssh-rsa BBB b"} },
		"mirror no port":      func(c *Config) { c.Mirror = &Mirror{Endpoint: "https://10.0.0.1"} },
		"mirror path":         func(c *Config) { c.Mirror = &Mirror{Endpoint: "https://10.0.0.1:5000/v2"} },
		"mirror http with ca": func(c *Config) { c.Mirror = &Mirror{Endpoint: "http://10.0.0.1:5000", CA: testCA(t)} },
		"mirror upstream":     func(c *Config) { c.Mirror.Upstreams = []string{"docker.io/../x"} },
		"phone home scheme":   func(c *Config) { c.PhoneHome.URL = "file:///etc/passwd" },
		"phone home dollar":   func(c *Config) { c.PhoneHome.URL = "https://a:1/$INSTANCE_ID" },
		"token short":         func(c *Config) { c.PhoneHome.Token = "abc" },
		"file relative":       func(c *Config) { c.WriteFiles = []File{{Path: "etc/x"}} },
		"file dotdot":         func(c *Config) { c.WriteFiles = []File{{Path: "/etc/../x"}} },
		"file mode":           func(c *Config) { c.WriteFiles = []File{{Path: "/x", Permissions: 0o100000}} },
		"runcmd empty":        func(c *Config) { c.RunCmd = [][]string{{}} },
		"only CAs, none":      func(c *Config) { c.CACertificates, c.OnlyTheseCAs = nil, true },
		"bond unknown member": func(c *Config) { c.Network.Bonds = []Bond{{Name: "bond0", Interfaces: []string{"eth9"}}} },
		"vlan id":             func(c *Config) { c.Network.VLANs = []VLAN{{Name: "v", ID: 4095, Link: "eth0"}} },
		"vlan link":           func(c *Config) { c.Network.VLANs = []VLAN{{Name: "v", ID: 5, Link: "nope"}} },
		"duplicate name":      func(c *Config) { c.Network.VLANs = []VLAN{{Name: "eth0", ID: 5, Link: "eth0"}} },
	} {
		t.Run(name, func(t *testing.T) {
			c := ok
			c.Network.Ethernets = append([]Ethernet(nil), ok.Network.Ethernets...)
			m := *ok.Mirror
			c.Mirror = &m
			p := *ok.PhoneHome
			c.PhoneHome = &p
			mutate(&c)
			if _, err := Render(c); err == nil {
				t.Fatalf("rendered without error")
			}
		})
	}
	if err := ok.Validate(); err != nil {
		t.Fatalf("the valid case itself fails: %v", err)
	}
}

// Every golden user-data passes Debian's `cloud-init schema`, and every
// golden network-config is parsed by cloud-init's own network code (the
// installed cloud-init, 22.4, has no network-config schema command) and
// rendered for ifupdown and systemd-networkd.
func TestCloudInitValidates(t *testing.T) {
	if _, err := exec.LookPath("cloud-init"); err != nil {
		t.Fatal("cloud-init is not installed: apt-get install cloud-init (run .ci/deps)")
	}
	dirs, err := filepath.Glob("testdata/golden/*")
	if err != nil || len(dirs) < 3 {
		t.Fatalf("golden seeds: %v %v", dirs, err)
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			out, err := exec.Command("cloud-init", "schema", "--config-file", filepath.Join(dir, "user-data")).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Valid cloud-config") {
				t.Errorf("cloud-init schema %s: %v\n%s", dir, err, out)
			}
			nc := filepath.Join(dir, "network-config")
			if _, err := os.Stat(nc); err != nil {
				t.Fatal(err)
			}
			out, err = exec.Command("/usr/bin/python3", "testdata/netcheck.py", nc).CombinedOutput() // cloud-init's interpreter
			if err != nil {
				t.Errorf("cloud-init network parse %s: %v\n%s", nc, err, out)
			}
			t.Logf("%s", out)
		})
	}
}

// cloud-init reads YAML 1.1 (PyYAML), where on, yes, 0x1f or 12:30:45 are
// not strings: every such value must come out quoted. Checked by PyYAML
// itself, as the installed system reads it.
func TestPyYAMLReadsStrings(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Fatal("python3 (PyYAML) not found: apt-get install cloud-init")
	}
	tricky := []string{"on", "off", "yes", "no", "y", "n", "true", "null", "nan", "inf", "1e3", "123", "0x1f", "017", "1-2", "12-30"}
	dir := t.TempDir()
	var want []string
	for i, h := range tricky {
		c := Config{InstanceID: h, Hostname: h, NTPServers: []string{h},
			Network: Network{Ethernets: []Ethernet{{Name: "e" + h, MAC: net.HardwareAddr{0x12, 0x34, 0x56, 0x78, 0x90, byte(i)}}}}}
		f, err := Render(c)
		if err != nil {
			t.Fatalf("%q: %v", h, err)
		}
		for _, d := range docs {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%02d-%s", i, d)), f.doc(d), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want = append(want, h)
	}
	script := `
import glob, sys, yaml
for p in sorted(glob.glob(sys.argv[1] + "/*-user-data")):
    u = yaml.safe_load(open(p))
    m = yaml.safe_load(open(p.replace("user-data", "meta-data")))
    n = yaml.safe_load(open(p.replace("user-data", "network-config")))
    (name, eth), = n["ethernets"].items()
    vals = [u["hostname"], u["ntp"]["servers"][0], m["instance-id"], m["local-hostname"], name[1:], eth["match"]["macaddress"]]
    if not all(isinstance(v, str) for v in vals) or len(set(vals[:5])) != 1:
        print("BAD", p, repr(vals)); continue
    print(vals[0])
`
	out, err := exec.Command("/usr/bin/python3", "-c", script, dir).CombinedOutput()
	if err != nil {
		t.Fatalf("python3: %v\n%s", err, out)
	}
	if got := strings.Fields(string(out)); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("PyYAML read:\n%s\nwant the strings %q", out, want)
	}
}

// A value the YAML encoder would write so that it reads back differently
// (a literal block line starting with a tab) is refused with an error, not
// put in a seed; file content of that kind goes base64-encoded.
func TestRenderRefusesWhatDoesNotReadBack(t *testing.T) {
	c := Config{InstanceID: "i-1", Hostname: "node-1", RunCmd: [][]string{{"sh", "-c", "\t\t\n\n0 000"}}}
	if _, err := Render(c); err == nil || !strings.Contains(err.Error(), "cannot carry") {
		t.Fatalf("Render with a tab-led multi-line argument: %v, want a does-not-read-back error", err)
	}
	c.RunCmd = nil
	c.WriteFiles = []File{{Path: "/etc/x", Content: []byte("\tk\n")}}
	files, err := Render(c)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(files.UserData), "encoding: b64") {
		t.Fatalf("content with a tab not base64-encoded:\n%s", files.UserData)
	}
}
