package kube

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"airlock.dev/airlock/installer/lab/kubetest"
	"airlock.dev/airlock/installer/lab/netns"
	"airlock.dev/airlock/installer/state"
)

// NodeWait against a real kube-apiserver and etcd, with airlock's own
// admin credentials minted from the PKI in a store (AdminClient): joined
// once a Node is registered (and labelled with its role through the API),
// Ready once its Ready condition is True, and not before; a failure the
// node reported ends the wait at once; a Node that never comes times out
// saying what it last saw.
func TestNodeWaitOnRealAPIServer(t *testing.T) {
	bin := k8sBinDir(t)
	netns.RequireTool(t, "nsenter", "util-linux")
	ns := netns.NewTest(t, "nw")
	netns.MustVeth(t, ns, "nw0", ns, "nw1")
	const nodeIP = "192.0.2.30"
	ns.MustAddr(t, "nw0", nodeIP+"/24")
	now := time.Now()
	st := state.NewMem()
	p, err := LoadOrCreatePKI(st, "lab", now)
	if err != nil {
		t.Fatal(err)
	}
	if err := SaveAPIServer(st, "https://"+nodeIP+":6443"); err != nil {
		t.Fatal(err)
	}
	api := startAPIServer(t, ns, bin, t.TempDir(), nodeIP, p, now)
	cs, err := AdminClient(st, "", time.Hour, now, kubetest.Dialer(ns))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// The node registers itself, as a kubelet does (here with the
	// system:masters client standing in for the kubelet), not Ready.
	register := func(t *testing.T, name string) {
		t.Helper()
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{LabelRole: RoleWorker}}}
		if _, err := api.Super.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatalf("register Node %s: %v", name, err)
		}
	}
	setReady := func(t *testing.T, name string, status corev1.ConditionStatus) {
		t.Helper()
		// airlock labels the Node meanwhile: read it again on a conflict.
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			n, err := api.Super.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status, Reason: "KubeletNotReady",
				Message: "container runtime network not ready", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
			_, err = api.Super.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatalf("Node %s status: %v", name, err)
		}
	}

	t.Run("joined then ready", func(t *testing.T) {
		joined := make(chan struct{})
		var joins atomic.Int32
		done := make(chan error, 1)
		go func() {
			done <- NodeWait{Client: cs, Name: "w1", Timeout: 2 * time.Minute, Interval: 100 * time.Millisecond,
				Joined: func(ctx context.Context, n *corev1.Node) error {
					if joins.Add(1) == 1 {
						close(joined)
					}
					return ApplyRoleLabels(ctx, cs, n.Name, RoleWorker)
				}}.Wait(ctx)
		}()
		select {
		case <-joined:
			t.Fatal("joined before any Node exists")
		case err := <-done:
			t.Fatalf("the wait ended before any Node exists: %v", err)
		case <-time.After(time.Second):
		}
		register(t, "w1")
		select {
		case <-joined:
		case err := <-done:
			t.Fatalf("the wait ended before the Node was Ready: %v", err)
		case <-ctx.Done():
			t.Fatal("never joined")
		}
		setReady(t, "w1", corev1.ConditionFalse)
		select {
		case err := <-done:
			t.Fatalf("the wait ended with the Node not Ready: %v", err)
		case <-time.After(time.Second):
		}
		setReady(t, "w1", corev1.ConditionTrue)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("wait: %v", err)
			}
		case <-ctx.Done():
			t.Fatal("never Ready")
		}
		if joins.Load() != 1 {
			t.Errorf("Joined called %d times", joins.Load())
		}
		n, err := api.Super.CoreV1().Nodes().Get(ctx, "w1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := n.Labels["node-role.kubernetes.io/worker"]; !ok || n.Labels[LabelRole] != RoleWorker {
			t.Errorf("labels %v", n.Labels)
		}
	})

	t.Run("a reported failure ends the wait", func(t *testing.T) {
		register(t, "w2")
		var failed atomic.Bool
		boom := errors.New("kubeadm phase preflight failed")
		done := make(chan error, 1)
		go func() {
			done <- NodeWait{Client: cs, Name: "w2", Timeout: 2 * time.Minute, Interval: 100 * time.Millisecond,
				Check: func() error {
					if failed.Load() {
						return boom
					}
					return nil
				}}.Wait(ctx)
		}()
		select {
		case err := <-done:
			t.Fatalf("the wait ended before the failure: %v", err)
		case <-time.After(time.Second):
		}
		failed.Store(true)
		select {
		case err := <-done:
			if !errors.Is(err, boom) {
				t.Errorf("wait: %v, want the reported failure", err)
			}
		case <-ctx.Done():
			t.Fatal("the failure did not end the wait")
		}
	})

	t.Run("timeout", func(t *testing.T) {
		start := time.Now()
		err := NodeWait{Client: cs, Name: "nobody", Timeout: 2 * time.Second, Interval: 100 * time.Millisecond}.Wait(ctx)
		if !errors.Is(err, ErrNodeTimeout) || !strings.Contains(err.Error(), `has no Node "nobody"`) {
			t.Errorf("wait for a Node that never comes: %v", err)
		}
		if d := time.Since(start); d < 2*time.Second || d > 30*time.Second {
			t.Errorf("timed out after %v, want about 2s", d)
		}
	})
}
