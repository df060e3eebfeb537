package config

import (
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"
)

// MAC is a hardware address written as six colon-separated hex bytes.
// It is kept in canonical lower-case form so that comparisons work.
type MAC string

// UnmarshalText accepts aa:bb:cc:dd:ee:ff (or with dashes, any case).
func (m *MAC) UnmarshalText(b []byte) error {
	hw, err := net.ParseMAC(string(b))
	if err != nil || len(hw) != 6 {
		return fmt.Errorf("invalid MAC address %q: want six hex bytes like 52:54:00:12:34:56", b)
	}
	*m = MAC(hw.String())
	return nil
}

// MarshalText writes the canonical form.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m), nil }

// Quantity is an amount of bytes, written like Kubernetes quantities:
// 512Mi, 64Gi, 2Ti (powers of 1024) or 100G, 4T (powers of 1000), or a
// plain number of bytes.
type Quantity uint64

var quantityUnits = []struct {
	suffix string
	factor uint64
}{
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"Pi", 1 << 50},
	{"k", 1e3}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}, {"P", 1e15},
}

// ParseQuantity parses a Quantity.
func ParseQuantity(s string) (Quantity, error) {
	num, factor := s, uint64(1)
	for _, u := range quantityUnits {
		if strings.HasSuffix(s, u.suffix) {
			num, factor = strings.TrimSuffix(s, u.suffix), u.factor
			break
		}
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || num == "" {
		return 0, fmt.Errorf("invalid size %q: want a whole number with an optional unit, like 64Gi or 500G", s)
	}
	if n > math.MaxUint64/factor {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return Quantity(n * factor), nil
}

// UnmarshalText parses a Quantity.
func (q *Quantity) UnmarshalText(b []byte) error {
	v, err := ParseQuantity(string(b))
	if err != nil {
		return err
	}
	*q = v
	return nil
}

// MarshalText writes the shortest exact form.
func (q Quantity) MarshalText() ([]byte, error) { return []byte(q.String()), nil }

func (q Quantity) String() string {
	if q == 0 {
		return "0"
	}
	for i := len(quantityUnits[:5]) - 1; i >= 0; i-- {
		u := quantityUnits[i]
		if uint64(q)%u.factor == 0 {
			return strconv.FormatUint(uint64(q)/u.factor, 10) + u.suffix
		}
	}
	for _, u := range []struct {
		suffix string
		factor uint64
	}{{"P", 1e15}, {"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"k", 1e3}} {
		if uint64(q)%u.factor == 0 {
			return strconv.FormatUint(uint64(q)/u.factor, 10) + u.suffix
		}
	}
	return strconv.FormatUint(uint64(q), 10)
}

// Duration is a time.Duration written as Go durations are (90s, 1h30m).
type Duration time.Duration

// UnmarshalText parses a Duration.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q: want a number with a unit, like 90s, 30m or 12h", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the Go form.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }
