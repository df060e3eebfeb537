//go:build pins

// This file only pins the fixed third-party packages in go.mod until the
// packages that use them exist; it is never compiled into airlock.
package main

import (
	_ "github.com/google/go-containerregistry/pkg/v1/layout"
	_ "github.com/insomniacslk/dhcp/dhcpv4/server4"
	_ "github.com/pin/tftp/v3"
	_ "github.com/rivo/tview"
	_ "go.etcd.io/bbolt"
	_ "helm.sh/helm/v3/pkg/action"
)
