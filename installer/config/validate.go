package config

import (
	"fmt"
	"net/netip"
	"reflect"
	"regexp"
	"slices"
	"strings"

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
	return v.problems
}

type validator struct {
	src      *Source
	catalog  manifests.Catalog
	problems Problems
}

func (v *validator) report(warning bool, path, format string, args ...any) {
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

// failedUnder reports whether anything at or below path failed to decode;
// checks that reason about a whole subtree skip it then, rather than pile
// consequences of one typo on top of its own message.
func (v *validator) failedUnder(path string) bool {
	if v.src == nil {
		return false
	}
	for p := range v.src.Failed {
		if p == path || strings.HasPrefix(p, path+".") || strings.HasPrefix(p, path+"[") {
			return true
		}
	}
	return false
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
}

var interfaceNameRE = regexp.MustCompile(`^[A-Za-z0-9_.:@-]{1,15}$`)

func (v *validator) network(n Network) {
	if v.failed("network.interface") {
		// already reported
	} else if n.Interface == "" {
		v.warnf("network.interface", "not set: airlock will not serve DHCP until you name the provisioning NIC (airlock init --interface IF)")
	} else if !interfaceNameRE.MatchString(n.Interface) || n.Interface == "." || n.Interface == ".." {
		v.errorf("network.interface", "%q is not a valid Linux interface name (1-15 letters, digits, '-', '_', '.')", n.Interface)
	}
	if !n.Subnet.IsValid() {
		return
	}
	subnetOK := v.prefix("network.subnet", n.Subnet, true)
	if subnetOK && n.Subnet.Bits() > 29 {
		v.errorf("network.subnet", "%s is too small for a provisioning network: use /29 or larger", n.Subnet)
		subnetOK = false
	}
	if !subnetOK {
		return
	}
	v.hostIn("network.address", n.Address, n.Subnet)
	v.hostIn("network.gateway", n.Gateway, n.Subnet)
	if n.Gateway.IsValid() && n.Gateway == n.Address {
		v.errorf("network.gateway", "%s is airlock's own address; leave gateway out if the network has no router", n.Gateway)
	}
	if r := n.DynamicRange; r != nil {
		if v.rangeIn("network.dynamicRange", *r, n.Subnet) {
			if n.Address.IsValid() && r.Contains(n.Address) {
				v.errorf("network.dynamicRange", "contains airlock's own address %s: move the range or network.address", n.Address)
			}
			if n.Gateway.IsValid() && r.Contains(n.Gateway) {
				v.errorf("network.dynamicRange", "contains the gateway %s", n.Gateway)
			}
		}
		if n.Mode == ModeProxy {
			v.warnf("network.dynamicRange", "ignored in proxy mode: the existing DHCP server hands out addresses")
		}
	} else if n.Mode == ModeFull {
		v.errorf("network.dynamicRange", "required in full mode: airlock needs addresses to hand out")
	}
	for i, a := range n.DNS {
		if a.IsValid() && !a.Is4() {
			v.errorf(fmt.Sprintf("network.dns[%d]", i), "%s: DHCPv4 can only offer IPv4 servers", a)
		}
	}
	for i, a := range n.NTP {
		if a.IsValid() && !a.Is4() {
			v.errorf(fmt.Sprintf("network.ntp[%d]", i), "%s: DHCPv4 can only offer IPv4 servers", a)
		}
	}
	if n.LeaseTime != 0 && (n.LeaseTime < Duration(60e9) || n.LeaseTime > Duration(7*24*3600e9)) {
		v.errorf("network.leaseTime", "%s is outside 1m to 168h", n.LeaseTime.String())
	}
	seen := []namedPrefix{{"network.subnet", n.Subnet}}
	for i, r := range n.RelayedSubnets {
		path := fmt.Sprintf("network.relayedSubnets[%d]", i)
		if !r.Subnet.IsValid() || !v.prefix(path+".subnet", r.Subnet, true) {
			continue
		}
		if other, clash := overlapping(seen, r.Subnet); clash {
			v.errorf(path+".subnet", "%s overlaps %s (%s)", r.Subnet, other.path, other.p)
			continue
		}
		seen = append(seen, namedPrefix{path + ".subnet", r.Subnet})
		v.hostIn(path+".relayAddress", r.RelayAddress, r.Subnet)
		v.hostIn(path+".gateway", r.Gateway, r.Subnet)
		if r.DynamicRange != nil {
			v.rangeIn(path+".dynamicRange", *r.DynamicRange, r.Subnet)
		}
	}
	if n.Mode == ModeProxy && len(n.RelayedSubnets) > 0 {
		v.warnf("network.relayedSubnets", "ignored in proxy mode: relayed requests get their addresses from the existing DHCP server")
	}
}

// String renders a Duration for messages.
func (d Duration) String() string {
	b, _ := d.MarshalText()
	return string(b)
}

type namedPrefix struct {
	path string
	p    netip.Prefix
}

func overlapping(list []namedPrefix, p netip.Prefix) (namedPrefix, bool) {
	for _, x := range list {
		if x.p.Overlaps(p) {
			return x, true
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
		for j, mac := range m.MACs {
			mp := fmt.Sprintf("%s.match.macs[%d]", path, j)
			if prev, dup := macs[mac]; dup && mac != "" {
				v.errorf(mp, "MAC %s is already matched by %s", mac, prev)
			}
			macs[mac] = mp
		}
		for j, s := range m.Serials {
			sp := fmt.Sprintf("%s.match.serials[%d]", path, j)
			if prev, dup := serials[s]; dup && s != "" {
				v.errorf(sp, "serial %q is already matched by %s", s, prev)
			}
			serials[s] = sp
		}
		for j, rack := range m.Racks {
			if len(a.Racks) > 0 && !rackNames[rack] {
				v.warnf(fmt.Sprintf("%s.match.racks[%d]", path, j), "rule can never match on rack %q: it is not in the rack plan", rack)
			}
		}
		if m.MinMemory != 0 && m.MaxMemory != 0 && m.MinMemory > m.MaxMemory {
			v.warnf(path+".match", "rule can never match: minMemory %s is more than maxMemory %s", m.MinMemory, m.MaxMemory)
		}
		if m.MaxGPUs != nil && m.MinGPUs > *m.MaxGPUs {
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
		v.hostname(path+".hostname", r.Hostname, hostnames, m)
		if r.Address.IsValid() {
			v.staticAddress(path+".address", r.Address, a.Network, addresses)
			if !m.Identifies() || len(m.MACs)+len(m.Serials) > 1 {
				v.errorf(path+".address", "a static address needs a rule that names exactly one machine (one MAC or one serial)")
			}
		}
		v.bondsAndVLANs(path, r)
		v.installDisk(path+".installDisk", r.InstallDisk)
		if m.IsEmpty() && catchAll == "" {
			catchAll = fmt.Sprintf("rule %q (%s)", r.Name, path)
		}
	}
	if partial {
		return
	}
	cp, cpKnown := countControlPlanes(a.Machines)
	if cpKnown && cp > 0 && cp%2 == 0 {
		v.warnf("machines", "%d control-plane machines: etcd needs a majority, so an even count tolerates no more failures than %d; use an odd number", cp, cp-1)
	}
	if len(a.Machines) > 0 && !slices.ContainsFunc(a.Machines, func(r Rule) bool { return r.Role == RoleControlPlane }) {
		v.errorf("machines", "no rule gives the control-plane role: the cluster needs at least one control plane")
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
		n += max(len(r.Match.MACs), len(r.Match.Serials))
	}
	return n, true
}

func (v *validator) hostname(path, h string, seen map[string]string, m Match) {
	if h == "" {
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
	if !dnsLabelRE.MatchString(sample) {
		v.errorf(path, "%q does not make a DNS label: use lower-case letters, digits and '-'", h)
		return
	}
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

func (v *validator) staticAddress(path string, p netip.Prefix, n Network, seen map[netip.Addr]string) {
	a := p.Addr()
	if prev, dup := seen[a]; dup {
		v.errorf(path, "address %s is already given to %s", a, prev)
	}
	seen[a] = path
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
	for _, r := range n.RelayedSubnets {
		if r.Subnet.IsValid() && r.Subnet.Contains(a) {
			if r.DynamicRange != nil && r.DynamicRange.Contains(a) {
				v.errorf(path, "%s is inside the dynamic range of relayed subnet %s", a, r.Subnet)
			}
			return
		}
	}
	v.warnf(path, "%s is outside the provisioning network and every relayed subnet; make sure it is routed", a)
}

var bondNameRE = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,14}$`)

func (v *validator) bondsAndVLANs(path string, r Rule) {
	links := map[string]bool{}
	for i, b := range r.Bonds {
		bp := fmt.Sprintf("%s.bonds[%d]", path, i)
		if b.Name != "" && !bondNameRE.MatchString(b.Name) {
			v.errorf(bp+".name", "%q is not a valid interface name", b.Name)
		}
		if links[b.Name] {
			v.errorf(bp+".name", "bond %q is defined twice", b.Name)
		}
		links[b.Name] = true
		if len(b.Interfaces) == 1 {
			v.warnf(bp+".interfaces", "a bond of one interface gives no redundancy")
		}
		if b.MTU != 0 && (b.MTU < 576 || b.MTU > 9216) {
			v.errorf(bp+".mtu", "%d is outside 576-9216", b.MTU)
		}
	}
	vlans := map[string]bool{}
	for i, vl := range r.VLANs {
		vp := fmt.Sprintf("%s.vlans[%d]", path, i)
		if vl.ID < 1 || vl.ID > 4094 {
			v.errorf(vp+".id", "VLAN ID %d is outside 1-4094", vl.ID)
		}
		key := fmt.Sprintf("%s.%d", vl.Link, vl.ID)
		if vlans[key] {
			v.errorf(vp, "VLAN %d on %q is defined twice", vl.ID, vl.Link)
		}
		vlans[key] = true
	}
}

func (v *validator) installDisk(path string, d InstallDisk) {
	switch d.Policy {
	case DiskSerial:
		if d.Serial == "" {
			v.errorf(path+".serial", "required with policy serial")
		}
	default:
		if d.Serial != "" {
			v.warnf(path+".serial", "ignored unless policy is serial")
		}
	}
}

func (v *validator) admission(a *Answers) {
	if a.Admission.Policy == AdmitAllowlist && len(a.Machines) > 0 && !v.failedUnder("machines") && !slices.ContainsFunc(a.Machines, func(r Rule) bool { return r.Match.Identifies() }) {
		v.warnf("admission.policy", "allowlist admits only machines named by MAC or serial, and no rule names any: nothing will be installed")
	}
}

var versionRE = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+$`)

func (v *validator) cluster(a *Answers) {
	c := a.Cluster
	v.label("cluster.name", c.Name)
	if c.Distribution.Version != "" && !versionRE.MatchString(c.Distribution.Version) {
		v.errorf("cluster.distribution.version", "%q is not a Kubernetes version like v1.34.2", c.Distribution.Version)
	}
	nets := []namedPrefix{}
	if a.Network.Subnet.IsValid() {
		nets = append(nets, namedPrefix{"network.subnet", a.Network.Subnet.Masked()})
	}
	for i, r := range a.Network.RelayedSubnets {
		if r.Subnet.IsValid() {
			nets = append(nets, namedPrefix{fmt.Sprintf("network.relayedSubnets[%d].subnet", i), r.Subnet.Masked()})
		}
	}
	for _, np := range []namedPrefix{{"cluster.podCIDR", c.PodCIDR}, {"cluster.serviceCIDR", c.ServiceCIDR}} {
		if !np.p.IsValid() || !v.prefix(np.path, np.p, false) {
			continue
		}
		if other, clash := overlapping(nets, np.p); clash {
			v.errorf(np.path, "%s overlaps %s (%s)", np.p, other.path, other.p)
			continue
		}
		nets = append(nets, np)
	}
	if c.ServiceCIDR.IsValid() && c.ServiceCIDR.Addr().Is4() && c.ServiceCIDR.Bits() > 24 {
		v.warnf("cluster.serviceCIDR", "%s leaves fewer than 256 service addresses", c.ServiceCIDR)
	}
	if c.ControlPlaneEndpoint != "" {
		host, port, ok := strings.Cut(c.ControlPlaneEndpoint, ":")
		if !ok || host == "" || port == "" || strings.Trim(port, "0123456789") != "" {
			v.errorf("cluster.controlPlaneEndpoint", "%q is not host:port, e.g. 10.40.0.5:6443", c.ControlPlaneEndpoint)
		}
	} else if n, known := countControlPlanes(a.Machines); known && n > 1 && !v.failedUnder("machines") {
		v.warnf("cluster.controlPlaneEndpoint", "not set with %d control planes: nodes will use the first control plane's address and lose the API if it fails; set a virtual IP or load balancer", n)
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

// bundle warns when a bundle would be refused for want of a trusted key.
func (v *validator) bundle(b Bundle) {
	switch {
	case b.PublicKey != "" && b.TrustOnFirstUse:
		v.warnf("bundle.trustOnFirstUse", "ignored: publicKey names the key the bundle must be signed with")
	case b.Path != "" && b.PublicKey == "" && !b.TrustOnFirstUse && !v.failed("bundle.trustOnFirstUse"):
		v.warnf("bundle.publicKey", "not set: airlock refuses a bundle signed by a key nobody named; set it to the .pub file the bundle's builder gave you (out of band), or set trustOnFirstUse: true to trust the first key seen")
	}
}
