package seed

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
	"go.yaml.in/yaml/v3"
)

// Paths in the installed system.
const (
	// CertsDir is containerd's hosts directory (config_path of the CRI
	// registry plugin; ctr takes it with --hosts-dir).
	CertsDir = "/etc/containerd/certs.d"
	// MirrorCAPath holds Mirror.CA when one is given.
	MirrorCAPath = "/etc/containerd/airlock-registry-ca.crt"
)

// upstreamServer is the registry API endpoint of an upstream name where it
// differs from https://NAME (containerd's own default for docker.io).
var upstreamServer = map[string]string{"docker.io": "https://registry-1.docker.io"}

// Render validates c and renders its three seed documents.
func Render(c Config) (Files, error) {
	if err := c.Validate(); err != nil {
		return Files{}, fmt.Errorf("render seed: %w", err)
	}
	var f Files
	var err error
	// local-hostname is the FQDN when there is one: cloud-init takes the
	// short name from it where it needs one, and the FQDN (e.g. phone-home's
	// fqdn field) only from here; user-data's hostname and fqdn still rule.
	local := c.Hostname
	if c.FQDN != "" {
		local = c.FQDN
	}
	if f.MetaData, err = marshalYAML("", metaData{InstanceID: c.InstanceID, LocalHostname: local}); err != nil {
		return Files{}, err
	}
	ud, err := userData(c)
	if err != nil {
		return Files{}, err
	}
	if f.UserData, err = marshalYAML("#cloud-config\n", ud); err != nil {
		return Files{}, err
	}
	// With no interfaces there is no network-config: cloud-init then falls
	// back to DHCP on the first NIC (an empty version 2 document would
	// configure nothing).
	if n := c.Network; len(n.Ethernets)+len(n.Bonds)+len(n.VLANs) > 0 {
		if f.NetworkConfig, err = marshalYAML("", networkConfig(n)); err != nil {
			return Files{}, err
		}
	}
	return f, nil
}

type metaData struct {
	InstanceID    string `yaml:"instance-id"`
	LocalHostname string `yaml:"local-hostname"`
}

type cloudConfig struct {
	Hostname          string        `yaml:"hostname"`
	FQDN              string        `yaml:"fqdn,omitempty"`
	PreferFQDN        *bool         `yaml:"prefer_fqdn_over_hostname,omitempty"`
	ManageEtcHosts    bool          `yaml:"manage_etc_hosts"`
	Growpart          growpart      `yaml:"growpart"`
	ResizeRootfs      bool          `yaml:"resize_rootfs"`
	NTP               *ntp          `yaml:"ntp,omitempty"`
	CACerts           *caCerts      `yaml:"ca_certs,omitempty"`
	SSHAuthorizedKeys []string      `yaml:"ssh_authorized_keys,omitempty"`
	WriteFiles        []writeFile   `yaml:"write_files,omitempty"`
	RunCmd            [][]string    `yaml:"runcmd,omitempty"`
	PhoneHome         *phoneHomeCfg `yaml:"phone_home,omitempty"`
}

type growpart struct {
	Mode    string   `yaml:"mode"`
	Devices []string `yaml:"devices"`
}

type ntp struct {
	Enabled bool     `yaml:"enabled"`
	Servers []string `yaml:"servers"`
}

type caCerts struct {
	RemoveDefaults bool     `yaml:"remove_defaults,omitempty"`
	Trusted        []string `yaml:"trusted"`
}

type writeFile struct {
	Path        string `yaml:"path"`
	Content     string `yaml:"content"`
	Encoding    string `yaml:"encoding,omitempty"`
	Owner       string `yaml:"owner"`
	Permissions string `yaml:"permissions"`
	Defer       bool   `yaml:"defer,omitempty"`
}

type phoneHomeCfg struct {
	URL   string   `yaml:"url"`
	Post  []string `yaml:"post"`
	Tries int      `yaml:"tries"`
}

