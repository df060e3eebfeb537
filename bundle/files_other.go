//go:build !unix

package bundle

import "os"

const openNonblock = 0

func clearNonblock(*os.File) error { return nil }
