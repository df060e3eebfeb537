package config

import (
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"

	"airlock.dev/airlock/manifests"
)

// Validate checks the answers as a whole and returns every problem found,
// errors and warnings, in one list. src may be nil (answers built by the
// wizard); when given, problems carry the file, line and column.
func (a *Answers) Validate(src *Source) Problems {
	v := &validator{src: src, catalog: manifests.Default()}
	v.fieldTags(reflect.ValueOf(a).Elem(), "")
	v.site(a.Site)
	v.network(a.Network)
	v.racks(a.Racks)
	v.machines(a)
	v.admission(a)
	v.cluster(a)
	v.platform(a)
	v.bundle(a.Bundle)
	v.problems.Sort()
	return v.omitted.appendTo(v.problems)
}

type validator struct {
	src      *Source
	catalog  manifests.Catalog
	problems Problems
	omitted  omitted // problems past maxKeptProblems, counted
}

func (v *validator) report(warning bool, path, format string, args ...any) {
	if len(v.problems) >= maxKeptProblems {
		v.omitted.count(Problem{Warning: warning}) // counted, not formatted
		return
	}
	p := Problem{Path: path, Message: fmt.Sprintf(format, args...), Warning: warning}
	if v.src != nil {
		p.File = v.src.File
		if pos, ok := v.src.Positions.Lookup(path); ok {
			p.Line, p.Col = pos.Line, pos.Col
		}
	}
	v.problems = append(v.problems, p)
}

func (v *validator) errorf(path, format string, args ...any) { v.report(false, path, format, args...) }
func (v *validator) warnf(path, format string, args ...any)  { v.report(true, path, format, args...) }

// failed reports whether decoding path already reported a problem, so a
// zero value there is not also called missing.
func (v *validator) failed(path string) bool {
	return v.src != nil && v.src.Failed[path]
}

// written returns where path was written in the file, if it was.
func (v *validator) written(path string) (Pos, bool) {
	if v.src == nil {
		return Pos{}, false
	}
	pos, ok := v.src.Positions[path]
	return pos, ok
}

// failedUnder reports whether anything at or below path failed to decode;
// checks that reason about a whole subtree skip it then, rather than pile
// consequences of one typo on top of its own message.
func (v *validator) failedUnder(path string) bool {
	if v.src == nil {
		return false
	}
	if v.src.failedTree == nil {
		v.src.failedTree = map[string]bool{}
		for p := range v.src.Failed {
			for ; p != "" && !v.src.failedTree[p]; p = parentPath(p) {
				v.src.failedTree[p] = true
			}
		}
	}
	return v.src.failedTree[path]
}

