package kube

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"sigs.k8s.io/yaml"

	"airlock.dev/airlock/installer/lab/netns"
)

// kube-vip's credential from the seed, against a real kube-apiserver with
// the RBAC manifest the first control plane applies: it wins its Lease
// with client-go's leader election (as kube-vip runs it) and is refused
// everything else. The manifest is applied with airlock's admin
// credential, as kubectl does it with admin.conf on the node.
func TestKubeVIPCredentialOnRealAPIServer(t *testing.T) {
	bin := k8sBinDir(t)
	netns.RequireTool(t, "nsenter", "util-linux")
	ns := netns.NewTest(t, "kv")
	netns.MustVeth(t, ns, "kv0", ns, "kv1")
	const nodeIP = "192.0.2.20"
	ns.MustAddr(t, "kv0", nodeIP+"/24")
	server := "https://" + nodeIP + ":6443"
	now := time.Now()
	p, err := NewPKI("lab", now)
	if err != nil {
		t.Fatal(err)
	}
	api := startAPIServer(t, ns, bin, t.TempDir(), nodeIP, p, now)
	procs, superCS := api.Procs, api.Super
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// The seed's kube-vip credential, pointed at this API server (on the
	// node it is https://kubernetes:6443, 127.0.0.1 in kube-vip's pod).
	kc := kubeadmCases()["join-control-plane"]
	seedPart, err := Kubeadm{}.NodeSeed(kc.c, kc.n, Secrets{PKI: p, Token: testToken}, netip.Addr{}, now)
	if err != nil {
		t.Fatal(err)
	}
	vipKC := []byte(strings.Replace(string(fileOf(seedPart, KubeVIPKubeconfig).Content), "https://kubernetes:6443", server, 1))
	vip := nsClient(t, ns, vipKC)

	// Before the RBAC: refused.
	if _, err := vip.CoordinationV1().Leases("kube-system").Get(ctx, KubeVIPLease, metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("kube-vip before its RBAC: %v, want forbidden", err)
	}

	// Apply the manifest with airlock's admin credential.
	adminKC, err := AdminKubeconfig(p, server, "lab", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	admin := nsClient(t, ns, adminKC)
	rbac, err := KubeVIPRBACManifest()
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(rbac), "\n---\n")
	var role rbacv1.Role
	var binding rbacv1.RoleBinding
	if err := yaml.UnmarshalStrict([]byte(docs[0]), &role); err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict([]byte(docs[1]), &binding); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().Roles("kube-system").Create(ctx, &role, metav1.CreateOptions{}); err != nil {
		t.Fatalf("apply the Role with airlock's admin credential: %v", err)
	}
	if _, err := admin.RbacV1().RoleBindings("kube-system").Create(ctx, &binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("apply the RoleBinding: %v", err)
	}

	// kube-vip's leader election wins the Lease.
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: KubeVIPLease, Namespace: "kube-system"},
		Client:     vip.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: kc.n.Hostname},
	}
	leading := make(chan struct{})
	leCtx, stopLE := context.WithCancel(ctx)
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, ReleaseOnCancel: true,
		LeaseDuration: 5 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: time.Second,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) { close(leading) },
			OnStoppedLeading: func() {},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	leDone := make(chan struct{})
	go func() { le.Run(leCtx); close(leDone) }()
	select {
	case <-leading:
	case <-time.After(time.Minute):
		t.Fatal("kube-vip's credential did not win its Lease within a minute")
	}
	var l *coordv1.Lease
	waitFor(t, "the Lease held by "+kc.n.Hostname, 30*time.Second, procs, func(ctx context.Context) (bool, error) {
		var err error
		l, err = superCS.CoordinationV1().Leases("kube-system").Get(ctx, KubeVIPLease, metav1.GetOptions{})
		return err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == kc.n.Hostname, err
	})
	stopLE()
	<-leDone

	// And nothing else.
	for what, call := range map[string]func() error{
		"read another Lease": func() error {
			_, err := vip.CoordinationV1().Leases("kube-system").Get(ctx, "kube-controller-manager", metav1.GetOptions{})
			return err
		},
		"list Leases": func() error {
			_, err := vip.CoordinationV1().Leases("kube-system").List(ctx, metav1.ListOptions{})
			return err
		},
		"delete its Lease": func() error {
			return vip.CoordinationV1().Leases("kube-system").Delete(ctx, KubeVIPLease, metav1.DeleteOptions{})
		},
		"a Lease elsewhere": func() error {
			_, err := vip.CoordinationV1().Leases("default").Get(ctx, KubeVIPLease, metav1.GetOptions{})
			return err
		},
		"read Secrets": func() error {
			_, err := vip.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
			return err
		},
		"read Nodes": func() error {
			_, err := vip.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			return err
		},
	} {
		if err := call(); !apierrors.IsForbidden(err) {
			t.Errorf("kube-vip may %s: %v, want forbidden", what, err)
		}
	}
}
