package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"time"

	"airlock.dev/airlock/services/agentapi"
	"airlock.dev/airlock/services/agentapi/lldp"
)

// Version is the agent's version, set at build time with -ldflags -X.
var Version = "dev"

// Options configure one run of the agent.
type Options struct {
	// Root is the file system to read /sys and /proc from.
	Root fs.FS
	// Client talks to airlock.
	Client *Client
	// BootMAC is the NIC that got the address; if empty, the first NIC
	// with link.
	BootMAC net.HardwareAddr
	// LLDPWait bounds LLDP listening per NIC before registering; 0
	// disables it.
	LLDPWait time.Duration
	// LLDPLate is how much longer to keep listening, after registering, on
	// NICs with link that heard nothing yet. Real switches send LLDP only
	// every 30 s, so a short LLDPWait often misses them; a neighbour heard
	// late is sent as an inventory update. 0 disables it.
	LLDPLate time.Duration
	// ListenLLDP listens on one NIC; lldp.Listen when nil.
	ListenLLDP func(ctx context.Context, ifname string, timeout time.Duration) (lldp.Frame, error)
	// Backoff for registration; defaults to 500 ms doubling to 30 s.
	Backoff Backoff
	// OnOrder carries out an order, reporting its progress. It is called
	// once per order ID, one order at a time, while the heartbeats go on;
	// its error becomes the order's failed result. Orders that end the
	// agent (reboot, power off) are called at once and do not return on
	// success.
	OnOrder func(ctx context.Context, o agentapi.Order, progress func(done, total uint64)) error
	Log     *slog.Logger
	// Now is the clock (time.Now when nil), for uptime.
	Now func() time.Time
}

// Gather collects the inventory and the LLDP neighbours of every NIC with
// link, listening on all of them at once for at most opts.LLDPWait.
func Gather(ctx context.Context, opts Options) (agentapi.Inventory, error) {
	inv, err := Collect(opts.Root)
	if err != nil {
		return inv, fmt.Errorf("collect inventory: %w", err)
	}
	if opts.LLDPWait <= 0 {
		return inv, nil
	}
	listenLLDP(ctx, opts, &inv, opts.LLDPWait)
	return inv, nil
}

// listenLLDP listens at once on every NIC of inv with link and no
// neighbour yet, for at most wait, and fills in what it hears. It reports
// whether it heard anything.
func listenLLDP(ctx context.Context, opts Options, inv *agentapi.Inventory, wait time.Duration) bool {
	listen := opts.ListenLLDP
	if listen == nil {
		listen = lldp.Listen
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	heard := false
	for i := range inv.NICs {
		n := &inv.NICs[i]
		if !n.Link || n.LLDP != nil {
			continue
		}
		wg.Go(func() {
			f, err := listen(ctx, n.Name, wait)
			if err != nil {
				opts.Log.Info("no LLDP neighbour yet", "nic", n.Name, "waited", wait, "err", err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			heard = true
			n.LLDP = &agentapi.LLDPNeighbor{
				ChassisID: f.ChassisID, PortID: f.PortID,
				SystemName: f.SystemName, PortDescription: f.PortDescription,
			}
			opts.Log.Info("LLDP neighbour", "nic", n.Name, "system", f.SystemName, "port", f.PortID)
		})
	}
	wg.Wait()
	return heard
}

// Registration builds the registration for inv, choosing the boot NIC.
func Registration(inv agentapi.Inventory, bootMAC net.HardwareAddr) (agentapi.Registration, error) {
	reg := agentapi.Registration{AgentVersion: Version, Arch: runtime.GOARCH, Inventory: inv}
	if bootMAC != nil {
		reg.BootMAC = bootMAC.String()
	} else {
		for _, n := range inv.NICs {
			if n.Link {
				reg.BootMAC = n.MAC
				break
			}
		}
	}
	if reg.BootMAC == "" {
		return reg, errors.New("no NIC with link to name as the boot NIC")
	}
	if !validVersion(reg.AgentVersion) {
		reg.AgentVersion = "dev"
	}
	return reg, nil
}

func validVersion(v string) bool {
	return len(v) <= 64 && strings.IndexFunc(v, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._+~-", r))
	}) < 0
}

// Run gathers the inventory, registers (retrying with backoff), then
// heartbeats until ctx ends, handing orders to opts.OnOrder. It returns nil
// when ctx is cancelled.
func Run(ctx context.Context, opts Options) error {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Backoff.Initial == 0 {
		opts.Backoff = Backoff{Initial: 500 * time.Millisecond, Max: 30 * time.Second}
	}
	start := opts.Now()
	inv, err := Gather(ctx, opts)
	if err != nil {
		return err
	}
	reg, err := Registration(inv, opts.BootMAC)
	if err != nil {
		return err
	}
	if err := reg.Validate(); err != nil {
		// Our own report is invalid: say so, but send it anyway so that
		// airlock logs what is wrong with this machine.
		opts.Log.Warn("inventory does not validate", "err", err)
	}
	var reply agentapi.RegisterReply
	err = opts.Backoff.Retry(ctx, opts.Log, "register", func(ctx context.Context) error {
		var err error
		reply, err = opts.Client.Register(ctx, &reg)
		return err
	})
	if err != nil {
		return nilIfCancelled(ctx, err)
	}
	opts.Log.Info("registered", "machine", reply.MachineID, "serial", inv.System.Serial,
		"uuid", inv.System.UUID, "bootMAC", reg.BootMAC, "disks", len(inv.Disks), "nics", len(inv.NICs),
		"after", opts.Now().Sub(start).Round(time.Millisecond))

	// Keep listening for switches that have not spoken yet.
	late := make(chan agentapi.Inventory, 1)
	missing := false
	for _, n := range inv.NICs {
		missing = missing || n.Link && n.LLDP == nil
	}
	if opts.LLDPLate > 0 && opts.LLDPWait > 0 && missing {
		go func() {
			more := inv
			more.NICs = append([]agentapi.NIC(nil), inv.NICs...)
			if listenLLDP(ctx, opts, &more, opts.LLDPLate) {
				late <- more
			}
		}()
	}

	interval := time.Duration(reply.HeartbeatSeconds) * time.Second
	var seq uint64
	orders := newOrderBook()
	var last []agentapi.Order // the orders of the last reply, to answer
	for {
		interval = max(min(interval, 5*time.Minute), time.Second)
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case more := <-late:
			t.Stop()
			err := opts.Backoff.Retry(ctx, opts.Log, "send inventory update", func(ctx context.Context) error {
				_, err := opts.Client.UpdateInventory(ctx, &more)
				return err
			})
			if err != nil {
				return nilIfCancelled(ctx, err)
			}
			opts.Log.Info("inventory updated with late LLDP neighbours")
			continue
		case <-t.C:
		}
		seq++
		hb := agentapi.Heartbeat{Seq: seq, State: orders.state(), UptimeSeconds: uint64(opts.Now().Sub(start).Seconds()), Results: orders.answers(last)}
		out, err := opts.Client.Heartbeat(ctx, &hb)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			opts.Log.Warn("heartbeat failed", "seq", seq, "err", err)
			continue
		}
		if out.HeartbeatSeconds > 0 {
			interval = time.Duration(out.HeartbeatSeconds) * time.Second
		}
		last = out.Orders
		for _, o := range out.Orders {
			orders.take(ctx, o, opts)
		}
	}
}

