package inventory

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"testing"
	"time"

	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/agentapi"
)

// Totals saturate instead of wrapping, also for records the agent API
// would refuse (a store may hold anything).
func TestSummaryTotalsSaturate(t *testing.T) {
	var inv agentapi.Inventory
	for range 256 {
		inv.Disks = append(inv.Disks, agentapi.Disk{Name: "sd", SizeBytes: 64 << 50})
	}
	inv.Memory.TotalBytes = math.MaxUint64
	s := summarize(inv)
	if s.DiskBytes != math.MaxInt64 || s.Disks != 256 || s.MemoryBytes != math.MaxInt64 {
		t.Fatalf("summary of 256 disks of 64 PiB = %+v, want saturated totals", s)
	}
	inv.Disks = []agentapi.Disk{{SizeBytes: 1 << 40}, {SizeBytes: 1 << 40, Removable: true}, {SizeBytes: 2 << 40}}
	if s := summarize(inv); s.DiskBytes != 3<<40 || s.Disks != 2 {
		t.Fatalf("summary = %+v", s)
	}
}

// FuzzSummarize: no list of disk sizes makes the total wrap or shrink.
func FuzzSummarize(f *testing.F) {
	f.Add(uint64(64<<50), 256, uint64(0))
	f.Add(uint64(math.MaxUint64), 2, uint64(1))
	f.Add(uint64(1<<63), 3, uint64(1<<63))
	f.Fuzz(func(t *testing.T, size uint64, n int, last uint64) {
		n = min(max(n, 0), 1024)
		var inv agentapi.Inventory
		for range n {
			inv.Disks = append(inv.Disks, agentapi.Disk{SizeBytes: size})
		}
		inv.Disks = append(inv.Disks, agentapi.Disk{SizeBytes: last})
		s := summarize(inv)
		if n == 0 {
			size = 0
		}
		if s.DiskBytes > math.MaxInt64 || s.DiskBytes < min(size, math.MaxInt64) || s.DiskBytes < min(last, math.MaxInt64) {
			t.Fatalf("%d disks of %d and one of %d total %d", n, size, last, s.DiskBytes)
		}
	})
}

// FuzzSecondAgent registers machine A, then a second agent's report B,
// over the in-memory store. Whatever B claims: either it is refused (an
// identity conflict, A's record and order untouched), or it is A's next
// boot, which needs A's UUID and serial and either no new MAC or a UUID
// and serial to prove it, and A's agent silent; or it is another machine
// that shares no identifier with A.
func FuzzSecondAgent(f *testing.F) {
	raw, err := os.ReadFile("../../services/agentapi/testdata/registration.json")
	if err != nil {
		f.Fatal(err)
	}
	mk := func(serial, uuid string, macs ...string) []byte {
		var reg agentapi.Registration
		if err := json.Unmarshal(raw, &reg); err != nil {
			f.Fatal(err)
		}
		reg.BootMAC = macs[0]
		reg.Inventory.System.Serial, reg.Inventory.System.UUID = serial, uuid
		reg.Inventory.NICs = nil
		for i, m := range macs {
			reg.Inventory.NICs = append(reg.Inventory.NICs, agentapi.NIC{Name: "eth" + string(rune('0'+i)), MAC: m})
		}
		data, _ := json.Marshal(reg)
		return data
	}
	const u1, u2 = "9b2f3c1e-0000-4000-8000-0000000000a1", "9b2f3c1e-0000-4000-8000-0000000000b1"
	const m1, m2, m3 = "52:54:00:00:00:a1", "52:54:00:00:00:b1", "52:54:00:00:00:c1"
	a := mk("SN-A", u1, m1)
	for _, b := range [][]byte{
		mk("SN-A", u1, m1), mk("SN-A", u2, m2), mk("SN-B", u1, m2), mk("SN-B", u2, m2, m1),
		mk("SN-B", u2, m1), mk("", "", m1), mk("SN-A", u1, m2), mk("SN-A ", u1, m1, m3),
		mk("To be filled by O.E.M.", "03000200-0400-0500-0006-000700080009", m1),
		mk("SN-B", u2, m2),
	} {
		f.Add(a, b, true)
		f.Add(a, b, false)
	}
	junk := mk("", "", m1)
	f.Add(junk, mk("", "", m1, m2), true)
	f.Add(junk, mk("", "", m1), true)
	f.Fuzz(func(t *testing.T, rawA, rawB []byte, silent bool) {
		var regA, regB agentapi.Registration
		if agentapi.DecodeBytes(rawA, &regA) != nil || regA.Validate() != nil ||
			agentapi.DecodeBytes(rawB, &regB) != nil || regB.Validate() != nil {
			return
		}
		s := New(state.NewMem(), nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
		clock := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
		s.now = func() time.Time { return clock }
		ctx := context.Background()
		tokA, err := s.IssueBoot(regA.BootMAC)
		if err != nil {
			t.Fatal(err)
		}
		ra, err := s.Register(ctx, tokA.BootID, agentapi.Identity(&regA), &regA)
		if err != nil {
			t.Fatalf("first machine: %v", err)
		}
		if err := s.Rediscover(ra.MachineID); err != nil {
			t.Fatal(err)
		}
		before, _ := List(s.store)
		if silent {
			clock = clock.Add(time.Hour)
		}
		tokB, err := s.IssueBoot(regB.BootMAC)
		if err != nil {
			t.Fatal(err)
		}
		rb, err := s.Register(ctx, tokB.BootID, agentapi.Identity(&regB), &regB)
		after, _ := List(s.store)
		ca, cb := claimOf(&regA), claimOf(&regB)
		switch {
		case err != nil:
			if !errors.Is(err, agentapi.ErrIdentityConflict) {
				t.Fatalf("second agent: %v", err)
			}
			if len(after) != 1 {
				t.Fatalf("a refused report added a machine: %d", len(after))
			}
			m, was := after[0], before[0]
			if m.ID != was.ID || m.UUID != was.UUID || m.Serial != was.Serial || m.BootID != was.BootID ||
				!slices.Equal(m.MACs, was.MACs) || len(m.Orders) != 1 || m.ConflictCount != 1 {
				t.Fatalf("refused report changed A:\nwas %+v\nnow %+v", was, m)
			}
			if _, err := s.Boot(ctx, tokA.BootID); err != nil {
				t.Fatalf("A's token after a refused report: %v", err)
			}
		case rb.MachineID == ra.MachineID:
			if !silent {
				t.Fatal("a second agent took a machine whose agent runs")
			}
			if ca.uuid != cb.uuid || ca.serial != cb.serial {
				t.Fatalf("taken as the same machine with another identity: %+v, %+v", ca, cb)
			}
			for _, mac := range cb.macs {
				if !slices.Contains(ca.macs, mac) && (ca.uuid == "" || ca.serial == "") {
					t.Fatalf("new MAC %s taken by a machine without UUID and serial", mac)
				}
			}
		default:
			for _, k := range cb.keys() {
				if slices.Contains(ca.keys(), k) {
					t.Fatalf("a new machine shares %s with A", k)
				}
			}
			if len(after) != 2 {
				t.Fatalf("%d machines", len(after))
			}
		}
	})
}
