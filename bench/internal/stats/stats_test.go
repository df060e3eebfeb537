package stats

import (
	"math"
	"slices"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{2, 2, 9, 1, 7}, 2},
	} {
		in := slices.Clone(c.in)
		if got := Median(in); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.in, got, c.want)
		}
		if !slices.Equal(in, c.in) {
			t.Errorf("Median reordered its input: %v", in)
		}
	}
	if got := Median([]time.Duration{3 * time.Second, time.Second}); got != 2*time.Second {
		t.Errorf("Median of durations = %v, want 2s", got)
	}
}

func TestSpread(t *testing.T) {
	med, lo, hi := Spread([]float64{1.2, 0.9, 1.0})
	if med != 1.0 || lo != 0.9 || hi != 1.2 {
		t.Errorf("Spread = %v %v %v, want 1 0.9 1.2", med, lo, hi)
	}
}

func TestMedianOf(t *testing.T) {
	type s struct{ x float64 }
	if got := MedianOf([]s{{1}, {7}, {3}}, func(v s) float64 { return v.x }); got != 3 {
		t.Errorf("MedianOf = %v, want 3", got)
	}
}

// The order statistics of the textbook tables: with 21 values the 95%
// interval is the 6th to the 16th (coverage 97.3%), with 9 the 2nd to the
// 8th (96.1%); 5 values cannot give 95% (the whole range covers 93.8%).
func TestMedianCI(t *testing.T) {
	seq := func(n int) []float64 {
		xs := make([]float64, n)
		for i := range xs {
			xs[i] = float64(n - i) // descending: MedianCI must sort
		}
		return xs
	}
	for _, c := range []struct {
		n      int
		lo, hi float64
		cover  float64
	}{
		{21, 6, 16, 0.973},
		{9, 2, 8, 0.961},
		{5, 1, 5, 0.938},
	} {
		lo, hi, cover := MedianCI(seq(c.n), 0.95)
		if lo != c.lo || hi != c.hi || math.Abs(cover-c.cover) > 0.0005 {
			t.Errorf("MedianCI of %d values = %v-%v (%.4f), want %v-%v (%.3f)", c.n, lo, hi, cover, c.lo, c.hi, c.cover)
		}
	}
}
