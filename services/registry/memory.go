package registry

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"sort"
)

// Memory is an in-memory Backend for unit tests.
type Memory struct {
	blobs map[string]memBlob
	tags  map[string]map[string]string // repository -> tag -> digest
}

type memBlob struct {
	data      []byte
	mediaType string
}

// NewMemory returns an empty in-memory backend.
func NewMemory() *Memory {
	return &Memory{blobs: map[string]memBlob{}, tags: map[string]map[string]string{}}
}

// Add stores data (a manifest when mediaType is set) and returns its digest.
func (m *Memory) Add(data []byte, mediaType string) string {
	sum := sha256.Sum256(data)
	d := "sha256:" + hex.EncodeToString(sum[:])
	m.blobs[d] = memBlob{data: bytes.Clone(data), mediaType: mediaType}
	return d
}

// Tag points repository:tag at digest.
func (m *Memory) Tag(repository, tag, digest string) {
	if m.tags[repository] == nil {
		m.tags[repository] = map[string]string{}
	}
	m.tags[repository][tag] = digest
}

// Repositories implements Backend.
func (m *Memory) Repositories() []string {
	var r []string
	for k := range m.tags {
		r = append(r, k)
	}
	sort.Strings(r)
	return r
}

// Tags implements Backend.
func (m *Memory) Tags(repository string) []string {
	t, ok := m.tags[repository]
	if !ok {
		return nil
	}
	var r []string
	for k := range t {
		r = append(r, k)
	}
	sort.Strings(r)
	return r
}

// ResolveTag implements Backend.
func (m *Memory) ResolveTag(repository, tag string) (string, bool) {
	d, ok := m.tags[repository][tag]
	return d, ok
}

// Content implements Backend.
func (m *Memory) Content(digest string) (io.ReaderAt, int64, int64, string, error) {
	b, ok := m.blobs[digest]
	if !ok {
		return nil, 0, 0, "", fmt.Errorf("content %s: %w", digest, fs.ErrNotExist)
	}
	return bytes.NewReader(b.data), 0, int64(len(b.data)), b.mediaType, nil
}
