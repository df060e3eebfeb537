// Command pause is the pod sandbox's process, as Kubernetes' pause.c: it
// sleeps until SIGINT or SIGTERM (then exits 0) and reaps the zombies it
// inherits as a PID namespace's init. Built static (CGO_ENABLED=0) by
// e2e/k8s/build.sh for the tests' pause image.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const version = "airlock-pause 3.10"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println(version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not PID 1")
	}
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			fmt.Fprintf(os.Stderr, "pause: shutting down, got signal: %v\n", s)
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
