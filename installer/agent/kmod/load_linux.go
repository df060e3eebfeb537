package kmod

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Load loads the module files at paths (relative to dir) in the given
// order with finit_module(2). A module that is already loaded is not an
// error. Modules must be uncompressed (the boot image decompresses them).
func Load(dir string, paths []string) error {
	var errs []error
	for _, p := range paths {
		if err := loadOne(filepath.Join(dir, p)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func loadOne(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("load module %s: %w", file, err)
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", file, err)
	}
	return nil
}
