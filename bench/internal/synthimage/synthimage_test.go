package synthimage

import (
	"bytes"
	"crypto/sha256"
	"testing"
)

// The same size gives the same bytes, exactly size of them, and the three
// kinds of data are where they should be.
func TestWriteIsRepeatableAndShaped(t *testing.T) {
	const size = 8<<20 + 12345
	var a, b bytes.Buffer
	if err := Write(&a, size); err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, size); err != nil {
		t.Fatal(err)
	}
	if a.Len() != size || sha256.Sum256(a.Bytes()) != sha256.Sum256(b.Bytes()) {
		t.Fatalf("len %d (want %d), repeatable %v", a.Len(), size, bytes.Equal(a.Bytes(), b.Bytes()))
	}
	img := a.Bytes()
	if !bytes.Equal(img[:2<<20], make([]byte, 2<<20)) {
		t.Error("the first 2 MiB are not zeros")
	}
	if zeros := bytes.Count(img[2<<20:4<<20], []byte{0}); zeros > 20000 {
		t.Errorf("the random part has %d zero bytes", zeros)
	}
	if !bytes.Contains(img[4<<20:8<<20], []byte("cloud-init")) {
		t.Error("the text part has no words")
	}
}