// fieldTags walks the struct and checks what the field tags declare (the
// same tags the JSON Schema is made from): required fields that are missing
// and string values outside their enum. Nested fields are checked only
// inside parents that are present.
func (v *validator) fieldTags(rv reflect.Value, path string) {
	switch rv.Kind() {
	case reflect.Pointer:
		if !rv.IsNil() {
			v.fieldTags(rv.Elem(), path)
		}
	case reflect.Slice:
		if k := rv.Type().Elem().Kind(); k != reflect.Struct && k != reflect.Pointer && k != reflect.Slice {
			return // scalars carry no tags
		}
		for i := range rv.Len() {
			v.fieldTags(rv.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
	case reflect.Struct:
		if reflect.PointerTo(rv.Type()).Implements(textUnmarshalerType) {
			return
		}
		t := rv.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			child := joinPath(path, name)
			fv := rv.Field(i)
			if f.Tag.Get("required") == "true" && fv.IsZero() && !v.failed(child) {
				v.errorf(child, "required field is missing")
				continue
			}
			if enum := f.Tag.Get("enum"); enum != "" && fv.Kind() == reflect.String && fv.String() != "" {
				if allowed := strings.Split(enum, ","); !slices.Contains(allowed, fv.String()) {
					v.errorf(child, "unknown value %q: use %s", fv.String(), orList(allowed))
				}
				continue
			}
			v.fieldTags(fv, child)
		}
	}
}

var dnsLabelRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
var dnsNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$`)

func (v *validator) label(path, s string) {
	if s != "" && !dnsLabelRE.MatchString(s) {
		v.errorf(path, "%q is not a DNS label: use lower-case letters, digits and '-', at most 63, not starting or ending with '-'", s)
	}
}

func (v *validator) site(s Site) {
	v.label("site.name", s.Name)
	if s.Domain != "" && (len(s.Domain) > 253 || !dnsNameRE.MatchString(s.Domain)) {
		v.errorf("site.domain", "%q is not a DNS domain name", s.Domain)
	}
	seen := map[string]int{}
	for i, k := range s.SSHAuthorizedKeys {
		path := fmt.Sprintf("site.sshAuthorizedKeys[%d]", i)
		key, problem := authorizedKey(k)
		if problem != "" {
			v.errorf(path, "%s", problem)
			continue
		}
		if j, dup := seen[key]; dup {
			v.warnf(path, "the same key as site.sshAuthorizedKeys[%d]", j)
		}
		seen[key] = i
	}
}

// maxAuthorizedKeyLen bounds one authorized_keys line (an RSA 16384-bit
// key with options fits).
const maxAuthorizedKeyLen = 16 << 10

// authorizedKey checks that s is one authorized_keys line (options, a key
// type, the key, an optional comment) and returns the key's wire form, or
// says what is wrong.
func authorizedKey(s string) (string, string) {
	switch {
	case strings.Contains(s, "PRIVATE KEY"):
		return "", "this is a private key: give the public one (the .pub file, e.g. ~/.ssh/id_ed25519.pub) and keep this one secret"
	case len(s) > maxAuthorizedKeyLen:
		return "", fmt.Sprintf("%d bytes, more than the %d an authorized_keys line may have here", len(s), maxAuthorizedKeyLen)
	case strings.ContainsAny(s, "\r\n"):
		return "", "holds a line break: give one key per list item"
	case strings.TrimSpace(s) == "":
		return "", "an empty key"
	}
	pub, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(s))
	if err != nil {
		return "", fmt.Sprintf("not an authorized_keys line (want e.g. ssh-ed25519 AAAA... user@host): %v", err)
	}
	if len(rest) != 0 {
		return "", "more than one key in one item: give one key per list item"
	}
	return string(pub.Marshal()), ""
}

var interfaceNameRE = regexp.MustCompile(`^[A-Za-z0-9_.@-]{1,15}$`)

// validInterfaceName reports whether s can name a Linux network interface
// (the kernel takes at most 15 bytes, never '/', ':' or white space, nor
// "." or ".."); airlock takes printable ASCII only.
func validInterfaceName(s string) bool {
	return interfaceNameRE.MatchString(s) && s != "." && s != ".."
}

// maxServers bounds the DNS and NTP servers offered: a DHCP option holds at
// most 63 IPv4 addresses, and resolvers use the first three.
const maxServers = 8

// specialNets are IPv4 networks no provisioning network, server or address
// may be in: "this network", loopback, link-local, multicast and the
// reserved block with the limited broadcast address.
var specialNets = []struct {
	p    netip.Prefix
	what string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "the all-zero \"this network\" block 0.0.0.0/8"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback (127.0.0.0/8)"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local (169.254.0.0/16)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast (224.0.0.0/4)"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved or broadcast (240.0.0.0/4)"},
}

// specialPrefix reports what special network p overlaps, or "".
func specialPrefix(p netip.Prefix) string {
	if !p.Addr().Is4() {
		return ""
	}
	for _, sp := range specialNets {
		if sp.p.Overlaps(p) {
			return sp.what
		}
	}
	return ""
}

// specialAddr reports why a cannot be a host or server on a network, or
// returns "".
func specialAddr(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return ""
	case a.IsUnspecified():
		return "the all-zero address"
	case a.IsLoopback():
		return "a loopback address"
	case a.IsMulticast():
		return "a multicast address"
	case a.IsLinkLocalUnicast():
		return "a link-local address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	}
	if a.Is4() {
		for _, sp := range specialNets {
			if sp.p.Contains(a) {
				return "in " + sp.what
			}
		}
	}
	return ""
}

// usableAddr reports (and returns false) an address that is special.
func (v *validator) usableAddr(path string, a netip.Addr) bool {
	if why := specialAddr(a); why != "" {
		v.errorf(path, "%s is %s, which no machine can use here", a, why)
		return false
	}
	return true
}

// servers checks a list of DNS or NTP servers offered over DHCPv4.
func (v *validator) servers(path string, list []netip.Addr) {
	if len(list) > maxServers {
		v.errorf(path, "%d servers: offer at most %d (a DHCP option carries at most 63, and clients use the first few)", len(list), maxServers)
	}
	seen := make(map[netip.Addr]bool, len(list))
	for i, a := range list {
		ip := fmt.Sprintf("%s[%d]", path, i)
		if !a.IsValid() {
			if !v.failed(ip) {
				v.errorf(ip, "an empty entry: name a server's IPv4 address")
			}
			continue
		}
		if !a.Is4() {
			v.errorf(ip, "%s: DHCPv4 can only offer IPv4 servers", a)
			continue
		}
		if !v.usableAddr(ip, a) {
			continue
		}
		if seen[a] {
			v.errorf(ip, "%s is listed twice", a)
		}
		seen[a] = true
	}
}

func (v *validator) network(n Network) {
	if v.failed("network.interface") {
		// already reported
	} else if n.Interface == "" {
		v.warnf("network.interface", "not set: airlock will not serve DHCP until you name the provisioning NIC (airlock init --interface IF)")
	} else if !validInterfaceName(n.Interface) {
		v.errorf("network.interface", "%q is not a valid Linux interface name (1-15 letters, digits, '-', '_', '.')", n.Interface)
	}
	v.servers("network.dns", n.DNS)
	v.servers("network.ntp", n.NTP)
	if !v.failed("network.leaseTime") && (n.LeaseTime < Duration(60e9) || n.LeaseTime > Duration(7*24*3600e9)) {
		v.errorf("network.leaseTime", "%s is outside 1m to 168h", n.LeaseTime.String())
	}
	if n.DynamicRange == nil && (n.Mode == ModeFull || n.Mode == ModeAuto) && !v.failed("network.dynamicRange") {
		why := "airlock needs addresses to hand out"
		if n.Mode == ModeAuto {
			why += " (auto turns into full when no other DHCP server answers); or set mode: proxy"
		}
		v.errorf("network.dynamicRange", "required in %s mode: %s", n.Mode, why)
	}
	seen := newPrefixIndex()
	if n.Subnet.IsValid() {
		if v.network4("network", n.Subnet, n.Address, n.Gateway, n.DynamicRange, 29) {
			seen.add(namedPrefix{path: "network.subnet", p: n.Subnet})
		}
		if n.Gateway.IsValid() && n.Gateway == n.Address {
			v.errorf("network.gateway", "%s is airlock's own address; leave gateway out if the network has no router", n.Gateway)
		}
		if r := n.DynamicRange; r != nil && r.Start.IsValid() && r.End.IsValid() && !r.End.Less(r.Start) {
			if n.Address.IsValid() && r.Contains(n.Address) {
				v.errorf("network.dynamicRange", "contains airlock's own address %s: move the range or network.address", n.Address)
			}
			if n.Gateway.IsValid() && r.Contains(n.Gateway) {
				v.errorf("network.dynamicRange", "contains the gateway %s", n.Gateway)
			}
		}
	}
	if n.DynamicRange != nil && n.Mode == ModeProxy {
		v.warnf("network.dynamicRange", "ignored in proxy mode: the existing DHCP server hands out addresses")
	}
	for i, r := range n.RelayedSubnets {
		path := fmt.Sprintf("network.relayedSubnets[%d]", i)
		v.servers(path+".dns", r.DNS)
		if !r.Subnet.IsValid() {
			continue
		}
		if !v.network4(path, r.Subnet, r.RelayAddress, r.Gateway, r.DynamicRange, 30) {
			continue
		}
		if other, clash := seen.overlapping(r.Subnet); clash {
			v.errorf(path+".subnet", "%s overlaps %s (%s)", r.Subnet, other.path, other.p)
			continue
		}
		seen.add(namedPrefix{path: path + ".subnet", p: r.Subnet})
	}
	if n.Mode == ModeProxy && len(n.RelayedSubnets) > 0 {
		v.warnf("network.relayedSubnets", "ignored in proxy mode: relayed requests get their addresses from the existing DHCP server")
	}
}

// network4 checks one IPv4 network airlock serves (the provisioning subnet,
// maxBits at most, or a relayed one) with an address of its own on it,
// a gateway and a range; it reports whether the subnet itself is sound.
func (v *validator) network4(path string, subnet netip.Prefix, own, gateway netip.Addr, r *Range, maxBits int) bool {
	sp := path + ".subnet"
	if !v.prefix(sp, subnet, true) {
		return false
	}
	if subnet.Bits() > maxBits {
		v.errorf(sp, "%s is too small to hand out addresses from: use /%d or larger", subnet, maxBits)
		return false
	}
	if why := specialPrefix(subnet); why != "" {
		v.errorf(sp, "%s overlaps %s: a network machines boot on must be ordinary unicast addresses", subnet, why)
		return false
	}
	ownPath := path + ".address"
	if path != "network" {
		ownPath = path + ".relayAddress"
	}
	v.hostIn(ownPath, own, subnet)
	v.hostIn(path+".gateway", gateway, subnet)
	if r != nil {
		v.rangeIn(path+".dynamicRange", *r, subnet)
	}
	return true
}

// String renders a Duration for messages.
func (d Duration) String() string {
	b, _ := d.MarshalText()
	return string(b)
}

type namedPrefix struct {
	path string
	p    netip.Prefix
	i    int // index in the list it came from
}

// prefixIndex answers "which prefix added so far overlaps this one" in at
// most 129 map lookups, whatever the number of prefixes: two prefixes
// overlap when one contains the other, so it looks for p's ancestors
// among those added, and for p among the ancestors of those added.
type prefixIndex struct {
	added map[netip.Prefix]namedPrefix
	under map[netip.Prefix]namedPrefix // every ancestor of an added prefix, and one added below it
}

func newPrefixIndex() *prefixIndex {
	return &prefixIndex{added: map[netip.Prefix]namedPrefix{}, under: map[netip.Prefix]namedPrefix{}}
}

func (x *prefixIndex) add(np namedPrefix) {
	p := np.p.Masked()
	if _, ok := x.added[p]; !ok {
		x.added[p] = np
	}
	for bits := p.Bits(); bits >= 0; bits-- {
		q, _ := p.Addr().Prefix(bits)
		if _, ok := x.under[q]; ok {
			break // and so are all of q's ancestors
		}
		x.under[q] = np
	}
}

// overlapping returns a prefix added before that overlaps p.
func (x *prefixIndex) overlapping(p netip.Prefix) (namedPrefix, bool) {
	p = p.Masked()
	for bits := p.Bits(); bits >= 0; bits-- {
		q, _ := p.Addr().Prefix(bits)
		if np, ok := x.added[q]; ok {
			return np, true
		}
	}
	np, ok := x.under[p]
	return np, ok
}

// containing returns a prefix added before that contains a.
func (x *prefixIndex) containing(a netip.Addr) (namedPrefix, bool) {
	for bits := a.BitLen(); bits >= 0; bits-- {
		q, _ := a.Prefix(bits)
		if np, ok := x.added[q]; ok {
			return np, true
		}
	}
	return namedPrefix{}, false
}

// prefix checks that p is an IPv4 network address; it reports and returns
// false otherwise.
func (v *validator) prefix(path string, p netip.Prefix, ipv4Only bool) bool {
	if ipv4Only && !p.Addr().Is4() {
		v.errorf(path, "%s is not IPv4: provisioning uses DHCPv4", p)
		return false
	}
	if p.Masked() != p {
		v.errorf(path, "%s has host bits set; did you mean %s?", p, p.Masked())
		return false
	}
	return true
}

// hostIn checks that a (when set) is a usable host address of p.
func (v *validator) hostIn(path string, a netip.Addr, p netip.Prefix) bool {
	if !a.IsValid() {
		return true
	}
	if !p.Contains(a) {
		v.errorf(path, "%s is outside the subnet %s", a, p)
		return false
	}
	if a == p.Masked().Addr() {
		v.errorf(path, "%s is the network address of %s, not a host address", a, p)
		return false
	}
	if a == broadcast(p) {
		v.errorf(path, "%s is the broadcast address of %s, not a host address", a, p)
		return false
	}
	return true
}

func (v *validator) rangeIn(path string, r Range, p netip.Prefix) bool {
	if !r.Start.IsValid() || !r.End.IsValid() {
		return false
	}
	okStart := v.hostIn(path+".start", r.Start, p)
	okEnd := v.hostIn(path+".end", r.End, p)
	if !okStart || !okEnd {
		return false
	}
	if r.End.Less(r.Start) {
		v.errorf(path, "start %s is after end %s", r.Start, r.End)
		return false
	}
	return true
}

func broadcast(p netip.Prefix) netip.Addr {
	return fromUint32(toUint32(p.Masked().Addr()) | uint32(1)<<(32-p.Bits()) - 1)
}

func (v *validator) racks(racks []Rack) {
	names := map[string]string{}
	tors := map[string]string{}
	for i, r := range racks {
		path := fmt.Sprintf("racks[%d]", i)
		v.label(path+".name", r.Name)
		if prev, dup := names[r.Name]; dup && r.Name != "" {
			v.errorf(path+".name", "rack %q is already defined at %s", r.Name, prev)
		}
		names[r.Name] = path
		if prev, dup := tors[r.ToR]; dup && r.ToR != "" {
			v.errorf(path+".tor", "switch %q is already the ToR of %s", r.ToR, prev)
		}
		tors[r.ToR] = path
		ports := map[string]bool{}
		for j, p := range r.Ports {
			pp := fmt.Sprintf("%s.ports[%d]", path, j)
			if ports[p.Port] && p.Port != "" {
				v.errorf(pp+".port", "port %q is listed twice in rack %q", p.Port, r.Name)
			}
			ports[p.Port] = true
			if p.Serial == "" && p.MAC == "" {
				v.errorf(pp, "name the expected machine by serial or mac")
			}
			if _, written := v.written(pp + ".serial"); written || p.Serial != "" {
				if problem := SerialProblem(p.Serial); problem != "" {
					v.errorf(pp+".serial", "%s", problem)
				}
			}
			if p.MAC != "" {
				if problem := p.MAC.Problem(); problem != "" {
					v.errorf(pp+".mac", "%s", problem)
				}
			}
		}
	}
}

var hostnamePlaceholderRE = regexp.MustCompile(`\{([^{}]*)\}`)

func (v *validator) machines(a *Answers) {
	rackNames := map[string]bool{}
	for _, r := range a.Racks {
		rackNames[r.Name] = true
	}
	macs := map[MAC]string{}
	serials := map[string]string{}
	hostnames := map[string]string{}
	addresses := map[netip.Addr]string{}
	relayed := newPrefixIndex()
	for i, r := range a.Network.RelayedSubnets {
		if r.Subnet.IsValid() {
			relayed.add(namedPrefix{p: r.Subnet, i: i})
		}
	}
	names := &hostnameIndex{byPrefix: map[string][]hostnameTemplate{}}
	catchAll := ""
	// A rule that did not fully decode is skipped, and so are the checks
	// across rules, which would reason about what the rule was meant to say.
	partial := v.failedUnder("machines")
	for i, r := range a.Machines {
		path := fmt.Sprintf("machines[%d]", i)
		if v.failedUnder(path) {
			continue
		}
		if catchAll != "" && !partial {
			v.warnf(path, "rule %q can never match: %s before it matches every machine", r.Name, catchAll)
		}
		m := r.Match
		v.emptyLists(path+".match", m)
		for j, mac := range m.MACs {
			mp := fmt.Sprintf("%s.match.macs[%d]", path, j)
			if problem := mac.Problem(); problem != "" {
				if !v.failed(mp) {
					v.errorf(mp, "%s", problem)
				}
				continue
			}
			if prev, dup := macs[mac]; dup {
				v.errorf(mp, "MAC %s is already matched by %s", mac, prev)
			} else {
				macs[mac] = mp
			}
		}
		for j, s := range m.Serials {
			sp := fmt.Sprintf("%s.match.serials[%d]", path, j)
			if problem := SerialProblem(s); problem != "" {
				v.errorf(sp, "%s", problem)
				continue
			}
			if prev, dup := serials[s]; dup {
				v.errorf(sp, "serial %q is already matched by %s", s, prev)
			} else {
				serials[s] = sp
			}
		}
		for j, rack := range m.Racks {
			rp := fmt.Sprintf("%s.match.racks[%d]", path, j)
			switch {
			case rack == "":
				v.errorf(rp, "an empty rack name matches no rack (machines whose rack is unknown have none); remove it or name a rack")
			case !dnsLabelRE.MatchString(rack):
				v.errorf(rp, "%q is not a rack name: racks are DNS labels (lower-case letters, digits and '-'), so it can never match", rack)
			case len(a.Racks) > 0 && !rackNames[rack]:
				v.warnf(rp, "rule can never match on rack %q: it is not in the rack plan", rack)
			}
		}
		for j, model := range m.GPUModels {
			if problem := textProblem(model); problem != "" {
				v.errorf(fmt.Sprintf("%s.match.gpuModels[%d]", path, j), "%s", problem)
			}
		}
		if m.MinGPUs < 0 {
			v.errorf(path+".match.minGPUs", "must not be negative")
		}
		if m.MaxGPUs != nil && *m.MaxGPUs < 0 {
			v.errorf(path+".match.maxGPUs", "must not be negative: no machine has fewer than 0 GPUs")
		}
		if m.MinMemory != 0 && m.MaxMemory != 0 && m.MinMemory > m.MaxMemory {
			v.warnf(path+".match", "rule can never match: minMemory %s is more than maxMemory %s", m.MinMemory, m.MaxMemory)
		}
		if m.MaxGPUs != nil && *m.MaxGPUs >= 0 && m.MinGPUs > *m.MaxGPUs {
			v.warnf(path+".match", "rule can never match: minGPUs %d is more than maxGPUs %d", m.MinGPUs, *m.MaxGPUs)
		}
		if m.MaxGPUs != nil && *m.MaxGPUs == 0 && len(m.GPUModels) > 0 {
			v.warnf(path+".match", "rule can never match: gpuModels asks for GPUs but maxGPUs is 0")
		}
		if m.MinCPUs < 0 {
			v.errorf(path+".match.minCPUs", "must not be negative")
		}
		if r.Role == RoleGPUWorker && m.MaxGPUs != nil && *m.MaxGPUs == 0 {
			v.warnf(path+".role", "gpu-worker for machines without GPUs (maxGPUs: 0)")
		}
		v.hostname(path+".hostname", r.Hostname, a.Site.Domain, hostnames, m, names)
		if r.Address.IsValid() {
			v.staticAddress(path+".address", r.Address, a.Network, relayed, addresses, len(m.MACs) == 1)
			if !m.Identifies() || len(m.MACs)+len(m.Serials) > 1 {
				v.errorf(path+".address", "a static address needs a rule that names exactly one machine (one MAC or one serial)")
			}
		}
		v.bondsAndVLANs(path, r)
		v.installDisk(path+".installDisk", r.InstallDisk)
		if r.OSImage != "" && !OSImageNameRE.MatchString(r.OSImage) {
			v.errorf(path+".osImage", "%q is not an OS image name (1 to 63 lower-case letters, digits, '.', '_', '-', starting and ending with a letter or digit, as in the bundle's osImages)", r.OSImage)
		}
		if m.IsEmpty() && catchAll == "" {
			catchAll = fmt.Sprintf("rule %q (%s)", r.Name, path)
		}
	}
	if partial {
		return
	}
	names.collisions(v)
	cp, cpKnown := countControlPlanes(a.Machines)
	if cpKnown && cp > 0 && cp%2 == 0 {
		v.warnf("machines", "%d control-plane machines: etcd needs a majority, so an even count tolerates no more failures than %d; use an odd number", cp, cp-1)
	}
	if len(a.Machines) > 0 && !slices.ContainsFunc(a.Machines, func(r Rule) bool { return r.Role == RoleControlPlane }) {
		v.errorf("machines", "no rule gives the control-plane role: the cluster needs at least one control plane")
	}
}

// emptyLists reports match lists written but empty (serials: [] or
// serials: ~): such a list sets no condition, so the rule matches every
// machine, which is never what a list meant to name machines says.
func (v *validator) emptyLists(path string, m Match) {
	if v.src == nil {
		return
	}
	for _, l := range []struct {
		name string
		n    int
	}{{"macs", len(m.MACs)}, {"serials", len(m.Serials)}, {"racks", len(m.Racks)}, {"gpuModels", len(m.GPUModels)}} {
		p := path + "." + l.name
		if _, written := v.src.Positions[p]; written && l.n == 0 && !v.failed(p) {
			v.errorf(p, "an empty list sets no condition, so the rule would match every machine; remove %s or list what to match", l.name)
		}
	}
}

// countControlPlanes counts control-plane machines when every
// control-plane rule names its machines; known is false otherwise.
func countControlPlanes(rules []Rule) (n int, known bool) {
	for _, r := range rules {
		if r.Role != RoleControlPlane {
			continue
		}
		if !r.Match.Identifies() {
			return 0, false
		}
		macs, serials := r.Match.named()
		n += max(macs, serials)
	}
	return n, true
}

func (v *validator) hostname(path, h, domain string, seen map[string]string, m Match, names *hostnameIndex) {
	if h == "" {
		return
	}
	if len(h) > 253 {
		v.errorf(path, "%d bytes long: a hostname is one DNS label of at most 63", len(h))
		return
	}
	placeholders := hostnamePlaceholderRE.FindAllStringSubmatch(h, -1)
	for _, ph := range placeholders {
		if !slices.Contains([]string{"rack", "index", "serial"}, ph[1]) {
			v.errorf(path, "unknown placeholder {%s}: use {rack}, {index} or {serial}", ph[1])
			return
		}
	}
	sample := hostnamePlaceholderRE.ReplaceAllString(h, "x1")
	if len(sample) > 63 {
		v.errorf(path, "%q makes a hostname of at least %d characters: a DNS label holds at most 63", h, len(sample))
		return
	}
	if !dnsLabelRE.MatchString(sample) {
		v.errorf(path, "%q does not make a DNS label: use lower-case letters, digits and '-'", h)
		return
	}
	if domain != "" && len(sample)+1+len(domain) > 253 {
		v.errorf(path, "%q.%s is longer than the 253 characters a DNS name can have: shorten the hostname or site.domain", h, domain)
		return
	}
	names.add(path, h, len(placeholders) > 0)
	if len(placeholders) == 0 {
		if n := len(m.MACs) + len(m.Serials); n != 1 {
			v.errorf(path, "%q is a fixed hostname but the rule can match more than one machine: add {index} or {serial}", h)
		}
	} else if !strings.Contains(h, "{index}") && !strings.Contains(h, "{serial}") {
		v.errorf(path, "%q can repeat between machines of the same rack: add {index} or {serial}", h)
	}
	if prev, dup := seen[h]; dup {
		v.errorf(path, "hostname %q is already used by %s", h, prev)
	}
	seen[h] = path
}

// staticAddress checks a rule's static address. With reservation (the
// rule names one MAC), DHCP hands the address out too, so it must be an
// IPv4 address of a subnet airlock serves.
func (v *validator) staticAddress(path string, p netip.Prefix, n Network, relayed *prefixIndex, seen map[netip.Addr]string, reservation bool) {
	a := p.Addr()
	if !v.usableAddr(path, a) {
		return
	}
	if prev, dup := seen[a]; dup {
		v.errorf(path, "address %s is already given to %s", a, prev)
	} else {
		seen[a] = path
	}
	if reservation && !a.Is4() {
		v.errorf(path, "%s is not IPv4: a rule naming one MAC gets its address from DHCPv4 as a reservation", a)
		return
	}
	if !n.Subnet.IsValid() {
		return
	}
	if n.Subnet.Contains(a) {
		if p.Bits() != n.Subnet.Bits() {
			v.errorf(path, "prefix length /%d differs from the subnet's /%d", p.Bits(), n.Subnet.Bits())
		}
		v.hostIn(path, a, n.Subnet)
		if a == n.Address {
			v.errorf(path, "%s is airlock's own address", a)
		}
		if n.Gateway == a {
			v.errorf(path, "%s is the gateway's address", a)
		}
		if n.DynamicRange != nil && n.DynamicRange.Contains(a) {
			v.errorf(path, "%s is inside network.dynamicRange; static addresses must be outside the pool", a)
		}
		return
	}
	if np, ok := relayed.containing(a); ok {
		r := n.RelayedSubnets[np.i]
		if r.DynamicRange != nil && r.DynamicRange.Contains(a) {
			v.errorf(path, "%s is inside the dynamic range of relayed subnet %s", a, r.Subnet)
		}
		return
	}
	if reservation && n.Mode != ModeProxy {
		v.errorf(path, "%s is outside the provisioning network and every relayed subnet, but the rule names one MAC, so DHCP would have to reserve it there: use an address of a subnet airlock serves", a)
		return
	}
	v.warnf(path, "%s is outside the provisioning network and every relayed subnet; make sure it is routed", a)
}

var bondNameRE = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,14}$`)

