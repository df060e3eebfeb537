package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"airlock.dev/airlock/installer/state"
)

// DialFunc dials the API server (nil: the default dialer).
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// AdminClient is a client of the cluster's API server with fresh admin
// credentials minted from the PKI in store (MintAdminKubeconfig), valid
// for ttl; server defaults to the recorded one. Each request is bounded by
// 15 s.
func AdminClient(store state.Store, server string, ttl time.Duration, now time.Time, dial DialFunc) (kubernetes.Interface, error) {
	kc, err := MintAdminKubeconfig(store, server, ttl, now)
	if err != nil {
		return nil, err
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(kc)
	if err != nil {
		return nil, fmt.Errorf("admin client: %w", err)
	}
	cfg.Timeout = 15 * time.Second
	// One client watches every joining node: client-go's default of 5
	// requests a second would throttle it.
	cfg.QPS, cfg.Burst = 50, 100
	if dial != nil {
		cfg.Dial = dial
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("admin client: %w", err)
	}
	return cs, nil
}

// NodeWait waits for one machine's Node: until it exists (joined) and
// then until it is Ready, polling the API with a deadline.
type NodeWait struct {
	Client kubernetes.Interface
	Name   string // the Node's name (the machine's hostname)
	// Timeout bounds the whole wait; Interval is the time between polls
	// (default 2 s).
	Timeout, Interval time.Duration
	// Check, if set, runs before each poll: an error ends the wait with it
	// (a failure the node reported).
	Check func() error
	// Joined, if set, is called once when the Node exists; an error ends
	// the wait.
	Joined func(ctx context.Context, n *corev1.Node) error
}

// ErrNodeTimeout means a NodeWait's deadline passed.
var ErrNodeTimeout = errors.New("timed out")

// Wait returns nil once the Node is Ready; an error from Check or Joined,
// ctx's error, or ErrNodeTimeout naming what it last saw.
func (w NodeWait) Wait(ctx context.Context) error {
	if w.Interval <= 0 {
		w.Interval = 2 * time.Second
	}
	joined := false
	last := "no answer from the API server yet"
	var stop error
	err := wait.PollUntilContextTimeout(ctx, w.Interval, w.Timeout, true, func(ctx context.Context) (bool, error) {
		if w.Check != nil {
			if err := w.Check(); err != nil {
				stop = err
				return false, err
			}
		}
		n, err := w.Client.CoreV1().Nodes().Get(ctx, w.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			last = fmt.Sprintf("the API server answers, and has no Node %q", w.Name)
			return false, nil
		case err != nil:
			// Not the deadline cutting the request short (client-go's rate
			// limiter refuses to wait past it, before the context ends).
			if dl, ok := ctx.Deadline(); ctx.Err() == nil && (!ok || time.Until(dl) > time.Second) {
				last = "API server: " + err.Error()
			}
			return false, nil
		}
		if !joined {
			joined = true
			if w.Joined != nil {
				if err := w.Joined(ctx, n); err != nil {
					stop = err
					return false, err
				}
			}
		}
		ready, why := NodeReady(n)
		if ready {
			return true, nil
		}
		last = fmt.Sprintf("Node %q is not Ready: %s", w.Name, why)
		return false, nil
	})
	switch {
	case err == nil:
		return nil
	case stop != nil:
		return stop
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return fmt.Errorf("%w after %v waiting for Node %q: %s", ErrNodeTimeout, w.Timeout, w.Name, last)
}

// NodeReady reports whether n's Ready condition is True, and else why not.
func NodeReady(n *corev1.Node) (bool, string) {
	for _, c := range n.Status.Conditions {
		if c.Type != corev1.NodeReady {
			continue
		}
		if c.Status == corev1.ConditionTrue {
			return true, ""
		}
		return false, fmt.Sprintf("Ready is %s (%s: %s)", c.Status, c.Reason, c.Message)
	}
	return false, "no Ready condition yet"
}

// ApplyRoleLabels gives Node name the RoleLabels of role (which only the
// API may set), with a merge patch: labels it has already stay.
func ApplyRoleLabels(ctx context.Context, cs kubernetes.Interface, name, role string) error {
	labels := RoleLabels(role)
	if len(labels) == 0 {
		return nil
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	if err != nil {
		return err
	}
	if _, err := cs.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("label Node %q as %s: %w", name, role, err)
	}
	return nil
}
