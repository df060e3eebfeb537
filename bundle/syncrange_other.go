//go:build !linux

package bundle

import "os"

// syncRange is a no-op where sync_file_range does not exist: the fsync at
// commit writes everything.
func syncRange(*os.File, int64, int64) {}