// member checks a bond member or VLAN link: a Linux interface name or a
// NIC's MAC address.
func (v *validator) member(path, name string) bool {
	if name == "" {
		v.errorf(path, "an empty interface name")
		return false
	}
	if strings.Count(name, ":") == 5 || strings.Count(name, "-") == 5 && len(name) == 17 {
		if problem := MAC(strings.ToLower(name)).Problem(); problem != "" {
			v.errorf(path, "%s", problem)
			return false
		}
		return true
	}
	if !validInterfaceName(name) {
		v.errorf(path, "%q is neither a Linux interface name (1-15 letters, digits, '-', '_', '.', no '/', ':' or spaces) nor a MAC address", name)
		return false
	}
	return true
}

func (v *validator) bondsAndVLANs(path string, r Rule) {
	links := map[string]bool{}
	for _, b := range r.Bonds {
		links[b.Name] = true
	}
	bondOf := map[string]string{} // member -> the bond it is in
	defined := map[string]bool{}
	for i, b := range r.Bonds {
		bp := fmt.Sprintf("%s.bonds[%d]", path, i)
		if b.Name != "" && !bondNameRE.MatchString(b.Name) {
			v.errorf(bp+".name", "%q is not a valid interface name", b.Name)
		}
		if defined[b.Name] {
			v.errorf(bp+".name", "bond %q is defined twice", b.Name)
		}
		defined[b.Name] = true
		if len(b.Interfaces) == 1 {
			v.warnf(bp+".interfaces", "a bond of one interface gives no redundancy")
		}
		for j, m := range b.Interfaces {
			mp := fmt.Sprintf("%s.interfaces[%d]", bp, j)
			if !v.member(mp, m) {
				continue
			}
			key := strings.ToLower(m)
			switch {
			case links[m]:
				v.errorf(mp, "%q is a bond itself; bonds are made of NICs", m)
			case bondOf[key] != "":
				v.errorf(mp, "%q is already a member of %s", m, bondOf[key])
			default:
				bondOf[key] = fmt.Sprintf("bond %q", b.Name)
			}
		}
		if b.MTU != 0 && (b.MTU < 576 || b.MTU > 9216) {
			v.errorf(bp+".mtu", "%d is outside 576-9216", b.MTU)
		}
		if b.Address.IsValid() {
			v.usableAddr(bp+".address", b.Address.Addr())
		}
	}
	vlans := map[string]bool{}
	for i, vl := range r.VLANs {
		vp := fmt.Sprintf("%s.vlans[%d]", path, i)
		if vl.ID < 1 || vl.ID > 4094 {
			v.errorf(vp+".id", "VLAN ID %d is outside 1-4094", vl.ID)
		}
		if vl.Link != "" && v.member(vp+".link", vl.Link) {
			switch {
			case bondOf[strings.ToLower(vl.Link)] != "":
				v.errorf(vp+".link", "%q is a member of %s, which carries its traffic: put the VLAN on the bond", vl.Link, bondOf[strings.ToLower(vl.Link)])
			case !links[vl.Link] && strings.HasPrefix(vl.Link, "bond"):
				v.errorf(vp+".link", "%q names no bond of this rule: define it under bonds or link the VLAN to a NIC", vl.Link)
			}
		}
		key := fmt.Sprintf("%s.%d", vl.Link, vl.ID)
		if vlans[key] {
			v.errorf(vp, "VLAN %d on %q is defined twice", vl.ID, vl.Link)
		}
		vlans[key] = true
		if vl.Address.IsValid() {
			v.usableAddr(vp+".address", vl.Address.Addr())
		}
	}
}

