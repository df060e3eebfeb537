package seed

import (
	"bytes"
	"net/netip"
	"testing"

	"go.yaml.in/yaml/v3"
)

// Untrusted strings (from answer files and inventory) never panic the
// renderer, and whatever renders reads back to the same values: no input
// can add keys or items to a document.
func FuzzRender(f *testing.F) {
	f.Add("worker-1", "/etc/x", "a: b\n- c", "echo hi", "ntp.example.net")
	f.Add("a\nb: c", "/../x", "\x00\xff", "", "10.0.0.1")
	f.Add("x", "/etc/k8s/join.yaml", "#cloud-config\nruncmd: [reboot]\n", "'; reboot; '", "on")
	f.Fuzz(func(t *testing.T, host, path, content, arg, ntp string) {
		c := Config{
			InstanceID: "i-1", Hostname: host,
			Network: Network{Ethernets: []Ethernet{{Name: "eth0", MAC: []byte{2, 0, 0, 0, 0, 1},
				IPConfig: IPConfig{Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}}}}},
			NTPServers: []string{ntp},
			WriteFiles: []File{{Path: path, Content: []byte(content)}},
			RunCmd:     [][]string{{"sh", "-c", arg}},
		}
		files, err := Render(c)
		if err != nil {
			return
		}
		var ud struct {
			Hostname   string `yaml:"hostname"`
			NTP        struct{ Servers []string }
			WriteFiles []struct{ Path, Content, Encoding string } `yaml:"write_files"`
			RunCmd     [][]string                                 `yaml:"runcmd"`
		}
		if err := yaml.Unmarshal(files.UserData, &ud); err != nil {
			t.Fatalf("rendered user-data does not parse: %v\n%s", err, files.UserData)
		}
		if ud.Hostname != host || len(ud.NTP.Servers) != 1 || ud.NTP.Servers[0] != ntp || len(ud.WriteFiles) != 1 ||
			ud.WriteFiles[0].Path != path || len(ud.RunCmd) != 1 || len(ud.RunCmd[0]) != 3 || ud.RunCmd[0][2] != arg {
			t.Fatalf("user-data reads back differently:\n%s", files.UserData)
		}
		if ud.WriteFiles[0].Encoding == "" && ud.WriteFiles[0].Content != content {
			t.Fatalf("file content changed: %q", ud.WriteFiles[0].Content)
		}
		if _, err := files.Image(); err != nil {
			t.Fatalf("image of a rendered seed: %v", err)
		}
	})
}

// Any file names and contents give an error or an image, never a panic.
func FuzzFATImage(f *testing.F) {
	f.Add("meta-data", []byte("x"), "user-data", 3000)
	f.Add("a.b.c.d", []byte{}, "A.B.C.D", 0)
	f.Add("~1", []byte("~"), "long name with spaces and.dots.txt", 1<<20)
	f.Fuzz(func(t *testing.T, n1 string, c1 []byte, n2 string, size int) {
		if size < 0 || size > 4<<20 {
			size = 100
		}
		img, err := FATImage(Label, []SeedFile{{n1, c1}, {n2, bytes.Repeat([]byte{1}, size)}})
		if err == nil && (len(img)%mib != 0 || img[510] != 0x55) {
			t.Fatalf("image of %d bytes without a boot signature", len(img))
		}
	})
}