func userData(c Config) (cloudConfig, error) {
	ud := cloudConfig{
		Hostname:          c.Hostname,
		FQDN:              c.FQDN,
		ManageEtcHosts:    true,
		Growpart:          growpart{Mode: "auto", Devices: []string{"/"}},
		ResizeRootfs:      true,
		SSHAuthorizedKeys: c.SSHAuthorizedKeys,
	}
	if c.FQDN != "" {
		f := false // the kernel hostname stays short; /etc/hosts has both
		ud.PreferFQDN = &f
	}
	if len(c.NTPServers) > 0 {
		ud.NTP = &ntp{Enabled: true, Servers: c.NTPServers}
	}
	if len(c.CACertificates) > 0 {
		ud.CACerts = &caCerts{RemoveDefaults: c.OnlyTheseCAs}
		for _, p := range c.CACertificates {
			ud.CACerts.Trusted = append(ud.CACerts.Trusted, strings.TrimSpace(p)+"\n")
		}
	}
	if c.Mirror != nil {
		files, err := mirrorFiles(*c.Mirror)
		if err != nil {
			return cloudConfig{}, err
		}
		ud.WriteFiles = append(ud.WriteFiles, files...)
	}
	for _, f := range c.WriteFiles {
		ud.WriteFiles = append(ud.WriteFiles, toWriteFile(f))
	}
	ud.RunCmd = c.RunCmd
	if p := c.PhoneHome; p != nil {
		u, _ := url.Parse(p.URL) // checked by Validate
		q := u.Query()
		q.Set("token", p.Token)
		u.RawQuery = q.Encode()
		tries := p.Tries
		if tries == 0 {
			tries = 10
		}
		ud.PhoneHome = &phoneHomeCfg{
			URL:   u.String(),
			Post:  []string{"instance_id", "hostname", "fqdn", "pub_key_ecdsa", "pub_key_ed25519"},
			Tries: tries,
		}
	}
	return ud, nil
}

func toWriteFile(f File) writeFile {
	w := writeFile{Path: f.Path, Owner: f.Owner, Permissions: fmt.Sprintf("%#04o", f.Permissions), Defer: f.Defer}
	if f.Permissions == 0 {
		w.Permissions = "0644"
	}
	if w.Owner == "" {
		w.Owner = "root:root"
	}
	if plainText(f.Content) {
		w.Content = string(f.Content)
	} else {
		w.Content, w.Encoding = base64.StdEncoding.EncodeToString(f.Content), "b64"
	}
	return w
}

