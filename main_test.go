package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBinaryExitCodes builds the real airlock binary and checks the exit
// statuses a script depends on: 0 for a valid file, 1 for an invalid one.
func TestBinaryExitCodes(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "airlock")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	answers, err := exec.Command(bin, "init", "--interface", "eth1").Output()
	if err != nil {
		t.Fatalf("airlock init: %v", err)
	}
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, answers, 0o644)
	if out, err := exec.Command(bin, "validate", "-f", good).CombinedOutput(); err != nil {
		t.Errorf("validate of init's output: %v\n%s", err, out)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(strings.Replace(string(answers), "kind: Install", "kind: Install\nextra: 1", 1)), 0o644)
	out, err := exec.Command(bin, "validate", "-f", bad).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), bad+":7:1: extra: unknown field") {
		t.Errorf("validate of a bad file: %v\n%s", err, out)
	}
}
