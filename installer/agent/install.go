package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"

	"airlock.dev/airlock/installer/agent/efiboot"
	"airlock.dev/airlock/installer/agent/gpt"
	"airlock.dev/airlock/installer/agent/provision"
	"airlock.dev/airlock/services/agentapi"
)

// SeedPartitionType is the GPT type of the seed's partition (basic data,
// as installer/seed.PartitionType: the agent does not import the seed
// renderer).
const SeedPartitionType = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"

// maxSeedBytes bounds the seed the agent holds in memory.
const maxSeedBytes = 64 << 20

// Installer carries out install orders on this machine: it fetches the
// seed (whole, checked) and streams the image from airlock, has the
// provision library resolve the pinned disk again, wipe it and write the
// image (the first MiB last, after the digest checks), then puts the seed
// in a partition of its own at the disk's end.
type Installer struct {
	Host provision.Host
	// Base is airlock's boot server (airlock.url, plain HTTP) and HTTP
	// its client: the image comes from it, checked against the digest in
	// the order (which came over TLS).
	Base *url.URL
	HTTP *http.Client
	// API is airlock's agent API (airlock.api, https) and APIHTTP its
	// client (TLSClient's, trusting only airlock's CA): the seed, which
	// carries the phone-home token and later the cluster's keys, comes from
	// it, asked for with the boot's Token.
	API     *url.URL
	APIHTTP *http.Client
	Token   agentapi.Token
	Log     *slog.Logger
	// EFIVars is the efivarfs directory of a machine booted by UEFI
	// (efiboot.EFIVarsDir), empty on BIOS machines. There the installed
	// disk gets a boot entry behind the firmware's network entries.
	EFIVars string
}

// BootEntryDescription names the boot entry of the installed disk.
const BootEntryDescription = "airlock installed system"

// ErrSeed means the seed could not be fetched or did not match its order.
var ErrSeed = errors.New("seed")

// Run carries out an install order. Nothing touches the disk before the
// order validated, the seed arrived whole with its digest, and the image's
// stream opened.
func (in Installer) Run(ctx context.Context, o agentapi.Order, progress func(done, total uint64)) error {
	if err := o.Validate(); err != nil {
		return fmt.Errorf("refuse order %s: %w", o.ID, err)
	}
	if o.Kind != agentapi.OrderInstall {
		return fmt.Errorf("order %s is %q, not an install", o.ID, o.Kind)
	}
	io := o.Install
	if io.Seed.Size > maxSeedBytes {
		return fmt.Errorf("%w: %d bytes, more than %d", ErrSeed, io.Seed.Size, maxSeedBytes)
	}
	seed, err := in.fetchWhole(ctx, io.Seed)
	if err != nil {
		return err
	}
	src, err := provision.Fetch(ctx, in.HTTP, artifactURL(in.Base, io.Image.Path))
	if err != nil {
		return err
	}
	defer src.Close()
	pin := provision.DiskPin{WWN: io.Disk.WWN, Serial: io.Disk.Serial, SizeBytes: io.Disk.SizeBytes}
	rep, err := in.Host.Install(ctx, pin, io.AllowWipe, src, provision.WriteSpec{RawSize: io.Image.Size, RawSHA256: io.Image.SHA256},
		func(p provision.Progress) {
			if progress != nil {
				progress(uint64(p.Written), uint64(p.Total))
			}
		})
	if err != nil {
		return fmt.Errorf("install on %s: %w", pin, err)
	}
	in.Log.Info("image written", "disk", rep.Disk.Dev, "format", rep.Write.Format, "bytes", rep.Write.RawSize, "took", rep.Write.Elapsed, "found before", rep.Wipe.Before.String())
	if err := in.placeSeed(rep.Disk, seed); err != nil {
		return err
	}
	if in.EFIVars != "" {
		return in.addBootEntry(rep.Disk)
	}
	return nil
}

// addBootEntry gives the installed disk a UEFI boot entry: the loader on
// the image's EFI system partition (read from the disk, not guessed), put
// behind the network entries so that airlock still decides every boot.
// Without it, firmware that built its boot list while the disk was blank
// has nothing to boot when the network boot exits.
func (in Installer) addBootEntry(d provision.Disk) error {
	f, err := os.Open(d.Dev)
	if err != nil {
		return fmt.Errorf("open %s for its boot entry: %w", d.Dev, err)
	}
	defer f.Close()
	path, err := efiboot.LoaderOnDisk(f)
	if err != nil {
		return fmt.Errorf("UEFI boot entry for %s: %w", d.Dev, err)
	}
	e, err := efiboot.Vars{Dir: in.EFIVars}.AddBootEntry(BootEntryDescription, path)
	if err != nil {
		return fmt.Errorf("UEFI boot entry for %s: %w", d.Dev, err)
	}
	in.Log.Info("UEFI boot entry written", "entry", efiboot.BootName(e.Number), "path", path.String(), "replaced", e.Reused, "bootOrder", efiboot.FormatOrder(e.Order))
	return nil
}

// placeSeed appends the seed's partition in the disk's last MiBs (moving
// the backup GPT to the disk's end) and writes the seed into it.
func (in Installer) placeSeed(d provision.Disk, seed []byte) error {
	f, err := os.OpenFile(d.Dev, os.O_RDWR|os.O_EXCL, 0)
	if err != nil {
		return fmt.Errorf("open %s for the seed: %w", d.Dev, err)
	}
	defer f.Close()
	part, err := gpt.AppendPartition(f, int64(d.SizeBytes), int64(len(seed)), SeedPartitionType, "cidata")
	if err != nil {
		return fmt.Errorf("seed partition on %s: %w", d.Dev, err)
	}
	if _, err := f.WriteAt(seed, part.Offset); err != nil {
		return fmt.Errorf("write the seed on %s: %w", d.Dev, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", d.Dev, err)
	}
	what, err := provision.RereadPartitionTable(f)
	if err != nil {
		return err
	}
	in.Log.Info("seed placed", "disk", d.Dev, "offset", part.Offset, "bytes", len(seed), "partitions", what)
	return nil
}

// fetchWhole reads a small artifact into memory, bounded by its size, and
// checks its length and digest.
func (in Installer) fetchWhole(ctx context.Context, a agentapi.Artifact) ([]byte, error) {
	if in.API == nil || in.API.Scheme != "https" || in.APIHTTP == nil {
		return nil, fmt.Errorf("%w: no https API to fetch %s from", ErrSeed, a.Path)
	}
	u := artifactURL(in.API, a.Path)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSeed, err)
	}
	req.Header.Set("Authorization", "Bearer "+in.Token.String())
	resp, err := in.APIHTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: fetch %s: %w", ErrSeed, u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: fetch %s: HTTP status %q", ErrSeed, u, resp.Status)
	}
	body := resp.Body
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(body, a.Size+1)); err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrSeed, a.Path, err)
	}
	if int64(buf.Len()) != a.Size {
		return nil, fmt.Errorf("%w: %s: %d bytes, the order says %d", ErrSeed, a.Path, buf.Len(), a.Size)
	}
	sum := sha256.Sum256(buf.Bytes())
	if got := hex.EncodeToString(sum[:]); got != a.SHA256 {
		return nil, fmt.Errorf("%w: %s: sha256 %s, the order says %s", ErrSeed, a.Path, got, a.SHA256)
	}
	return buf.Bytes(), nil
}

func artifactURL(base *url.URL, path string) string {
	u := *base
	u.Path = path
	u.RawQuery = ""
	return u.String()
}
