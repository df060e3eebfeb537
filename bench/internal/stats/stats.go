// Package stats holds the summaries the benchmarks print: the median of a
// set of rounds and its range.
package stats

import "slices"

// Number is what the benchmarks summarise: ratios, rates and durations.
type Number interface {
	~int64 | ~float64
}

// Median is the middle value of xs, or the mean of the two middle values
// when there is an even number of them. It does not reorder xs; it panics
// on an empty slice.
func Median[T Number](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	mid := len(s) / 2
	if len(s)%2 == 1 {
		return s[mid]
	}
	return (s[mid-1] + s[mid]) / 2
}

// Spread is the median of xs with its smallest and largest value.
func Spread[T Number](xs []T) (med, lo, hi T) {
	return Median(xs), slices.Min(xs), slices.Max(xs)
}

// MedianOf is the median of f over the samples in s.
func MedianOf[S any, T Number](s []S, f func(S) T) T {
	v := make([]T, len(s))
	for i := range s {
		v[i] = f(s[i])
	}
	return Median(v)
}
