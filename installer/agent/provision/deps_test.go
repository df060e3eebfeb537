package provision

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies keeps the package fit for the agent's static binary:
// no cgo, and of airlock only services/agentapi.
func TestDependencies(t *testing.T) {
	for _, goarch := range []string{"amd64", "arm64"} {
		cmd := exec.Command("go", "list", "-deps", ".")
		cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps (%s): %v\n%s", goarch, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if dep == "runtime/cgo" {
				t.Errorf("%s: links cgo", goarch)
			}
			if strings.HasPrefix(dep, "airlock.dev/") && dep != "airlock.dev/airlock/services/agentapi" && dep != "airlock.dev/airlock/installer/agent/provision" {
				t.Errorf("%s: depends on %s", goarch, dep)
			}
		}
	}
}
