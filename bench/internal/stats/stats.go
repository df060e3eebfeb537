// Package stats holds the summaries the benchmarks print: the median of a
// set of rounds, its range, and a confidence interval for it.
package stats

import (
	"math"
	"slices"
)

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

// MedianCI is a distribution-free confidence interval for the median of
// the population xs was drawn from: the k-th smallest and k-th largest
// value, with k the largest for which the interval covers the median with
// probability at least conf (from the binomial distribution of how many
// values fall below the median). With too few values for conf it is the
// whole range; cover is the probability the interval actually has. It
// panics on an empty slice.
func MedianCI[T Number](xs []T, conf float64) (lo, hi T, cover float64) {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	p := math.Pow(0.5, float64(n)) // the chance of each way n values fall about the median
	// tail is P(fewer than k of the n values fall below the median), the
	// chance that the median lies below s[k-1] (and, alike, above s[n-k]).
	tail, c, k := 0.0, 1.0, 0 // c is C(n, i)
	for i := 0; i < n/2; i++ {
		next := tail + c*p
		if 2*next > 1-conf {
			break
		}
		tail, k = next, i+1
		c = c * float64(n-i) / float64(i+1)
	}
	if k == 0 {
		return s[0], s[n-1], 1 - 2*p
	}
	return s[k-1], s[n-k], 1 - 2*tail
}
