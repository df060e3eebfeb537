package kube

import (
	"net/netip"
	"testing"

	"airlock.dev/airlock/installer/config"
)

// The answer file's defaults make a valid cluster whose configurations
// render, with and without a VIP.
func TestSpecFromAnswers(t *testing.T) {
	a := config.Defaults()
	c := SpecFromAnswers(a.Cluster, true)
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.ControlPlaneSchedulable || !SpecFromAnswers(a.Cluster, false).ControlPlaneSchedulable {
		t.Error("control planes schedulable exactly when there are no workers")
	}
	u, err := APIServerURL(c, cp1)
	if err != nil || u != "https://10.40.0.11:6443" {
		t.Errorf("API server without a VIP: %q %v", u, err)
	}
	a.Cluster.ControlPlaneEndpoint = "10.40.0.10:6443"
	c = SpecFromAnswers(a.Cluster, true)
	if u, err := APIServerURL(c, cp1); err != nil || u != "https://10.40.0.10:6443" {
		t.Errorf("API server with a VIP: %q %v", u, err)
	}
	if _, err := APIServerURL(SpecFromAnswers(config.Defaults().Cluster, true), netip.Addr{}); err == nil {
		t.Error("no endpoint at all accepted")
	}
	d, err := DriverFor(a.Cluster.Distribution.Name)
	if err != nil || d.Name() != "kubeadm" {
		t.Fatalf("driver %v %v", d, err)
	}
	ns, err := d.NodeSeed(c, NodeSpec{Hostname: "cp1", Address: cp1, Role: RoleControlPlane, Init: true}, Secrets{PKI: fixturePKI(t), Token: testToken}, netip.Addr{}, t0)
	if err != nil || fileOf(ns, KubeVIPManifest) == nil {
		t.Errorf("defaults with a VIP: %v", err)
	}
	if _, err := DriverFor("rke2"); err == nil {
		t.Error("an unknown distribution accepted")
	}
}
