package config

import (
	"fmt"
	"net"
	"strings"
	"unicode"
	"unicode/utf8"
)

// placeholderSerials are the values firmware vendors leave in place of a
// real serial number (compared in lower case, spaces trimmed). Discovery
// stores such a serial as empty, and an answer file must not name one:
// many machines carry the same placeholder.
var placeholderSerials = map[string]bool{
	"0": true, "none": true, "null": true, "n/a": true, "na": true, "-": true, ".": true,
	"not specified": true, "not applicable": true, "not available": true, "unknown": true,
	"default string": true, "default": true, "to be filled by o.e.m.": true, "to be filled by oem": true,
	"o.e.m.": true, "oem": true, "system serial number": true, "chassis serial number": true,
	"serial number": true, "serial": true, "invalid": true, "empty": true,
	"123456789": true, "0123456789": true, "1234567890": true,
}

// MaxSerialLen bounds a serial number: SMBIOS strings are short, and
// anything longer in an answer file is a pasting accident.
const MaxSerialLen = 64

// PlaceholderSerial reports whether s is not a usable identity: empty, a
// known vendor placeholder ("To Be Filled By O.E.M.", "Default string",
// "0", ...) or one character repeated ("0000000000", "XXXXXXXX"). Both
// discovery and the answer file's validation use it, so a serial the
// inventory throws away can never be the one a rule names.
func PlaceholderSerial(s string) bool {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" || placeholderSerials[s] {
		return true
	}
	first, _ := utf8.DecodeRuneInString(s)
	if strings.Trim(s, string(first)) == "" && strings.ContainsRune("0fx-.*#_ ", first) {
		return true
	}
	return false
}

// SerialProblem says why s cannot name a machine, or returns "".
func SerialProblem(s string) string {
	switch {
	case s == "":
		return "an empty serial names no machine (and would match every machine whose serial is unknown)"
	case !utf8.ValidString(s):
		return "not valid UTF-8"
	case len(s) > MaxSerialLen:
		return fmt.Sprintf("%d bytes long, more than the %d a serial number can be", len(s), MaxSerialLen)
	case strings.TrimSpace(s) != s:
		return fmt.Sprintf("%q has leading or trailing spaces, which discovery strips, so it never matches", s)
	}
	for _, r := range s {
		if r != ' ' && (!unicode.IsPrint(r) || unicode.Is(unicode.Cf, r)) {
			return fmt.Sprintf("%q holds the invisible or control character %U", s, r)
		}
	}
	if PlaceholderSerial(s) {
		return fmt.Sprintf("%q is a vendor placeholder, not a serial: many machines carry it and discovery treats it as no serial; name the machine by MAC instead", s)
	}
	return ""
}

// Problem says why m cannot name a machine's NIC, or returns "".
func (m MAC) Problem() string {
	if m == "" {
		return "an empty MAC address names no machine"
	}
	hw, err := net.ParseMAC(string(m))
	if err != nil || len(hw) != 6 {
		return fmt.Sprintf("%q is not a MAC address", string(m))
	}
	switch {
	case string(hw) == "\x00\x00\x00\x00\x00\x00":
		return fmt.Sprintf("%s is the all-zero MAC address, which no NIC has", m)
	case string(hw) == "\xff\xff\xff\xff\xff\xff":
		return fmt.Sprintf("%s is the broadcast address, not a NIC's", m)
	case hw[0]&1 != 0:
		return fmt.Sprintf("%s is a multicast address (lowest bit of the first byte set), not a NIC's", m)
	}
	return ""
}

// Usable reports whether m is a NIC's unicast address.
func (m MAC) Usable() bool { return m.Problem() == "" }

// UsableMAC reports whether s (as discovery stores it) is a NIC's unicast
// address that a rule may match.
func UsableMAC(s string) bool {
	var m MAC
	if m.UnmarshalText([]byte(s)) != nil {
		return false
	}
	return m.Usable()
}

// textProblem says why a free-text match value (a GPU model) is unusable,
// or returns "".
func textProblem(s string) string {
	if strings.TrimSpace(s) == "" {
		return "an empty value matches every machine that has any (strings.Contains of \"\" is always true); remove it or write a value"
	}
	if !utf8.ValidString(s) {
		return "not valid UTF-8"
	}
	if len(s) > 128 {
		return fmt.Sprintf("%d bytes long: at most 128", len(s))
	}
	for _, r := range s {
		if r != ' ' && (!unicode.IsPrint(r) || unicode.Is(unicode.Cf, r)) {
			return fmt.Sprintf("%q holds the invisible or control character %U", s, r)
		}
	}
	return ""
}
