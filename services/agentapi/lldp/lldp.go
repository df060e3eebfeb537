// Package lldp reads and writes IEEE 802.1AB LLDP frames (ethertype 0x88cc)
// and sends and receives them on raw AF_PACKET sockets. The node agent
// listens with it to learn which switch port each NIC is plugged into; the
// lab's simulated top-of-rack switch sends with it.
package lldp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"unicode"
	"unicode/utf8"
)

// EtherType is LLDP's ethertype.
const EtherType = 0x88cc

// NearestBridge is the destination address LLDP frames are sent to.
var NearestBridge = net.HardwareAddr{0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e}

// TLV types.
const (
	tlvEnd         = 0
	tlvChassisID   = 1
	tlvPortID      = 2
	tlvTTL         = 3
	tlvPortDesc    = 4
	tlvSystemName  = 5
	tlvSystemDesc  = 6
	maxStringBytes = 255
)

// Chassis and port ID subtypes that matter here.
const (
	chassisMAC   = 4
	chassisNet   = 5
	chassisLocal = 7
	portMAC      = 3
	portNet      = 4
	portIfName   = 5
	portLocal    = 7
)

// Frame is the content of one LLDP frame.
type Frame struct {
	// Source is the sender's MAC address.
	Source            net.HardwareAddr
	ChassisID         string
	PortID            string
	TTL               uint16
	PortDescription   string
	SystemName        string
	SystemDescription string
}

// ErrNotLLDP is returned by Parse for frames of another ethertype.
var ErrNotLLDP = errors.New("not an LLDP frame")

// Parse decodes an Ethernet frame carrying LLDP. It requires the three
// mandatory TLVs (chassis ID, port ID, TTL) first and in order, stops at the
// End TLV, and returns printable strings only.
func Parse(frame []byte) (Frame, error) {
	var f Frame
	if len(frame) < 14 {
		return f, fmt.Errorf("parse LLDP: frame of %d bytes is shorter than an Ethernet header", len(frame))
	}
	f.Source = net.HardwareAddr(append([]byte(nil), frame[6:12]...))
	off := 12
	et := binary.BigEndian.Uint16(frame[off:])
	if et == 0x8100 && len(frame) >= 18 { // one 802.1Q tag
		off += 4
		et = binary.BigEndian.Uint16(frame[off:])
	}
	if et != EtherType {
		return f, ErrNotLLDP
	}
	body := frame[off+2:]
	n := 0
	for len(body) > 0 {
		if len(body) < 2 {
			return f, errors.New("parse LLDP: truncated TLV header")
		}
		h := binary.BigEndian.Uint16(body)
		typ, length := int(h>>9), int(h&0x1ff)
		if len(body) < 2+length {
			return f, fmt.Errorf("parse LLDP: TLV type %d length %d runs past the frame", typ, length)
		}
		v := body[2 : 2+length]
		body = body[2+length:]
		if typ == tlvEnd {
			break
		}
		n++
		switch {
		case n == 1 && typ != tlvChassisID, n == 2 && typ != tlvPortID, n == 3 && typ != tlvTTL:
			return f, fmt.Errorf("parse LLDP: TLV %d is type %d, mandatory TLVs out of order", n, typ)
		}
		switch typ {
		case tlvChassisID:
			if n != 1 {
				return f, errors.New("parse LLDP: second chassis ID TLV")
			}
			id, err := idString(v, chassisMAC, chassisNet)
			if err != nil {
				return f, fmt.Errorf("parse LLDP chassis ID: %w", err)
			}
			f.ChassisID = id
		case tlvPortID:
			if n != 2 {
				return f, errors.New("parse LLDP: second port ID TLV")
			}
			id, err := idString(v, portMAC, portNet)
			if err != nil {
				return f, fmt.Errorf("parse LLDP port ID: %w", err)
			}
			f.PortID = id
		case tlvTTL:
			if len(v) < 2 {
				return f, errors.New("parse LLDP: short TTL")
			}
			f.TTL = binary.BigEndian.Uint16(v)
		case tlvPortDesc:
			f.PortDescription = printable(v)
		case tlvSystemName:
			f.SystemName = printable(v)
		case tlvSystemDesc:
			f.SystemDescription = printable(v)
		}
	}
	if n < 3 {
		return f, errors.New("parse LLDP: missing mandatory TLVs")
	}
	return f, nil
}

