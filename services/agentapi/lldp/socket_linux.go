package lldp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// open returns an AF_PACKET socket bound to ifname for LLDP frames.
func open(ifname string) (int, *net.Interface, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return -1, nil, fmt.Errorf("find interface %s: %w", ifname, err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(EtherType)))
	if err != nil {
		return -1, nil, fmt.Errorf("open LLDP socket on %s: %w", ifname, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(EtherType), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("bind LLDP socket to %s: %w", ifname, err)
	}
	return fd, ifi, nil
}

// Send transmits one frame on ifname. On a tap device, that delivers the
// frame to the virtual machine behind it.
func Send(ifname string, frame []byte) error {
	fd, ifi, err := open(ifname)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	to := &unix.SockaddrLinklayer{Protocol: htons(EtherType), Ifindex: ifi.Index, Halen: 6}
	copy(to.Addr[:], NearestBridge)
	if err := unix.Sendto(fd, frame, 0, to); err != nil {
		return fmt.Errorf("send LLDP on %s: %w", ifname, err)
	}
	return nil
}

// Listen waits up to timeout for an LLDP frame on ifname and returns the
// first one that parses. It joins the LLDP multicast group so that the NIC
// does not filter the frames out. It returns ctx's error if ctx ends first,
// and an error wrapping os.ErrDeadlineExceeded if no frame came in time.
func Listen(ctx context.Context, ifname string, timeout time.Duration) (Frame, error) {
	fd, ifi, err := open(ifname)
	if err != nil {
		return Frame{}, err
	}
	defer unix.Close(fd)
	mreq := &unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_MULTICAST, Alen: 6}
	copy(mreq.Address[:], NearestBridge)
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, mreq); err != nil {
		return Frame{}, fmt.Errorf("join LLDP multicast on %s: %w", ifname, err)
	}
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return Frame{}, fmt.Errorf("set LLDP socket timeout: %w", err)
	}
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 9000)
	var lastErr error
	for time.Now().Before(deadline) {
		if err := ctx.Err(); err != nil {
			return Frame{}, err
		}
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return Frame{}, fmt.Errorf("receive LLDP on %s: %w", ifname, err)
		}
		f, err := Parse(buf[:n])
		if err == nil {
			return f, nil
		}
		lastErr = err
	}
	if lastErr != nil {
		return Frame{}, fmt.Errorf("no valid LLDP frame on %s within %s (last: %v): %w", ifname, timeout, lastErr, errDeadline)
	}
	return Frame{}, fmt.Errorf("no LLDP frame on %s within %s: %w", ifname, timeout, errDeadline)
}
