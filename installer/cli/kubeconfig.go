package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"airlock.dev/airlock/installer/control"
	"airlock.dev/airlock/installer/kube"
	"airlock.dev/airlock/installer/state"
)

// maxKubeconfigTTL bounds `airlock kubeconfig --ttl`: these are admin
// credentials that cannot be revoked one by one.
const maxKubeconfigTTL = 7 * 24 * time.Hour

func newKubeconfigCommand(g *globals) *cobra.Command {
	var ttl time.Duration
	var out, server string
	cmd := &cobra.Command{
		Use:   "kubeconfig",
		Short: "Write a short-lived admin kubeconfig minted from the cluster's CA",
		Long: `Mint fresh admin credentials for the cluster from the CA in airlock's state
store (user airlock-admin in group kubeadm:cluster-admins, valid for --ttl)
and write a kubeconfig with them: to stdout, or to -o FILE (mode 0600).
Nothing is copied off a node. Asks the running airlock, or reads the state
store when none runs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl <= 0 || ttl > maxKubeconfigTTL {
				return fmt.Errorf("--ttl %v: want more than 0 and at most %v", ttl, maxKubeconfigTTL)
			}
			kc, err := mintKubeconfig(cmd.Context(), g.stateDir, server, ttl)
			if err != nil {
				return fmt.Errorf("mint kubeconfig: %w", err)
			}
			if out == "" || out == "-" {
				_, err := g.streams.Out.Write(kc)
				return err
			}
			if err := writePrivate(out, kc); err != nil {
				return err
			}
			fmt.Fprintf(g.streams.Err, "wrote %s (valid for %v)\n", out, ttl)
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&ttl, "ttl", time.Hour, "how long the credentials are valid")
	f.StringVarP(&out, "output", "o", "", "file to write (mode 0600); stdout when empty or -")
	f.StringVar(&server, "server", "", "API server URL, https://HOST:PORT (default: the one airlock recorded)")
	return cmd
}

func mintKubeconfig(ctx context.Context, stateDir, server string, ttl time.Duration) ([]byte, error) {
	kc, err := control.NewClient(stateDir).Kubeconfig(ctx, server, ttl)
	if !errors.Is(err, control.ErrNotRunning) {
		return kc, err
	}
	st, err := state.OpenReadOnly(stateDir)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	return kube.MintAdminKubeconfig(st, server, ttl, time.Now())
}

// writePrivate writes b to path with mode 0600 through a temporary file in
// the same directory, so a reader never sees half a file and an existing
// file's mode is not kept.
func writePrivate(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".kubeconfig-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = tmp.Write(b)
	err = errors.Join(err, tmp.Chmod(0o600), tmp.Sync(), tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