// orderBook is what the agent knows of its orders: each is carried out
// once, and a re-sent one is answered with its result.
type orderBook struct {
	mu      sync.Mutex
	results map[string]agentapi.OrderResult
	seen    []string // IDs in arrival order, to forget the oldest
	busy    string   // the order running, if any
}

// maxKnownOrders bounds what the agent remembers.
const maxKnownOrders = 64

func newOrderBook() *orderBook { return &orderBook{results: map[string]agentapi.OrderResult{}} }

// state is the heartbeat's state: the running order's kind, or waiting.
func (b *orderBook) state() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.busy != "" {
		return "working"
	}
	return "waiting"
}

// answers are the results for the orders airlock sent last.
func (b *orderBook) answers(last []agentapi.Order) []agentapi.OrderResult {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []agentapi.OrderResult
	for _, o := range last {
		if r, ok := b.results[o.ID]; ok && len(out) < agentapi.MaxResults {
			out = append(out, r)
		}
	}
	return out
}

func (b *orderBook) set(r agentapi.OrderResult) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.results[r.ID]; !ok {
		b.seen = append(b.seen, r.ID)
		if len(b.seen) > maxKnownOrders {
			delete(b.results, b.seen[0])
			b.seen = b.seen[1:]
		}
	}
	b.results[r.ID] = r
	if r.Final() && b.busy == r.ID {
		b.busy = ""
	}
}

// take starts an order it has not seen, unless another one runs (airlock
// sends it again). An order that ends the agent runs at once.
func (b *orderBook) take(ctx context.Context, o agentapi.Order, opts Options) {
	if err := o.Validate(); err != nil {
		if !agentapi.ReOrderID.MatchString(o.ID) {
			// Without an ID of airlock's form there is nothing to answer
			// (a result naming it would make every heartbeat invalid).
			opts.Log.Warn("order refused, and cannot be answered", "id", o.ID, "err", err)
			return
		}
		b.mu.Lock()
		_, known := b.results[o.ID]
		b.mu.Unlock()
		if !known {
			opts.Log.Warn("order refused", "id", o.ID, "err", err)
			b.set(agentapi.OrderResult{ID: o.ID, Status: agentapi.ResultFailed, Error: truncate("refused: "+err.Error(), 1024)})
		}
		return
	}
	b.mu.Lock()
	_, known := b.results[o.ID]
	busy := b.busy != ""
	if !known && !busy && !o.Ends() {
		b.busy = o.ID
	}
	b.mu.Unlock()
	if known || (busy && !o.Ends()) {
		return
	}
	opts.Log.Info("order", "id", o.ID, "kind", o.Kind)
	if opts.OnOrder == nil {
		b.set(agentapi.OrderResult{ID: o.ID, Status: agentapi.ResultFailed, Error: "this agent carries out no orders"})
		return
	}
	b.set(agentapi.OrderResult{ID: o.ID, Status: agentapi.ResultRunning})
	run := func() {
		err := opts.OnOrder(ctx, o, func(done, total uint64) {
			b.set(agentapi.OrderResult{ID: o.ID, Status: agentapi.ResultRunning, Done: done, Total: total})
		})
		r := agentapi.OrderResult{ID: o.ID, Status: agentapi.ResultDone}
		if err != nil {
			r.Status, r.Error = agentapi.ResultFailed, truncate(err.Error(), 1024)
			opts.Log.Error("order failed", "id", o.ID, "kind", o.Kind, "err", err)
		} else {
			opts.Log.Info("order done", "id", o.ID, "kind", o.Kind)
		}
		b.set(r)
	}
	if o.Ends() {
		run()
		return
	}
	go run()
}

// truncate makes s a valid one-line text of at most n bytes, as a report
// must be.
func truncate(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > n {
		s = s[:n]
	}
	return strings.ToValidUTF8(s, "")
}

func nilIfCancelled(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}
