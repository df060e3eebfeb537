package engine

import (
	"airlock.dev/airlock/installer/inventory"
	"airlock.dev/airlock/installer/state"
)

// TransitionBuckets are the state store's buckets whose every write is one
// of the install's durable transitions: a journal record (a step started,
// done or failed), a machine's lifecycle change or assignment, a new
// order, and a machine's provisioning record (its seed and token, the
// orders it was given, the token's use). A restarted airlock resumes from
// them; the crash tests (state.WithCommitHook) kill airlock right after
// each in turn. Heartbeats, boot tokens and DHCP leases are written
// elsewhere and are not transitions.
func TransitionBuckets() []string {
	return []string{state.JournalBucket, inventory.LifecycleBucket, inventory.OrdersBucket, provisionBucket}
}