func (v *validator) installDisk(path string, d InstallDisk) {
	switch d.Policy {
	case DiskSerial:
		if d.Serial == "" {
			v.errorf(path+".serial", "required with policy serial")
		} else if problem := textProblem(d.Serial); problem != "" {
			v.errorf(path+".serial", "%s", problem)
		}
	default:
		if d.Serial != "" {
			v.warnf(path+".serial", "ignored unless policy is serial")
		}
	}
}

func (v *validator) admission(a *Answers) {
	if a.Admission.Policy == AdmitAny && !a.Site.Lab {
		v.errorf("admission.policy", "any admits every machine on the network, for a lab only: use allowlist (name the machines in the rules) or approve (an operator approves each); on a virtual rack set site.lab: true")
	}
	if a.Admission.Policy == AdmitAllowlist && len(a.Machines) > 0 && !v.failedUnder("machines") && !slices.ContainsFunc(a.Machines, func(r Rule) bool { return r.Match.Identifies() }) {
		v.warnf("admission.policy", "allowlist admits only machines named by MAC or serial, and no rule names any: nothing will be installed")
	}
}

// OSImageNameRE is the form of an OS image's name (the bundle's own
// check, bundle.ValidOSImageName, is the same: a test holds them equal).
// Whether the bundle has the image is checked when the engine opens it.
var OSImageNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

