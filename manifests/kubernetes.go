package manifests

import (
	"fmt"
	"slices"
)

// DefaultKubernetesVersion is the Kubernetes release airlock installs when
// bundle.yaml names none: the newest patch of a minor still supported
// upstream that airlock has an image table for (kubernetesReleases).
const DefaultKubernetesVersion = "v1.35.4"

// KubeVIPImage is the kube-vip image that holds the control-plane VIP as a
// static pod on control-plane nodes.
const KubeVIPImage = "ghcr.io/kube-vip/kube-vip:v1.2.3"

// kubeRelease is what kubeadm of one Kubernetes version needs beside
// the four control-plane images tagged with the version itself: the tags
// kubeadm gives CoreDNS, pause and etcd (kubeadm's own constants, which
// change between minors and sometimes between patches).
type kubeRelease struct {
	Version string // vX.Y.Z
	CoreDNS string // tag of registry.k8s.io/coredns/coredns
	Pause   string // tag of registry.k8s.io/pause
	Etcd    string // tag of registry.k8s.io/etcd
}

// kubernetesReleases is the table of the Kubernetes versions airlock can put
// in a bundle.
//
// To add a version: build or download kubeadm of that version and run
//
//	kubeadm config images list --kubernetes-version vX.Y.Z
//
// then copy the coredns, pause and etcd tags it prints into a new row, and
// add the version to TestKubernetesImagesMatchKubeadm's list when that
// kubeadm is the one `make k8s-bins` builds (e2e/k8s/build.sh).
var kubernetesReleases = []kubeRelease{
	// v1.34 is out of upstream support (2026-10); its row stays for bundles
	// that still name it (checked against kubeadm v1.34.2).
	{Version: "v1.34.2", CoreDNS: "v1.12.1", Pause: "3.10.1", Etcd: "3.6.5-0"},
	{Version: "v1.35.4", CoreDNS: "v1.13.1", Pause: "3.10.1", Etcd: "3.6.6-0"},
}

// kubernetesRegistry is where kubeadm's images live under their upstream names.
const kubernetesRegistry = "registry.k8s.io"

// KubernetesVersions lists the versions KubernetesImages knows, oldest first.
func KubernetesVersions() []string {
	out := make([]string, len(kubernetesReleases))
	for i, r := range kubernetesReleases {
		out[i] = r.Version
	}
	return out
}

// KubernetesImages returns exactly what `kubeadm config images list
// --kubernetes-version VERSION` prints for version, in its order:
// kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy,
// coredns, pause, etcd. A version airlock has no table for is an error
// naming the ones it has.
func KubernetesImages(version string) ([]string, error) {
	r, err := kubernetesRelease(version)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, 7)
	for _, c := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"} {
		out = append(out, kubernetesRegistry+"/"+c+":"+r.Version)
	}
	return append(out,
		kubernetesRegistry+"/coredns/coredns:"+r.CoreDNS,
		kubernetesRegistry+"/pause:"+r.Pause,
		kubernetesRegistry+"/etcd:"+r.Etcd,
	), nil
}

// PauseImage returns the sandbox (pause) image kubeadm of version expects:
// the pause entry of KubernetesImages(version).
func PauseImage(version string) (string, error) {
	r, err := kubernetesRelease(version)
	if err != nil {
		return "", err
	}
	return kubernetesRegistry + "/pause:" + r.Pause, nil
}

// kubernetesRelease returns version's row of the table.
func kubernetesRelease(version string) (kubeRelease, error) {
	i := slices.IndexFunc(kubernetesReleases, func(r kubeRelease) bool { return r.Version == version })
	if i < 0 {
		return kubeRelease{}, fmt.Errorf("kubernetes version %q: airlock has no image table for it (known: %q)", version, KubernetesVersions())
	}
	return kubernetesReleases[i], nil
}
