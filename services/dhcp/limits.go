package dhcp

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Limits bound the addresses strangers can take: clients the Admitter does
// not know. A host that makes up MACs is a stranger for each of them, so
// without these a few hundred DISCOVERs and REQUESTs drain the pool for a
// whole lease time. Known machines are never limited. Zero values mean no
// limit.
type Limits struct {
	// NewPerSecond and NewBurst are a token bucket on new addresses for
	// strangers, all clients together. A client's own lease or offer given
	// again takes no token.
	NewPerSecond float64
	NewBurst     int
	// SourcePerSecond and SourceBurst are the same for each source: a
	// relay agent and circuit (giaddr with the relay agent information,
	// option 82: per switch port behind a relay that adds it), or the
	// address a unicast request came from. A broadcast from a client with
	// no address yet (0.0.0.0) has no source to tell apart: only the
	// overall bucket and the share bound those.
	SourcePerSecond float64
	SourceBurst     int
	// StrangerShare is the percentage of each subnet's range that
	// strangers may hold at once (offered or bound); the rest is kept for
	// known machines. 0 means 100 (no reserve).
	StrangerShare int
}

// DefaultLimits: a rack powering on (hundreds of machines) is served within
// seconds; a host making up MACs gets at most 80% of a pool, at 50 new
// addresses a second.
func DefaultLimits() Limits {
	return Limits{NewPerSecond: 50, NewBurst: 200, SourcePerSecond: 5, SourceBurst: 50, StrangerShare: 80}
}

// bucket is a token bucket.
type bucket struct {
	tokens float64
	last   time.Time
}

// fill brings the bucket to now and reports whether a token is there. A
// zero rate means no limit.
func (b *bucket) fill(now time.Time, rate float64, burst int) bool {
	if rate <= 0 {
		return true
	}
	if b.last.IsZero() {
		b.tokens = float64(max(burst, 1))
	} else if d := now.Sub(b.last); d > 0 {
		b.tokens = min(float64(max(burst, 1)), b.tokens+d.Seconds()*rate)
	}
	b.last = now
	return b.tokens >= 1
}

func (b *bucket) take(rate float64) {
	if rate > 0 {
		b.tokens--
	}
}

// maxSourceBuckets bounds the per-source table: relay agent information
// is chosen by whoever sends the packet.
const maxSourceBuckets = 4096

// sourceKey is the key of a request's source bucket: giaddr and option
// 82 for a relayed request, else the unicast sender's address.
func sourceKey(req Request) (string, bool) {
	m := req.Msg
	if gi, ok := addr4(m.GatewayIPAddr); ok {
		return "relay " + gi.String() + "/" + string(m.GetOneOption(dhcpv4.OptionRelayAgentInformation)), true
	}
	if a := req.Peer.Addr(); a.IsValid() && !a.IsUnspecified() {
		return "from " + a.Unmap().String(), true
	}
	return "", false
}

const whyShareFull = "strangers hold their share of the pool"

// admitNewLocked reports whether a stranger may take a new address in sub
// now, and takes the tokens if so.
func (h *Handler) admitNewLocked(req Request, sub *Subnet, now time.Time) (ok bool, why string) {
	lim := h.cfg.Limits
	var rb *bucket
	if key, ok := sourceKey(req); ok && lim.SourcePerSecond > 0 {
		rb = h.sourceBuckets[key]
		if rb == nil {
			if len(h.sourceBuckets) >= maxSourceBuckets {
				for k, b := range h.sourceBuckets {
					if b.fill(now, lim.SourcePerSecond, lim.SourceBurst) && b.tokens >= float64(max(lim.SourceBurst, 1)) {
						delete(h.sourceBuckets, k) // full again: forgetting it changes nothing
					}
				}
			}
			if len(h.sourceBuckets) >= maxSourceBuckets {
				key = "" // one shared bucket for the rest
			}
			if rb = h.sourceBuckets[key]; rb == nil {
				rb = &bucket{}
				h.sourceBuckets[key] = rb
			}
		}
		if !rb.fill(now, lim.SourcePerSecond, lim.SourceBurst) {
			return false, "new addresses for strangers from this source are coming too fast"
		}
	}
	if !h.newBucket.fill(now, lim.NewPerSecond, lim.NewBurst) {
		return false, "new addresses for strangers are coming too fast"
	}
	if share := lim.StrangerShare; share > 0 && share < 100 {
		held := 0
		for ip, l := range h.byIP {
			who := l.holder()
			if who == "" || !inRange(sub, ip) || !l.active(now) {
				continue
			}
			if !h.adm.Admit(parseMAC(who)).Known {
				held++
			}
		}
		if held >= rangeSize(sub)*share/100 {
			return false, whyShareFull
		}
	}
	h.newBucket.take(lim.NewPerSecond)
	if rb != nil {
		rb.take(lim.SourcePerSecond)
	}
	return true, ""
}

// parseMAC parses a MAC as the lease table stores it.
func parseMAC(s string) net.HardwareAddr {
	m, _ := net.ParseMAC(s)
	return m
}

// Reclaiming: when strangers hold their share, or the pool is full, the
// handler probes (ARP and ICMP) one address bound to a stranger; if no host
// answers for it, the address is freed. A host that made up MACs to drain
// the pool holds its addresses only as long as it answers for every one of
// them; a machine that uses its address answers (its kernel, or iPXE,
// replies to ARP). Known machines' leases are never reclaimed. Each lease
// is probed at most once per reclaimEvery, and probes are rate-limited.
const (
	reclaimEvery     = time.Minute
	reclaimPerSecond = 10
	reclaimBurst     = 20
)

// reclaim frees one address in sub bound to a stranger that no host
// answers for, and returns its record (released) to persist.
func (h *Handler) reclaim(ctx context.Context, sub *Subnet) (Lease, bool) {
	if h.probe == nil || h.cfg.ProbeTimeout <= 0 {
		return Lease{}, false // no way to tell a used address
	}
	now := h.now()
	h.mu.Lock()
	if !h.reclaimBucket.fill(now, reclaimPerSecond, reclaimBurst) {
		h.mu.Unlock()
		return Lease{}, false
	}
	h.reclaimBucket.take(reclaimPerSecond)
	var victim *Lease
	for ip, l := range h.byIP {
		who := l.holder()
		if (l.State != StateBound && l.State != StateDeclined) || who == "" || l.probing || !inRange(sub, ip) || !l.active(now) || now.Sub(l.checked) < reclaimEvery {
			continue
		}
		if h.adm.Admit(parseMAC(who)).Known {
			continue
		}
		victim = l
		break
	}
	if victim == nil {
		h.mu.Unlock()
		return Lease{}, false
	}
	victim.checked, victim.probing = now, true
	h.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, h.cfg.ProbeTimeout)
	inUse := h.probe.InUse(pctx, victim.IP)
	cancel()
	h.mu.Lock()
	defer h.mu.Unlock()
	victim.probing = false
	if inUse || h.byIP[victim.IP] != victim {
		return Lease{}, false // in use, or renewed meanwhile
	}
	delete(h.byIP, victim.IP)
	if victim.MAC != "" && h.byMAC[victim.MAC] == victim {
		delete(h.byMAC, victim.MAC)
	}
	h.reclaimed.Add(1)
	h.rl.Log(ctx, slog.LevelInfo, "dhcp: reclaimed a stranger's address: no host answers for it", sub.Prefix.String(),
		"ip", victim.IP, "mac", victim.holder(), "state", victim.State)
	return Lease{IP: victim.IP, MAC: victim.holder(), State: StateReleased, Expires: now}, true
}
