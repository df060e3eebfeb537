package agentapi

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecodeRegistration feeds arbitrary bodies to the decoder and
// validator: neither may panic, and whatever passes both must survive a
// round trip unchanged and still validate.
func FuzzDecodeRegistration(f *testing.F) {
	// Every registration fixture: a hand-written one and one a real agent
	// sent from a QEMU VM (installer/bootimage's QEMU test, flag
	// -capture-registration).
	files, _ := filepath.Glob("testdata/registration*.json")
	if len(files) < 2 {
		f.Fatalf("registration fixtures missing: %v", files)
	}
	for _, file := range files {
		seed, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(seed)
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"bootMAC":"52:54:00:12:34:56","arch":"arm64","inventory":{"cpu":{"threads":1},"memory":{"totalBytes":1},"nics":[{"name":"eth0","mac":"52:54:00:12:34:56","link":true}]}}`))
	f.Add([]byte(`{"bootMAC":"52:54:00:12:34:56"} trailing`))
	f.Add([]byte("{\"inventory\":{\"system\":{\"serial\":\"\\u001b[31m\"}}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Registration
		if err := DecodeBytes(data, &r); err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			return
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("marshal valid registration: %v", err)
		}
		var r2 Registration
		if err := DecodeBytes(again, &r2); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if err := r2.Validate(); err != nil {
			t.Fatalf("round trip no longer valid: %v", err)
		}
		_ = Identity(&r2)
	})
}

// FuzzParseToken checks that a token that parses prints back identically.
func FuzzParseToken(f *testing.F) {
	f.Add("0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add("x.y")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			return
		}
		if tok.String() != s {
			t.Fatalf("ParseToken(%q).String() = %q", s, tok.String())
		}
	})
}
