// Command etcd is etcd v3.6.6 built from the Go module proxy for the tests
// (e2e/k8s/build.sh): the upstream server's own main.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