// plainText reports whether content can go into user-data as it is:
// UTF-8 of printable characters, spaces and newlines only. Anything else
// (a tab, a carriage return, a byte-order mark, other control characters)
// is written base64-encoded: the YAML encoder puts multi-line strings in
// literal blocks, where a line starting with a tab does not read back
// (found by FuzzRender).
func plainText(content []byte) bool {
	if !utf8.Valid(content) {
		return false
	}
	for _, r := range string(content) {
		if r != '\n' && r != ' ' && !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// hostsFile is containerd's hosts.toml for one upstream.
type hostsFile struct {
	Server string                `toml:"server"`
	Host   map[string]hostConfig `toml:"host"`
}

type hostConfig struct {
	Capabilities []string `toml:"capabilities"`
	CA           string   `toml:"ca,omitempty"`
	SkipVerify   bool     `toml:"skip_verify,omitempty"`
}

// mirrorFiles renders /etc/containerd/certs.d/UPSTREAM/hosts.toml for each
// upstream (and the registry's CA if given).
func mirrorFiles(m Mirror) ([]writeFile, error) {
	ups := m.Upstreams
	if len(ups) == 0 {
		ups = DefaultUpstreams
	}
	u, _ := url.Parse(m.Endpoint) // checked by Validate
	endpoint := u.Scheme + "://" + u.Host
	var out []writeFile
	hc := hostConfig{Capabilities: []string{"pull", "resolve"}, SkipVerify: m.SkipVerify}
	if m.CA != "" {
		hc.CA = MirrorCAPath
		out = append(out, writeFile{Path: MirrorCAPath, Content: strings.TrimSpace(m.CA) + "\n", Owner: "root:root", Permissions: "0644"})
	}
	for _, up := range slices.Clone(ups) {
		server := upstreamServer[up]
		if server == "" {
			server = "https://" + up
		}
		var b bytes.Buffer
		b.WriteString("# Written by airlock: pull " + up + " images through airlock's registry.\n")
		if err := toml.NewEncoder(&b).Encode(hostsFile{Server: server, Host: map[string]hostConfig{endpoint: hc}}); err != nil {
			return nil, fmt.Errorf("render hosts.toml for %s: %w", up, err)
		}
		out = append(out, writeFile{Path: CertsDir + "/" + up + "/hosts.toml", Content: b.String(), Owner: "root:root", Permissions: "0644"})
	}
	return out, nil
}

// network-config version 2.
type netConfig struct {
	Version   int                 `yaml:"version"`
	Ethernets map[string]ethernet `yaml:"ethernets,omitempty"`
	Bonds     map[string]bond     `yaml:"bonds,omitempty"`
	VLANs     map[string]vlan     `yaml:"vlans,omitempty"`
}

type l3 struct {
	DHCP4       bool         `yaml:"dhcp4"`
	Addresses   []string     `yaml:"addresses,omitempty"`
	Routes      []route      `yaml:"routes,omitempty"`
	Nameservers *nameservers `yaml:"nameservers,omitempty"`
	MTU         int          `yaml:"mtu,omitempty"`
}

type route struct {
	To     string `yaml:"to"`
	Via    string `yaml:"via"`
	Metric int    `yaml:"metric,omitempty"`
}

type nameservers struct {
	Addresses []string `yaml:"addresses,omitempty"`
	Search    []string `yaml:"search,omitempty"`
}

type ethernet struct {
	Match   map[string]string `yaml:"match"`
	SetName string            `yaml:"set-name"`
	l3      `yaml:",inline"`
}

type bond struct {
	Interfaces []string   `yaml:"interfaces"`
	Parameters bondParams `yaml:"parameters"`
	l3         `yaml:",inline"`
}

type bondParams struct {
	Mode               string `yaml:"mode"`
	MIIMonitorInterval int    `yaml:"mii-monitor-interval"`
	LACPRate           string `yaml:"lacp-rate,omitempty"`
	TransmitHashPolicy string `yaml:"transmit-hash-policy,omitempty"`
}

type vlan struct {
	ID   int    `yaml:"id"`
	Link string `yaml:"link"`
	l3   `yaml:",inline"`
}

func toL3(c IPConfig) l3 {
	o := l3{DHCP4: c.DHCP4, MTU: c.MTU}
	for _, p := range c.Addresses {
		o.Addresses = append(o.Addresses, p.String())
	}
	if c.Gateway.IsValid() {
		to := "0.0.0.0/0"
		if c.Gateway.Is6() {
			to = "::/0"
		}
		o.Routes = append(o.Routes, route{To: to, Via: c.Gateway.String()})
	}
	for _, r := range c.Routes {
		o.Routes = append(o.Routes, route{To: r.To.Masked().String(), Via: r.Via.String(), Metric: r.Metric})
	}
	if len(c.Nameservers) > 0 || len(c.Search) > 0 {
		o.Nameservers = &nameservers{Search: c.Search}
		for _, a := range c.Nameservers {
			o.Nameservers.Addresses = append(o.Nameservers.Addresses, a.String())
		}
	}
	return o
}

func networkConfig(n Network) netConfig {
	nc := netConfig{Version: 2}
	if len(n.Ethernets) > 0 {
		nc.Ethernets = map[string]ethernet{}
	}
	for _, e := range n.Ethernets {
		nc.Ethernets[e.Name] = ethernet{Match: map[string]string{"macaddress": e.MAC.String()}, SetName: e.Name, l3: toL3(e.IPConfig)}
	}
	if len(n.Bonds) > 0 {
		nc.Bonds = map[string]bond{}
	}
	for _, b := range n.Bonds {
		p := bondParams{Mode: b.Mode, MIIMonitorInterval: b.MIIMonitorInterval, LACPRate: b.LACPRate, TransmitHashPolicy: b.TransmitHashPolicy}
		if p.Mode == "" {
			p.Mode = "active-backup"
		}
		if p.MIIMonitorInterval == 0 {
			p.MIIMonitorInterval = 100
		}
		nc.Bonds[b.Name] = bond{Interfaces: b.Interfaces, Parameters: p, l3: toL3(b.IPConfig)}
	}
	if len(n.VLANs) > 0 {
		nc.VLANs = map[string]vlan{}
	}
	for _, v := range n.VLANs {
		nc.VLANs[v.Name] = vlan{ID: v.ID, Link: v.Link, l3: toL3(v.IPConfig)}
	}
	return nc
}

func marshalYAML(header string, v any) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(header)
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("marshal seed document: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("marshal seed document: %w", err)
	}
	// The encoder can write a string it cannot read back (a line of a
	// literal block starting with a tab: found by FuzzRender), so every
	// document is read back and compared before it is used.
	back := reflect.New(reflect.TypeOf(v))
	if err := yaml.Unmarshal(b.Bytes()[len(header):], back.Interface()); err != nil {
		return nil, fmt.Errorf("marshal seed document: it does not read back (%v): a value holds characters YAML cannot carry", err)
	}
	if !reflect.DeepEqual(back.Elem().Interface(), v) {
		return nil, errors.New("marshal seed document: it reads back differently: a value holds characters YAML cannot carry")
	}
	return b.Bytes(), nil
}
