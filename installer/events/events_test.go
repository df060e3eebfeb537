package events

import (
	"slices"
	"testing"
	"time"
)

func TestBusFansOutInOrderAndStamps(t *testing.T) {
	var b Bus
	var first, second []Kind
	removeFirst := b.Add(SinkFunc(func(e Event) {
		if e.Time.IsZero() || e.Time.Location() != time.UTC {
			t.Errorf("event not stamped in UTC: %v", e.Time)
		}
		first = append(first, e.Kind)
	}))
	b.Add(SinkFunc(func(e Event) { second = append(second, e.Kind) }))
	b.Emit(Event{Kind: StepStarted})
	b.Emit(Event{Kind: StepDone, Time: time.Date(2026, 12, 6, 20, 0, 0, 0, time.FixedZone("x", 3600))})
	removeFirst()
	b.Emit(Event{Kind: InstallDone})
	if want := []Kind{StepStarted, StepDone}; !slices.Equal(first, want) {
		t.Errorf("first sink got %v, want %v (removed before the last)", first, want)
	}
	if want := []Kind{StepStarted, StepDone, InstallDone}; !slices.Equal(second, want) {
		t.Errorf("second sink got %v, want %v", second, want)
	}
	Discard{}.Emit(Event{}) // does nothing, and must not panic
}
