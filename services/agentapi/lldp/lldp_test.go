package lldp

import (
	"context"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"airlock.dev/airlock/installer/lab/netns"
)

func torFrame() Frame {
	return Frame{
		Source:          net.HardwareAddr{0x02, 0, 0, 0, 0x0a, 0x01},
		ChassisID:       "02:00:00:00:0a:01",
		PortID:          "Eth1/7",
		TTL:             120,
		PortDescription: "Ethernet1/7",
		SystemName:      "rack-a-tor",
	}
}

func TestRoundTrip(t *testing.T) {
	want := torFrame()
	data, err := Encode(want)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if got.ChassisID != want.ChassisID || got.PortID != want.PortID || got.SystemName != want.SystemName ||
		got.PortDescription != want.PortDescription || got.TTL != 120 || got.Source.String() != want.Source.String() {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	local := want
	local.ChassisID = "tor-a.example"
	data, _ = Encode(local)
	if got, err := Parse(data); err != nil || got.ChassisID != "tor-a.example" {
		t.Fatalf("locally assigned chassis: %+v %v", got, err)
	}
}

// A frame as a Cisco-style access switch sends it: chassis MAC, port ID as
// interface name, TTL, port description, system name, system capabilities,
// an org-specific TLV and End.
const switchFrame = "0180c200000e" + "001122334455" + "88cc" +
	"0207" + "04" + "001122334455" +
	"0409" + "05" + "4769312f302f3235" +
	"0602" + "0078" +
	"0815" + "4769676162697445746865726e6574312f302f3235" +
	"0a0a" + "73772d726f772d322d31" +
	"0e04" + "00140014" +
	"fe06" + "0080c2010001" +
	"0000"

func TestParseSwitchFrame(t *testing.T) {
	data, err := hex.DecodeString(switchFrame)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	want := Frame{ChassisID: "00:11:22:33:44:55", PortID: "Gi1/0/25", TTL: 120,
		PortDescription: "GigabitEthernet1/0/25", SystemName: "sw-row-2-1"}
	if f.ChassisID != want.ChassisID || f.PortID != want.PortID || f.TTL != want.TTL ||
		f.PortDescription != want.PortDescription || f.SystemName != want.SystemName {
		t.Fatalf("parsed %+v, want %+v", f, want)
	}
}

func TestParseRejects(t *testing.T) {
	good, _ := Encode(torFrame())
	for name, data := range map[string][]byte{
		"short":          good[:10],
		"not lldp":       append(append([]byte{}, good[:12]...), 0x08, 0x00, 0, 0),
		"truncated tlv":  good[:17],
		"length overrun": append(append([]byte{}, good[:14]...), 0x02, 0xff, 0x04),
		"no ttl":         append(append([]byte{}, good[:14]...), 0x02, 0x02, 0x07, 'a', 0x04, 0x02, 0x07, 'b', 0, 0),
		"port first":     append(append([]byte{}, good[:14]...), 0x04, 0x02, 0x07, 'b', 0x02, 0x02, 0x07, 'a', 0x06, 0x02, 0, 1, 0, 0),
		"bad mac id":     append(append([]byte{}, good[:14]...), 0x02, 0x03, 0x04, 1, 2, 0x04, 0x02, 0x07, 'b', 0x06, 0x02, 0, 1, 0, 0),
	} {
		if _, err := Parse(data); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	// Control characters in strings are dropped, never passed on.
	f := torFrame()
	f.SystemName = "tor\x1b[2J\nx"
	data, _ := Encode(f)
	got, err := Parse(data)
	if err != nil || got.SystemName != "tor[2Jx" {
		t.Fatalf("got %q, %v", got.SystemName, err)
	}
}

// TestSendListen sends a real frame over a veth pair inside a test
// namespace and receives it with Listen.
func TestSendListen(t *testing.T) {
	ns := netns.NewTest(t, "al")
	netns.MustVeth(t, ns, "tor0", ns, "nic0")
	frame, err := Encode(torFrame())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan Frame, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- ns.Do(func() error {
			f, err := Listen(ctx, "nic0", 5*time.Second)
			got <- f
			return err
		})
	}()
	// Send a few times: the listener may not be bound yet for the first.
	sendErr := make(chan error, 1)
	go func() {
		for i := 0; i < 20 && ctx.Err() == nil; i++ {
			if err := ns.Do(func() error { return Send("tor0", frame) }); err != nil {
				sendErr <- err
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		sendErr <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("listen: %v", err)
	}
	f := <-got
	if f.SystemName != "rack-a-tor" || f.PortID != "Eth1/7" {
		t.Fatalf("received %+v", f)
	}
	if err := <-sendErr; err != nil {
		t.Fatalf("send: %v", err)
	}
	// And nothing arrives when nobody sends.
	err = ns.Do(func() error {
		_, err := Listen(ctx, "nic0", 300*time.Millisecond)
		return err
	})
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent listen: %v", err)
	}
}
