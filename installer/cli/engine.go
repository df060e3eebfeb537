package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/installer/config"
	"airlock.dev/airlock/installer/engine"
	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/ipxe"
	"airlock.dev/airlock/services/registry"
)

// engineInputs are what a command adds to the answers when it builds the
// engine.
type engineInputs struct {
	// files and image are the discovery kernel and boot image; when files
	// is nil they are assembled from the bundle's kernel package.
	files        fs.FS
	image        engine.DiscoveryImage
	httpPort     int
	apiPort      int
	allowForeign bool
	// osImage, when set, is written to the machines' disks by install.
	osImage *engine.OSImage
	// store, when set, is the state store (the caller closes it); else
	// the engine opens the one in the state directory.
	store state.Store
}

// buildEngine is the one place an engine is built: serve, install and the
// lab's airlock all come here. It opens the answers' bundle (with the
// trust the answers give it), the discovery image, the iPXE first stages,
// the state store and every socket. close releases them all.
func buildEngine(g *globals, a *config.Answers, in engineInputs) (e *engine.Engine, close func() error, err error) {
	b, err := serveBundle(a.Bundle, g)
	if err != nil {
		return nil, nil, err
	}
	var reg registry.Backend
	var osImages engine.BundleOSImages
	var files engine.BundleFiles
	closeBundle := func() error { return nil }
	if b != nil {
		reg, osImages, files = b, b, b
		closeBundle = b.Close
		g.log.Info("serving the bundle's registry", "bundle", b.Name())
		if in.files == nil {
			if in.files, in.image, err = discoveryFromBundle(b, g); err != nil {
				return nil, nil, errors.Join(err, closeBundle())
			}
		}
	}
	if in.files == nil {
		g.log.Warn("no discovery image: neither --boot-files nor " + engine.KernelPackage + " in a bundle; machines get an address and an iPXE script that cannot boot")
	}
	ipxeFS, err := ipxe.FS()
	if err != nil {
		ipxeFS = nil // New warns that machines will get no boot file
	}
	e, err = engine.New(engine.Options{
		Answers:          a,
		StateDir:         g.stateDir,
		IPXE:             ipxeFS,
		Files:            in.files,
		Image:            in.image,
		HTTPPort:         in.httpPort,
		APIPort:          in.apiPort,
		Registry:         reg,
		AllowForeignDHCP: in.allowForeign,
		OSImages:         osImages,
		OSImage:          in.osImage,
		BundleFiles:      files,
		Store:            in.store,
		Log:              g.log,
	})
	if err != nil {
		return nil, nil, errors.Join(err, closeBundle())
	}
	return e, func() error { return errors.Join(e.Close(), closeBundle()) }, nil
}

// osImageFrom reads an OS image as e2e/osimage/build.sh leaves it: a
// directory with disk.raw.zst and the raw image's size and SHA-256 in
// disk.raw.size and disk.raw.sha256. Empty dir: no image.
func osImageFrom(dir string) (*engine.OSImage, error) {
	if dir == "" {
		return nil, nil
	}
	read := func(name string) (string, error) {
		raw, err := bundle.ReadRegularFile(filepath.Join(dir, name), 1024, "--os-image "+name)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(raw)), nil
	}
	sum, err := read("disk.raw.sha256")
	if err != nil {
		return nil, err
	}
	sizeText, err := read("disk.raw.size")
	if err != nil {
		return nil, err
	}
	size, err := strconv.ParseInt(sizeText, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("--os-image: disk.raw.size %q: %w", sizeText, err)
	}
	return &engine.OSImage{Path: filepath.Join(dir, "disk.raw.zst"), RawSize: size, RawSHA256: sum}, nil
}
