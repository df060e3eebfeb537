package inventory

import (
	"fmt"
	"slices"

	"airlock.dev/airlock/installer/state"
	"airlock.dev/airlock/services/agentapi"
)

const ordersBucket = "orders" // only its sequence: order IDs

// maxResults bounds the order results kept per machine.
const maxResults = 32

// maxOrders bounds the orders waiting for one machine.
const maxOrders = 16

// numbered gives o an ID no other order has.
func numbered(tx state.Tx, o agentapi.Order) (agentapi.Order, error) {
	seq, err := tx.NextSequence(ordersBucket)
	if err != nil {
		return agentapi.Order{}, err
	}
	o.ID = fmt.Sprintf("o-%d", seq)
	return o, nil
}

// recordResult keeps an agent's answer to an order, replacing an earlier
// answer to the same order.
func recordResult(m *Machine, r agentapi.OrderResult) {
	m.Results = slices.DeleteFunc(m.Results, func(old agentapi.OrderResult) bool { return old.ID == r.ID })
	m.Results = append(m.Results, r)
	if n := len(m.Results); n > maxResults {
		m.Results = slices.Delete(m.Results, 0, n-maxResults)
	}
}

// Order queues an order for a machine's agent, with an ID of its own, and
// returns it; the agent's next heartbeat carries it, and every heartbeat
// after that until the agent answers it for good. The order must validate
// (its ID aside).
func (s *Store) Order(machineID string, o agentapi.Order) (agentapi.Order, error) {
	return s.OrderWith(machineID, o, nil)
}

// OrderWith is Order with also run in the same transaction, given the
// order with its ID: the order is queued only if also succeeds. A caller
// that keeps the order's ID in a record of its own writes it in also, so
// that a crash can never leave an order queued that the caller does not
// know it gave (and would give again).
func (s *Store) OrderWith(machineID string, o agentapi.Order, also func(tx state.Tx, o agentapi.Order) error) (agentapi.Order, error) {
	check := o
	check.ID = "o-1"
	if err := check.Validate(); err != nil {
		return agentapi.Order{}, fmt.Errorf("order for %s: %w", machineID, err)
	}
	err := s.store.Update(func(tx state.Tx) error {
		var m Machine
		found, err := getJSON(tx, machinesBucket, machineID, &m)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w: %q", ErrNoMachine, machineID)
		}
		if len(m.Orders) >= maxOrders {
			return fmt.Errorf("machine %s has %d orders waiting already", machineID, len(m.Orders))
		}
		if o, err = numbered(tx, o); err != nil {
			return err
		}
		m.Orders = append(m.Orders, o)
		if also != nil {
			if err := also(tx, o); err != nil {
				return err
			}
		}
		return putJSON(tx, machinesBucket, machineID, m)
	})
	if err != nil {
		return agentapi.Order{}, err
	}
	s.log.Info("order queued", "machine", machineID, "order", o.ID, "kind", o.Kind)
	return o, nil
}

// Result returns the agent's latest answer to an order, and whether the
// order is still waiting to be answered for good.
func (s *Store) Result(machineID, orderID string) (r agentapi.OrderResult, pending bool, err error) {
	m, err := s.Get(machineID)
	if err != nil {
		return r, false, err
	}
	pending = slices.ContainsFunc(m.Orders, func(o agentapi.Order) bool { return o.ID == orderID })
	if i := slices.IndexFunc(m.Results, func(x agentapi.OrderResult) bool { return x.ID == orderID }); i >= 0 {
		r = m.Results[i]
	}
	return r, pending, nil
}