var versionRE = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+$`)

func (v *validator) cluster(a *Answers) {
	c := a.Cluster
	v.label("cluster.name", c.Name)
	if c.Distribution.Version != "" && !versionRE.MatchString(c.Distribution.Version) {
		v.errorf("cluster.distribution.version", "%q is not a Kubernetes version like v1.35.4", c.Distribution.Version)
	}
	nets := newPrefixIndex()
	if a.Network.Subnet.IsValid() {
		nets.add(namedPrefix{path: "network.subnet", p: a.Network.Subnet.Masked()})
	}
	for i, r := range a.Network.RelayedSubnets {
		if r.Subnet.IsValid() {
			nets.add(namedPrefix{path: fmt.Sprintf("network.relayedSubnets[%d].subnet", i), p: r.Subnet.Masked()})
		}
	}
	for _, np := range []namedPrefix{{path: "cluster.podCIDR", p: c.PodCIDR}, {path: "cluster.serviceCIDR", p: c.ServiceCIDR}} {
		if !np.p.IsValid() || !v.prefix(np.path, np.p, false) {
			continue
		}
		if other, clash := nets.overlapping(np.p); clash {
			v.errorf(np.path, "%s overlaps %s (%s)", np.p, other.path, other.p)
			continue
		}
		nets.add(np)
	}
	if c.ServiceCIDR.IsValid() && c.ServiceCIDR.Addr().Is4() && c.ServiceCIDR.Bits() > 24 {
		v.warnf("cluster.serviceCIDR", "%s leaves fewer than 256 service addresses", c.ServiceCIDR)
	}
	if c.ControlPlaneEndpoint != "" {
		v.endpoint(a, "cluster.controlPlaneEndpoint", c.ControlPlaneEndpoint)
	} else if n, known := countControlPlanes(a.Machines); known && n > 1 && !v.failedUnder("machines") {
		v.warnf("cluster.controlPlaneEndpoint", "not set with %d control planes: nodes will use the first control plane's address and lose the API if it fails; set a virtual IP or load balancer", n)
	}
}

var portRE = regexp.MustCompile(`^[1-9][0-9]{0,4}$`)

// endpoint checks a host:port the nodes reach the API server at: an IPv4
// address, an IPv6 address in brackets or a DNS name, and a decimal port
// 1-65535. An address must be one a machine can hold and none that
// airlock or DHCP already gives out.
func (v *validator) endpoint(a *Answers, path, ep string) {
	host, port, err := net.SplitHostPort(ep)
	if err != nil || host == "" {
		if strings.Count(ep, ":") > 1 && !strings.HasPrefix(ep, "[") {
			v.errorf(path, "%q is not host:port: write an IPv6 address in brackets, e.g. [fd00::5]:6443", ep)
			return
		}
		v.errorf(path, "%q is not host:port, e.g. 10.40.0.5:6443 or [fd00::5]:6443", ep)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || !portRE.MatchString(port) || n > 65535 {
		v.errorf(path, "%q: the port %q is not a decimal number 1-65535", ep, port)
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		if strings.ContainsAny(host, ":%") || len(host) > 253 || !dnsNameRE.MatchString(host) {
			v.errorf(path, "%q: %q is neither an IP address nor a DNS name (IPv6 addresses go in brackets: [fd00::5]:6443)", ep, host)
		}
		return
	}
	if addr.Zone() != "" {
		v.errorf(path, "%q: a zoned IPv6 address names a link, not an endpoint nodes can share", ep)
		return
	}
	if !strings.HasPrefix(ep, "[") && addr.Is6() {
		v.errorf(path, "%q: write IPv6 addresses in brackets, e.g. [fd00::5]:6443", ep)
		return
	}
	if !v.usableAddr(path, addr) {
		return
	}
	n := a.Network
	switch {
	case addr == n.Address:
		v.errorf(path, "%s is airlock's own address; the endpoint is a virtual IP or load balancer in front of the control planes", addr)
	case addr == n.Gateway:
		v.errorf(path, "%s is the gateway's address", addr)
	case n.DynamicRange != nil && n.Mode != ModeProxy && n.DynamicRange.Start.IsValid() && n.DynamicRange.End.IsValid() && n.DynamicRange.Contains(addr):
		v.errorf(path, "%s is inside network.dynamicRange: DHCP would give it to a machine; use an address outside the pool", addr)
	case a.Cluster.PodCIDR.IsValid() && a.Cluster.PodCIDR.Contains(addr):
		v.errorf(path, "%s is inside cluster.podCIDR %s", addr, a.Cluster.PodCIDR)
	case a.Cluster.ServiceCIDR.IsValid() && a.Cluster.ServiceCIDR.Contains(addr):
		v.errorf(path, "%s is inside cluster.serviceCIDR %s", addr, a.Cluster.ServiceCIDR)
	}
}

var migProfileRE = regexp.MustCompile(`^all-[a-z0-9.]+$`)

func (v *validator) platform(a *Answers) {
	p := a.Platform
	for _, name := range sortedKeys(p.Components) {
		if _, ok := v.catalog.Component(name); !ok {
			v.errorf("platform.components."+name, "unknown component %q; the catalog has: %s", name, strings.Join(v.catalog.Names(), ", "))
		}
	}
	for _, c := range v.catalog.Components {
		setting, ok := p.Components[c.Name]
		if ok && setting.Enabled != nil && !*setting.Enabled {
			continue
		}
		if !ok && !c.Default {
			continue
		}
		for _, req := range c.Requires {
			if s, ok := p.Components[req]; ok && s.Enabled != nil && !*s.Enabled {
				v.errorf("platform.components."+req+".enabled", "%s needs %s; turn both off or keep %s", c.Name, req, req)
			}
		}
	}
	g := p.GPU
	hasGPUWorkers := slices.ContainsFunc(a.Machines, func(r Rule) bool { return r.Role == RoleGPUWorker })
	switch g.Sharing {
	case GPUShareMIG:
		if g.MIG == nil || len(g.MIG.Profiles) == 0 {
			v.errorf("platform.gpu.mig.profiles", "sharing mig needs a MIG layout for each GPU model, e.g. A100-SXM4-80GB: all-1g.10gb")
		}
	case GPUShareTimeSlicing:
		if g.TimeSlicing == nil {
			v.errorf("platform.gpu.timeSlicing", "sharing time-slicing needs timeSlicing.replicas")
		}
	}
	if g.MIG != nil {
		if g.Sharing != GPUShareMIG {
			v.warnf("platform.gpu.mig", "ignored unless sharing is mig")
		}
		for _, model := range sortedKeys(g.MIG.Profiles) {
			layout := g.MIG.Profiles[model]
			path := "platform.gpu.mig.profiles." + model
			if !migProfileRE.MatchString(layout) {
				v.errorf(path, "%q is not a MIG layout: use all-disabled, all-balanced or all-<profile> like all-1g.10gb", layout)
				continue
			}
			ok, known := v.catalog.CheckMIGLayout(model, layout)
			switch {
			case !known:
				v.warnf(path, "GPU model %q is not in the catalog; its layout %q cannot be checked", model, layout)
			case !ok:
				v.errorf(path, "%s cannot be partitioned as %q; it supports %s", model, layout, strings.Join(v.catalog.MIGProfiles[model], ", "))
			}
		}
	}
	if g.TimeSlicing != nil {
		if g.Sharing != GPUShareTimeSlicing {
			v.warnf("platform.gpu.timeSlicing", "ignored unless sharing is time-slicing")
		}
		if g.TimeSlicing.Replicas < 2 || g.TimeSlicing.Replicas > 64 {
			v.errorf("platform.gpu.timeSlicing.replicas", "%d is outside 2-64", g.TimeSlicing.Replicas)
		}
	}
	if g.Sharing != "" && g.Sharing != GPUShareNone && !hasGPUWorkers && len(a.Machines) > 0 {
		v.warnf("platform.gpu.sharing", "GPU sharing is set but no rule gives the gpu-worker role")
	}
}

// orList renders a, b or c.
func orList(items []string) string {
	if len(items) == 1 {
		return items[0]
	}
	return strings.Join(items[:len(items)-1], ", ") + " or " + items[len(items)-1]
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// hostnameIndex finds fixed hostnames that another rule's template can
// also produce ("w-3" beside "w-{index}"). Templates are kept by the
// literal text before their first placeholder, so a fixed name is only
// compared with templates whose literal start it begins with; a budget
// bounds the comparisons, so that a file cannot make this quadratic.
type hostnameIndex struct {
	byPrefix map[string][]hostnameTemplate
	fixed    []hostnameTemplate
}

type hostnameTemplate struct {
	path, name string
	re         *regexp.Regexp // compiled when first needed
}

// maxHostnameComparisons bounds the template matches collisions makes.
const maxHostnameComparisons = 20_000

func (x *hostnameIndex) add(path, h string, template bool) {
	if !template {
		x.fixed = append(x.fixed, hostnameTemplate{path: path, name: h})
		return
	}
	prefix := h[:strings.IndexByte(h, '{')]
	x.byPrefix[prefix] = append(x.byPrefix[prefix], hostnameTemplate{path: path, name: h})
}

// placeholderPatterns are what each placeholder can expand to.
var placeholderPatterns = map[string]string{
	"{index}":  `[1-9][0-9]*`,
	"{rack}":   `[a-z0-9](?:[-a-z0-9]*[a-z0-9])?`,
	"{serial}": `[a-z0-9](?:[-a-z0-9]*[a-z0-9])?`,
}

func (t *hostnameTemplate) matches(name string) bool {
	if t.re == nil {
		var b strings.Builder
		b.WriteString("^")
		rest := t.name
		for {
			i := strings.IndexByte(rest, '{')
			if i < 0 {
				break
			}
			j := strings.IndexByte(rest[i:], '}')
			b.WriteString(regexp.QuoteMeta(rest[:i]))
			b.WriteString(placeholderPatterns[rest[i:i+j+1]])
			rest = rest[i+j+1:]
		}
		b.WriteString(regexp.QuoteMeta(rest) + "$")
		t.re = regexp.MustCompile(b.String())
	}
	return t.re.MatchString(name)
}

func (x *hostnameIndex) collisions(v *validator) {
	budget := maxHostnameComparisons
	for _, f := range x.fixed {
		for i := 0; i <= len(f.name); i++ {
			templates := x.byPrefix[f.name[:i]]
			for k := range templates {
				if budget--; budget < 0 {
					v.warnf("machines", "too many hostname templates to check every fixed hostname against them; airlock refuses duplicate hostnames when it assigns them")
					return
				}
				if templates[k].matches(f.name) {
					v.warnf(f.path, "hostname %q can also be made by %s (%q): two machines would get the same name", f.name, templates[k].path, templates[k].name)
				}
			}
		}
	}
}

// bundle warns when a bundle would be refused for want of a trusted key.
func (v *validator) bundle(b Bundle) {
	switch {
	case b.PublicKey != "" && b.TrustOnFirstUse:
		v.warnf("bundle.trustOnFirstUse", "ignored: publicKey names the key the bundle must be signed with")
	case b.Path != "" && b.PublicKey == "" && !b.TrustOnFirstUse && !v.failed("bundle.trustOnFirstUse"):
		v.warnf("bundle.publicKey", "not set: airlock refuses a bundle signed by a key nobody named; set it to the .pub file the bundle's builder gave you (out of band), or set trustOnFirstUse: true to trust the first key seen")
	}
}
