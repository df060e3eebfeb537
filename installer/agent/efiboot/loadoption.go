package efiboot

import (
	"encoding/binary"
	"fmt"
	"unicode/utf16"
)

// Load option attributes.
const (
	// LoadOptionActive makes the boot manager try the option.
	LoadOptionActive = 0x00000001
	// LoadOptionHidden keeps it out of the firmware's menus.
	LoadOptionHidden = 0x00000008
	// LoadOptionCategoryApp marks an application (such as the setup
	// menu) that normal boot processing skips.
	LoadOptionCategoryApp = 0x00000100
)

// LoadOption is an EFI_LOAD_OPTION, the content of a Boot#### variable.
type LoadOption struct {
	Attributes  uint32
	Description string
	Path        DevicePath
	// Optional is passed to the loaded image; empty here.
	Optional []byte
}

// Marshal encodes the option: attributes (u32), the file path list's
// length (u16), the description (UTF-16LE, NUL-terminated), the file path
// list, the optional data.
func (o LoadOption) Marshal() ([]byte, error) {
	if _, err := o.Path.nodes(); err != nil {
		return nil, fmt.Errorf("load option %q: %w", o.Description, err)
	}
	if len(o.Path) > 0xffff {
		return nil, fmt.Errorf("load option %q: path of %d bytes", o.Description, len(o.Path))
	}
	desc := ucs2(o.Description)
	b := make([]byte, 6, 6+len(desc)+len(o.Path)+len(o.Optional))
	binary.LittleEndian.PutUint32(b, o.Attributes)
	binary.LittleEndian.PutUint16(b[4:], uint16(len(o.Path)))
	b = append(b, desc...)
	b = append(b, o.Path...)
	return append(b, o.Optional...), nil
}

// ParseLoadOption decodes a Boot#### variable's data.
func ParseLoadOption(b []byte) (LoadOption, error) {
	if len(b) < 6 {
		return LoadOption{}, fmt.Errorf("load option of %d bytes", len(b))
	}
	o := LoadOption{Attributes: binary.LittleEndian.Uint32(b)}
	pathLen := int(binary.LittleEndian.Uint16(b[4:]))
	rest := b[6:]
	end := -1
	for i := 0; i+1 < len(rest); i += 2 {
		if rest[i] == 0 && rest[i+1] == 0 {
			end = i
			break
		}
	}
	if end < 0 {
		return LoadOption{}, fmt.Errorf("load option: description not terminated")
	}
	u := make([]uint16, end/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(rest[2*i:])
	}
	o.Description = string(utf16.Decode(u))
	rest = rest[end+2:]
	if pathLen > len(rest) {
		return LoadOption{}, fmt.Errorf("load option %q: path list of %d bytes, %d left", o.Description, pathLen, len(rest))
	}
	o.Path = DevicePath(append([]byte(nil), rest[:pathLen]...))
	if _, err := o.Path.nodes(); err != nil {
		return LoadOption{}, fmt.Errorf("load option %q: %w", o.Description, err)
	}
	if len(rest) > pathLen {
		o.Optional = append([]byte(nil), rest[pathLen:]...)
	}
	return o, nil
}

// String is the option as efibootmgr -v shows it (without the number).
func (o LoadOption) String() string {
	star := " "
	if o.Attributes&LoadOptionActive != 0 {
		star = "*"
	}
	return star + " " + o.Description + "\t" + o.Path.String()
}
