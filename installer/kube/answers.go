package kube

import (
	"fmt"
	"net/netip"

	"airlock.dev/airlock/installer/config"
)

// SpecFromAnswers is the ClusterSpec of an answer file's cluster (its
// defaults applied by the config package). workers says whether any
// machine is a worker or gpu-worker: without one, control planes stay
// schedulable.
func SpecFromAnswers(c config.Cluster, workers bool) ClusterSpec {
	return ClusterSpec{
		Name:                    c.Name,
		Version:                 c.Distribution.Version,
		ControlPlaneEndpoint:    c.ControlPlaneEndpoint,
		PodCIDR:                 c.PodCIDR,
		ServiceCIDR:             c.ServiceCIDR,
		ControlPlaneSchedulable: !workers,
	}
}

// DriverFor returns the Driver of an answer file's
// cluster.distribution.name ("" is kubeadm).
func DriverFor(name string) (Driver, error) {
	switch name {
	case "", "kubeadm":
		return Kubeadm{}, nil
	}
	return nil, fmt.Errorf("Kubernetes distribution %q: airlock knows kubeadm", name)
}

// APIServerURL is the URL of the cluster's API server for airlock's own
// credentials (SaveAPIServer): the control-plane endpoint, or the first
// control plane's address.
func APIServerURL(c ClusterSpec, firstCP netip.Addr) (string, error) {
	if c.ControlPlaneEndpoint == "" && !firstCP.IsValid() {
		return "", fmt.Errorf("API server URL: no control-plane endpoint and no first control plane")
	}
	return "https://" + c.endpoint(firstCP), nil
}
