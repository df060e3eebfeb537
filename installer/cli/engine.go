package cli

import (
	"errors"
	"io/fs"

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
	var id *engine.BundleIdentity
	closeBundle := func() error { return nil }
	if b != nil {
		reg, osImages, files = b, b, b
		id = &engine.BundleIdentity{Name: b.Name(), KeyID: b.Metadata().KeyID, Authenticity: b.Authenticity().String()}
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
		BundleFiles:      files,
		Bundle:           id,
		Store:            in.store,
		Log:              g.log,
	})
	if err != nil {
		return nil, nil, errors.Join(err, closeBundle())
	}
	return e, func() error { return errors.Join(e.Close(), closeBundle()) }, nil
}