// idString renders a chassis or port ID by subtype: MAC addresses as
// aa:bb:cc:dd:ee:ff, network addresses as IPs, everything else as text.
func idString(v []byte, macSubtype, netSubtype byte) (string, error) {
	if len(v) < 2 {
		return "", errors.New("empty ID")
	}
	sub, val := v[0], v[1:]
	switch sub {
	case macSubtype:
		if len(val) != 6 {
			return "", fmt.Errorf("MAC subtype with %d bytes", len(val))
		}
		return net.HardwareAddr(val).String(), nil
	case netSubtype:
		// IANA address family 1 = IPv4, 2 = IPv6.
		if len(val) == 5 && val[0] == 1 || len(val) == 17 && val[0] == 2 {
			return net.IP(val[1:]).String(), nil
		}
		return "", errors.New("bad network address")
	}
	s := printable(val)
	if s == "" {
		return "", errors.New("ID has no printable characters")
	}
	return s, nil
}

// printable keeps the printable characters of a TLV string.
func printable(b []byte) string {
	s := strings.ToValidUTF8(string(b), "")
	s = strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return -1
		}
		return r
	}, s)
	return strings.TrimSpace(s)
}

// Encode builds an Ethernet frame carrying f, addressed to NearestBridge.
// A ChassisID that parses as a MAC address is sent with the MAC subtype,
// anything else as locally assigned; PortID is sent as an interface name.
func Encode(f Frame) ([]byte, error) {
	if len(f.Source) != 6 {
		return nil, errors.New("encode LLDP: source must be a MAC address")
	}
	if f.ChassisID == "" || f.PortID == "" {
		return nil, errors.New("encode LLDP: chassis ID and port ID are required")
	}
	buf := make([]byte, 0, 128)
	buf = append(buf, NearestBridge...)
	buf = append(buf, f.Source...)
	buf = binary.BigEndian.AppendUint16(buf, EtherType)
	tlv := func(typ int, v []byte) error {
		if len(v) > 511 {
			return fmt.Errorf("encode LLDP: TLV %d of %d bytes", typ, len(v))
		}
		buf = binary.BigEndian.AppendUint16(buf, uint16(typ<<9|len(v)))
		buf = append(buf, v...)
		return nil
	}
	str := func(s string) ([]byte, error) {
		if len(s) > maxStringBytes || !utf8.ValidString(s) {
			return nil, fmt.Errorf("encode LLDP: %q is not a valid LLDP string", s)
		}
		return []byte(s), nil
	}
	var chassis []byte
	if mac, err := net.ParseMAC(f.ChassisID); err == nil && len(mac) == 6 {
		chassis = append([]byte{chassisMAC}, mac...)
	} else {
		s, err := str(f.ChassisID)
		if err != nil {
			return nil, err
		}
		chassis = append([]byte{chassisLocal}, s...)
	}
	port, err := str(f.PortID)
	if err != nil {
		return nil, err
	}
	ttl := f.TTL
	if ttl == 0 {
		ttl = 120
	}
	if err := tlv(tlvChassisID, chassis); err != nil {
		return nil, err
	}
	if err := tlv(tlvPortID, append([]byte{portIfName}, port...)); err != nil {
		return nil, err
	}
	if err := tlv(tlvTTL, binary.BigEndian.AppendUint16(nil, ttl)); err != nil {
		return nil, err
	}
	for _, o := range []struct {
		typ int
		s   string
	}{{tlvPortDesc, f.PortDescription}, {tlvSystemName, f.SystemName}, {tlvSystemDesc, f.SystemDescription}} {
		if o.s == "" {
			continue
		}
		v, err := str(o.s)
		if err != nil {
			return nil, err
		}
		if err := tlv(o.typ, v); err != nil {
			return nil, err
		}
	}
	if err := tlv(tlvEnd, nil); err != nil {
		return nil, err
	}
	for len(buf) < 60 { // minimum Ethernet payload
		buf = append(buf, 0)
	}
	return buf, nil
}
