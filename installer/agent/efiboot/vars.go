package efiboot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// GlobalGUID is EFI_GLOBAL_VARIABLE, the vendor GUID of Boot#### and
// BootOrder.
const GlobalGUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"

// Variable attributes.
const (
	AttrNonVolatile        = 0x1
	AttrBootService        = 0x2
	AttrRuntime            = 0x4
	bootVarAttrs    uint32 = AttrNonVolatile | AttrBootService | AttrRuntime
)

// EFIVarsDir is where Linux mounts efivarfs.
const EFIVarsDir = "/sys/firmware/efi/efivars"

// fsImmutableFL is FS_IMMUTABLE_FL of linux/fs.h (chattr +i).
const fsImmutableFL = 0x00000010

// maxVarSize bounds a variable read from efivarfs.
const maxVarSize = 64 << 10

// Vars reads and writes UEFI variables through an efivarfs directory.
type Vars struct {
	Dir string
}

func (v Vars) path(name string) string { return filepath.Join(v.Dir, name+"-"+GlobalGUID) }

// Get returns a global variable's attributes and data; fs.ErrNotExist
// when there is none.
func (v Vars) Get(name string) (uint32, []byte, error) {
	f, err := os.Open(v.path(name))
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxVarSize+1))
	if err != nil {
		return 0, nil, fmt.Errorf("read UEFI variable %s: %w", name, err)
	}
	if len(b) > maxVarSize || len(b) < 4 {
		return 0, nil, fmt.Errorf("read UEFI variable %s: %d bytes", name, len(b))
	}
	return binary.LittleEndian.Uint32(b), b[4:], nil
}

// Set writes a global variable (non-volatile, boot and runtime access).
// efivarfs takes the attributes and the data in one write; files of
// variables it does not know are immutable, so the flag is cleared first.
func (v Vars) Set(name string, data []byte) error {
	p := v.path(name)
	if err := clearImmutable(p); err != nil {
		return fmt.Errorf("write UEFI variable %s: %w", name, err)
	}
	buf := make([]byte, 4+len(data))
	binary.LittleEndian.PutUint32(buf, bootVarAttrs)
	copy(buf[4:], data)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("write UEFI variable %s: %w", name, err)
	}
	n, err := f.Write(buf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != len(buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("write UEFI variable %s (%d bytes): %w", name, len(buf), err)
	}
	return nil
}

// clearImmutable drops FS_IMMUTABLE_FL from an existing efivarfs file (as
// chattr -i does); a file that does not exist is fine, and so is a file
// system without flags (a plain directory in tests).
func clearImmutable(p string) error {
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	flags, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get flags of %s: %w", p, err)
	}
	if flags&fsImmutableFL == 0 {
		return nil
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, flags&^fsImmutableFL); err != nil {
		return fmt.Errorf("clear the immutable flag of %s: %w", p, err)
	}
	return nil
}

var bootVarRE = regexp.MustCompile(`^Boot([0-9A-F]{4})-` + GlobalGUID + `$`)

// bootNumbers lists the numbers of the Boot#### variables there are.
func (v Vars) bootNumbers() ([]uint16, error) {
	es, err := os.ReadDir(v.Dir)
	if err != nil {
		return nil, fmt.Errorf("list UEFI variables: %w", err)
	}
	var out []uint16
	for _, e := range es {
		if m := bootVarRE.FindStringSubmatch(e.Name()); m != nil {
			n, _ := strconv.ParseUint(m[1], 16, 16)
			out = append(out, uint16(n))
		}
	}
	slices.Sort(out)
	return out, nil
}

// BootOrder returns the BootOrder variable (empty when there is none).
func (v Vars) BootOrder() ([]uint16, error) {
	_, b, err := v.Get("BootOrder")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b)%2 != 0 {
		return nil, fmt.Errorf("BootOrder of %d bytes", len(b))
	}
	out := make([]uint16, len(b)/2)
	for i := range out {
		out[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return out, nil
}

func (v Vars) setBootOrder(order []uint16) error {
	b := make([]byte, 2*len(order))
	for i, n := range order {
		binary.LittleEndian.PutUint16(b[2*i:], n)
	}
	return v.Set("BootOrder", b)
}

// BootOption reads Boot####.
func (v Vars) BootOption(n uint16) (LoadOption, error) {
	_, b, err := v.Get(BootName(n))
	if err != nil {
		return LoadOption{}, err
	}
	o, err := ParseLoadOption(b)
	if err != nil {
		return LoadOption{}, fmt.Errorf("%s: %w", BootName(n), err)
	}
	return o, nil
}

// BootName is the variable name of boot option n, e.g. Boot0003.
func BootName(n uint16) string { return fmt.Sprintf("Boot%04X", n) }

// Entry is the result of AddBootEntry.
type Entry struct {
	Number uint16
	// Order is BootOrder after the change.
	Order []uint16
	// Reused is set when an option of the same description was
	// overwritten (an earlier install's entry).
	Reused bool
}

// AddBootEntry writes an active boot option with the given description
// and path and puts it into BootOrder right behind the last network entry
// (so the machine keeps asking the network first and boots the disk when
// the network boot exits), or at the end when there is none. An option
// with the same description (an earlier install's) is overwritten rather
// than added again; otherwise the lowest free number is used.
func (v Vars) AddBootEntry(description string, path DevicePath) (Entry, error) {
	data, err := LoadOption{Attributes: LoadOptionActive, Description: description, Path: path}.Marshal()
	if err != nil {
		return Entry{}, err
	}
	nums, err := v.bootNumbers()
	if err != nil {
		return Entry{}, err
	}
	e := Entry{Number: 0xffff}
	for _, n := range nums {
		if o, err := v.BootOption(n); err == nil && o.Description == description {
			e.Number, e.Reused = n, true
			break
		}
	}
	if !e.Reused {
		for n := 0; n < 0xffff; n++ {
			if !slices.Contains(nums, uint16(n)) {
				e.Number = uint16(n)
				break
			}
		}
		if e.Number == 0xffff {
			return Entry{}, errors.New("no free boot option number")
		}
	}
	order, err := v.BootOrder()
	if err != nil {
		return Entry{}, err
	}
	if err := v.Set(BootName(e.Number), data); err != nil {
		return Entry{}, err
	}
	order = slices.DeleteFunc(order, func(n uint16) bool { return n == e.Number })
	at := len(order)
	for i := len(order) - 1; i >= 0; i-- {
		if o, err := v.BootOption(order[i]); err == nil && o.Path.IsNetwork() {
			at = i + 1
			break
		}
	}
	e.Order = slices.Insert(order, at, e.Number)
	if err := v.setBootOrder(e.Order); err != nil {
		return Entry{}, err
	}
	return e, nil
}

// FormatOrder prints a boot order as efibootmgr does: 0001,0003.
func FormatOrder(order []uint16) string {
	s := make([]string, len(order))
	for i, n := range order {
		s[i] = fmt.Sprintf("%04X", n)
	}
	return strings.Join(s, ",")
}
