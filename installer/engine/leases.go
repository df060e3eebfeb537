package engine

import (
	"context"
	"encoding/json"
	"fmt"

	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/dhcp"
)

const leasesBucket = "leases"

// Leases keeps the DHCP server's leases in the state store, so they
// survive a restart of airlock. The DHCP server batches its writes; each
// batch is one transaction.
type Leases struct{ Store state.Store }

var _ dhcp.LeaseStore = Leases{}

// Load implements dhcp.LeaseStore.
func (l Leases) Load(context.Context) ([]dhcp.Lease, error) {
	var out []dhcp.Lease
	err := l.Store.View(func(tx state.Tx) error {
		return tx.ForEach(leasesBucket, func(key string, raw []byte) error {
			var lease dhcp.Lease
			if err := json.Unmarshal(raw, &lease); err != nil {
				return fmt.Errorf("lease %s: %w", key, err)
			}
			out = append(out, lease)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("load DHCP leases: %w", err)
	}
	return out, nil
}

// Save implements dhcp.LeaseStore.
func (l Leases) Save(_ context.Context, batch []dhcp.Lease) error {
	err := l.Store.Update(func(tx state.Tx) error {
		for _, lease := range batch {
			if !lease.IP.IsValid() {
				return fmt.Errorf("lease without an address for %s", lease.MAC)
			}
			raw, err := json.Marshal(lease)
			if err != nil {
				return err
			}
			if err := tx.Put(leasesBucket, lease.IP.String(), raw); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save %d DHCP leases: %w", len(batch), err)
	}
	return nil
}
