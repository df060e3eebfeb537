package engine

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"airlock.dev/airlock/bundle"
	"airlock.dev/airlock/bundle/build"
	"airlock.dev/airlock/installer/config"
)

// LabOSImageName is what the lab calls the OS image given to lab up
// --os-image: its name in the bundle the lab builds and the osImage of
// every machine rule of the lab's answer file.
const LabOSImageName = "lab-os"

// Files the lab keeps in the state directory (not in the lab's own
// directory, so that they outlive lab down like airlock's CA): its
// signing key and the bundle it built with it. A later lab up with the
// same image reuses that bundle as it is.
const (
	labKeyFile    = "lab-bundle.key"
	labPubFile    = "lab-bundle.pub"
	labBundleFile = "lab-os.bundle"
)

// OSImageDir is a node OS image as e2e/osimage/build.sh leaves it: the
// image (disk.raw.zst) and the size and SHA-256 of the raw disk image in
// it (disk.raw.size, disk.raw.sha256).
type OSImageDir struct {
	Path      string
	RawSize   int64
	RawSHA256 string
}

var sha256HexRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ReadOSImageDir reads the OS image directory dir (lab up --os-image).
func ReadOSImageDir(dir string) (OSImageDir, error) {
	read := func(name string) (string, error) {
		raw, err := bundle.ReadRegularFile(filepath.Join(dir, name), 1024, "--os-image "+name)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(raw)), nil
	}
	sum, err := read("disk.raw.sha256")
	if err != nil {
		return OSImageDir{}, err
	}
	if !sha256HexRE.MatchString(sum) {
		return OSImageDir{}, fmt.Errorf("--os-image: disk.raw.sha256 %q is not a SHA-256 in hex", sum)
	}
	sizeText, err := read("disk.raw.size")
	if err != nil {
		return OSImageDir{}, err
	}
	size, err := strconv.ParseInt(sizeText, 10, 64)
	if err != nil || size <= 0 {
		return OSImageDir{}, fmt.Errorf("--os-image: disk.raw.size %q is not a size in bytes", sizeText)
	}
	img := OSImageDir{Path: filepath.Join(dir, "disk.raw.zst"), RawSize: size, RawSHA256: sum}
	if st, err := os.Stat(img.Path); err != nil {
		return OSImageDir{}, fmt.Errorf("--os-image: %w", err)
	} else if !st.Mode().IsRegular() {
		return OSImageDir{}, fmt.Errorf("--os-image: %s is not a regular file", img.Path)
	}
	return img, nil
}

// LabOSBundle makes the lab a signed bundle holding img as the OS image
// LabOSImageName, exactly as `airlock bundle build` makes a site's from a
// bundle.yaml with osImages:, and returns the bundle section of the lab's
// answer file that names it and its key. The key is the lab's own
// (lab-bundle.key in stateDir, made the first time). The bundle is kept in
// stateDir too and used again as it is while it holds the same image
// (same raw SHA-256 and size, same blob size) signed by that key; else it
// is built again. The build keeps the image's blob in cacheDir under the
// source file's SHA-256, so a rebuild of an unchanged image copies it and
// decompresses, converts or compresses nothing.
func LabOSBundle(ctx context.Context, img OSImageDir, stateDir, cacheDir string, log *slog.Logger) (config.Bundle, error) {
	priv, pubPath, err := labKey(stateDir)
	if err != nil {
		return config.Bundle{}, fmt.Errorf("the lab's bundle key: %w", err)
	}
	pub := priv.Public().(ed25519.PublicKey)
	out := filepath.Join(stateDir, labBundleFile)
	cfg := config.Bundle{Path: out, PublicKey: pubPath}
	st, err := os.Stat(img.Path)
	if err != nil {
		return cfg, fmt.Errorf("the lab's OS image: %w", err)
	}
	if labBundleHolds(out, pub, img, st.Size()) {
		log.Info("lab OS image bundle already built", "bundle", out, "image", LabOSImageName, "rawSHA256", img.RawSHA256)
		return cfg, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return cfg, fmt.Errorf("the lab's cache: %w", err)
	}
	spec := &build.Spec{APIVersion: build.APIVersion, Kind: build.Kind, Metadata: build.Metadata{Name: "lab"},
		OSImages: []build.OSImageSpec{{Name: LabOSImageName, Path: img.Path, RawSHA256: img.RawSHA256}}}
	pr, pw := io.Pipe()
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			log.Info("lab OS image bundle: " + sc.Text())
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	res, err := build.Build(ctx, build.Options{Spec: spec, SpecDir: filepath.Dir(img.Path), Output: out, Key: priv,
		CacheDir: filepath.Join(cacheDir, "lab-bundle"), Progress: pw, Log: log})
	pw.Close()
	<-logged
	if err != nil {
		return cfg, fmt.Errorf("build the lab's OS image bundle: %w", err)
	}
	log.Info("lab OS image bundle built", "bundle", out, "bytes", res.Size, "key", res.KeyID, "took", res.Duration)
	return cfg, nil
}

// labKey returns the lab's signing key from stateDir, making it the first
// time, and the path of its public key.
func labKey(stateDir string) (ed25519.PrivateKey, string, error) {
	keyPath, pubPath := filepath.Join(stateDir, labKeyFile), filepath.Join(stateDir, labPubFile)
	_, errKey := os.Stat(keyPath)
	_, errPub := os.Stat(pubPath)
	if errors.Is(errKey, os.ErrNotExist) && errors.Is(errPub, os.ErrNotExist) {
		if err := os.MkdirAll(stateDir, 0o700); err != nil {
			return nil, "", err
		}
		if _, err := bundle.Keygen(bundle.KeygenOptions{PrivatePath: keyPath, PublicPath: pubPath}); err != nil {
			return nil, "", err
		}
	}
	priv, err := bundle.ReadPrivateKey(keyPath)
	if err != nil {
		return nil, "", err
	}
	pub, err := bundle.ReadPublicKey(pubPath)
	if err != nil {
		return nil, "", err
	}
	if !pub.Equal(priv.Public()) {
		return nil, "", fmt.Errorf("%s is not the public key of %s: remove both and lab up makes a new pair", pubPath, keyPath)
	}
	return priv, pubPath, nil
}

// labBundleHolds says whether the bundle at path opens with key pub and
// holds img as LabOSImageName, its blob blobSize bytes (the image file's
// size: the build copies a compressed image as it is).
func labBundleHolds(path string, pub ed25519.PublicKey, img OSImageDir, blobSize int64) bool {
	b, err := bundle.Open(path, bundle.Trust{PublicKey: pub})
	if err != nil {
		return false
	}
	defer b.Close()
	im, ok := b.OSImage(LabOSImageName)
	return ok && len(b.OSImages()) == 1 && im.RawSHA256 == img.RawSHA256 && im.RawSize == img.RawSize && im.Size == blobSize
}
