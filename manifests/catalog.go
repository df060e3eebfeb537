// Package manifests is the platform catalog as data: which components
// airlock can lay down on a cluster, in which order, which are on by
// default, and what NVIDIA GPU partitioning each GPU model supports.
// It imports nothing from the rest of airlock.
package manifests

import (
	"slices"
	"strings"
)

// Component is one platform component of the catalog.
type Component struct {
	Name        string   // catalog name, used in answer files
	Description string   // one line for plans and the wizard
	Default     bool     // installed unless the answer file turns it off
	Requires    []string // components that must be installed too
	GPU         bool     // only meaningful when the cluster has GPU workers
}

// Catalog is the ordered list of components: earlier ones are installed first.
type Catalog struct {
	Components []Component
	// MIGProfiles lists, per GPU model (as the NVIDIA driver names it), the
	// MIG instance profiles it can be split into.
	MIGProfiles map[string][]string
}

// Default returns the catalog that ships with airlock.
func Default() Catalog {
	return Catalog{
		Components: []Component{
			{Name: "cni", Description: "pod network (Calico)", Default: true},
			{Name: "registry", Description: "in-cluster OCI registry that takes over from the laptop at handover", Default: true},
			{Name: "cert-manager", Description: "certificates from the site CA", Default: true},
			{Name: "metallb", Description: "load-balancer addresses on bare metal", Default: true, Requires: []string{"cni"}},
			{Name: "ingress-nginx", Description: "HTTP ingress", Default: true, Requires: []string{"metallb"}},
			{Name: "local-storage", Description: "local persistent volumes on node disks", Default: true},
			{Name: "metrics-server", Description: "resource metrics for kubectl top and autoscaling", Default: true},
			{Name: "gpu-operator", Description: "NVIDIA driver, container toolkit, device plugin, DCGM and MIG manager", Default: true, GPU: true},
		},
		MIGProfiles: map[string][]string{
			"A30":             {"1g.6gb", "2g.12gb", "4g.24gb"},
			"A100-SXM4-40GB":  {"1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"},
			"A100-PCIE-40GB":  {"1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"},
			"A100-SXM4-80GB":  {"1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"},
			"A100-PCIE-80GB":  {"1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"},
			"H100-SXM5-80GB":  {"1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"},
			"H100-PCIE-80GB":  {"1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"},
			"H200-SXM5-141GB": {"1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"},
		},
	}
}

// Component returns the named component.
func (c Catalog) Component(name string) (Component, bool) {
	i := slices.IndexFunc(c.Components, func(x Component) bool { return x.Name == name })
	if i < 0 {
		return Component{}, false
	}
	return c.Components[i], true
}

// Names lists the component names in install order.
func (c Catalog) Names() []string {
	names := make([]string, len(c.Components))
	for i, x := range c.Components {
		names[i] = x.Name
	}
	return names
}

// MIG layouts that need no per-model profile.
var namedMIGLayouts = []string{"all-disabled", "all-enabled", "all-balanced"}

// CheckMIGLayout says whether layout (as the NVIDIA MIG manager names its
// configurations: all-disabled, all-enabled, all-balanced or all-<profile>)
// suits the GPU model. known is false when the catalog does not know the
// model, so the layout could not be checked.
func (c Catalog) CheckMIGLayout(model, layout string) (ok, known bool) {
	profiles, known := c.MIGProfiles[model]
	if slices.Contains(namedMIGLayouts, layout) {
		return true, known
	}
	profile, found := strings.CutPrefix(layout, "all-")
	if !found {
		return false, known
	}
	if !known {
		return true, false
	}
	return slices.Contains(profiles, profile), true
}
