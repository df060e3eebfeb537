package agent

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestAgentDependencies keeps the agent binary small: it must not link
// Helm, tview, bbolt or go-containerregistry, nor any engine package.
func TestAgentDependencies(t *testing.T) {
	for _, goarch := range []string{"amd64", "arm64"} {
		cmd := exec.Command("go", "list", "-deps", "./cmd/airlock-agent")
		cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps (%s): %v\n%s", goarch, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, banned := range []string{"helm.sh/", "github.com/rivo/tview", "go.etcd.io/bbolt", "github.com/google/go-containerregistry", "airlock.dev/airlock/installer/cli", "airlock.dev/airlock/installer/state", "airlock.dev/airlock/bundle", "airlock.dev/airlock/tui"} {
				if strings.HasPrefix(dep, banned) {
					t.Errorf("%s: airlock-agent depends on %s", goarch, dep)
				}
			}
			if dep == "runtime/cgo" {
				t.Errorf("%s: airlock-agent links cgo", goarch)
			}
		}
		build := exec.Command("go", "build", "-trimpath", "-o", os.DevNull, "./cmd/airlock-agent")
		build.Env = cmd.Env
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build the agent for linux/%s with CGO off: %v\n%s", goarch, err, out)
		}
	}
}
