// Package synthimage writes the synthetic OS image the disk-write
// benchmarks serve: the same bytes every time for a size, shaped like a
// cloud image (in each 8 MiB, 2 MiB of zeros, 2 MiB of random bytes and
// 4 MiB of text-like data), so that it compresses as one does.
package synthimage

import (
	"io"
	"math/rand/v2"
)

// Write writes size bytes of the image to w.
func Write(w io.Writer, size int64) error {
	rng := rand.New(rand.NewChaCha8([32]byte{'a', 'i', 'r', 'l', 'o', 'c', 'k'}))
	words := []string{"kernel", "module", "systemd", "usr", "lib", "share", "doc", "x86_64", "linux", "gnu",
		"python3", "cloud-init", "\n", "/", ".so", "0", "1", "config", "etc", "var", "log", "\t", "=", "true"}
	block := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(block)) {
		switch (off >> 20) % 8 {
		case 0, 1:
			clear(block)
		case 2, 3:
			for i := 0; i < len(block); i += 8 {
				v := rng.Uint64()
				for j := 0; j < 8; j++ {
					block[i+j] = byte(v >> (8 * j))
				}
			}
		default:
			b := block[:0]
			for len(b) < len(block) {
				b = append(b, words[rng.IntN(len(words))]...)
				if rng.IntN(4) == 0 {
					b = append(b, byte('a'+rng.IntN(26)))
				}
			}
			block = b[:len(block)]
		}
		n := int64(len(block))
		if size-off < n {
			n = size - off
		}
		if _, err := w.Write(block[:n]); err != nil {
			return err
		}
	}
	return nil
}
