//go:build race

package config

// raceEnabled: the race detector makes code several times slower and
// larger, so limits measured in this build are scaled (see limitScale).
const raceEnabled = true
