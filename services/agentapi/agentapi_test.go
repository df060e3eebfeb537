package agentapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func loadRegistration(t testing.TB) Registration {
	t.Helper()
	data, err := os.ReadFile("testdata/registration.json")
	if err != nil {
		t.Fatal(err)
	}
	var r Registration
	if err := DecodeBytes(data, &r); err != nil {
		t.Fatalf("decode fixture: %v", err)
	}
	if err := r.Validate(); err != nil {
		t.Fatalf("fixture invalid: %v", err)
	}
	return r
}

func TestFixturesValidate(t *testing.T) {
	files, _ := filepath.Glob("testdata/registration*.json")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var r Registration
		if err := DecodeBytes(data, &r); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
}

func TestValidateRejects(t *testing.T) {
	cases := map[string]struct {
		mutate func(r *Registration)
		want   string
	}{
		"shell in serial":    {func(r *Registration) { r.Inventory.System.Serial = "x\n$(reboot)\x1b[2J" }, "inventory.system.serial"},
		"long serial":        {func(r *Registration) { r.Inventory.System.Serial = strings.Repeat("a", MaxText+1) }, "longer than"},
		"bad uuid":           {func(r *Registration) { r.Inventory.System.UUID = "../../etc/passwd" }, "inventory.system.uuid"},
		"bad mac":            {func(r *Registration) { r.BootMAC = "52:54:00:12:34" }, "bootMAC"},
		"multicast mac":      {func(r *Registration) { r.Inventory.NICs[0].MAC = "01:80:c2:00:00:0e" }, "multicast"},
		"upper mac":          {func(r *Registration) { r.BootMAC = "52:54:00:12:34:5G" }, "bootMAC"},
		"boot mac not nic":   {func(r *Registration) { r.BootMAC = "52:54:00:aa:bb:cc" }, "not the MAC of any reported NIC"},
		"path disk name":     {func(r *Registration) { r.Inventory.Disks[0].Name = "../sda" }, "disks[0].name"},
		"dup disk":           {func(r *Registration) { r.Inventory.Disks = append(r.Inventory.Disks, r.Inventory.Disks[0]) }, "reported twice"},
		"long ifname":        {func(r *Registration) { r.Inventory.NICs[0].Name = "abcdefghijklmnop" }, "nics[0].name"},
		"bad pci vendor":     {func(r *Registration) { r.Inventory.PCI[0].Vendor = "10de" }, "pci[0].vendor"},
		"bad pci address":    {func(r *Registration) { r.Inventory.PCI[0].Address = "0000:00:03.9" }, "pci[0].address"},
		"zero threads":       {func(r *Registration) { r.Inventory.CPU.Threads = 0 }, "cpu.threads"},
		"cores over threads": {func(r *Registration) { r.Inventory.CPU.Cores = 9 }, "cpu.cores"},
		"no memory":          {func(r *Registration) { r.Inventory.Memory.TotalBytes = 0 }, "memory.totalBytes"},
		"huge disk":          {func(r *Registration) { r.Inventory.Disks[0].SizeBytes = 1 << 63 }, "sizeBytes"},
		"arch":               {func(r *Registration) { r.Arch = "mips" }, "arch"},
		"lldp no port":       {func(r *Registration) { r.Inventory.NICs[0].LLDP.PortID = "" }, "lldp.portID"},
		"lldp control":       {func(r *Registration) { r.Inventory.NICs[0].LLDP.SystemName = "tor\x00" }, "lldp.systemName"},
		"firmware":           {func(r *Registration) { r.Inventory.System.Firmware = "coreboot" }, "firmware"},
		"disk total": {func(r *Registration) {
			for i := range 20 {
				r.Inventory.Disks = append(r.Inventory.Disks, Disk{Name: fmt.Sprintf("nvme%dn1", i), SizeBytes: maxBytes})
			}
		}, "sizes add up to more than"},
		// 256 disks of the largest size each sum to exactly 2^64: a
		// uint64 total wraps to 0.
		"disk total wraps": {func(r *Registration) {
			r.Inventory.Disks = nil
			for i := range maxDisks {
				r.Inventory.Disks = append(r.Inventory.Disks, Disk{Name: fmt.Sprintf("sd%d", i), SizeBytes: maxBytes})
			}
		}, "sizes add up to more than"},
		"too many disks": {func(r *Registration) {
			for i := range maxDisks + 1 {
				r.Inventory.Disks = append(r.Inventory.Disks, Disk{Name: fmt.Sprintf("vd%d", i)})
			}
		}, "more than"},
		"too many pci": {func(r *Registration) {
			for range maxPCI + 1 {
				r.Inventory.PCI = append(r.Inventory.PCI, r.Inventory.PCI[0])
			}
		}, "more than"},
		"too many nics": {func(r *Registration) {
			for range maxNICs + 1 {
				r.Inventory.NICs = append(r.Inventory.NICs, r.Inventory.NICs[0])
			}
		}, "more than"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			r := loadRegistration(t)
			tc.mutate(&r)
			err := r.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	r := loadRegistration(t)
	r.Arch = "x"
	r.Inventory.System.UUID = "y"
	r.Inventory.Disks[0].Name = ""
	err := r.Validate()
	for _, want := range []string{"arch", "system.uuid", "disks[0].name"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
}

func TestDecodeStrict(t *testing.T) {
	var r Registration
	for name, body := range map[string]string{
		"unknown field": `{"bootMAC":"52:54:00:12:34:56","evil":1}`,
		"trailing":      `{"bootMAC":"52:54:00:12:34:56"} {}`,
		"not json":      `bootMAC=1`,
		"wrong type":    `{"bootMAC":5}`,
		"not utf8":      "{\"bootMAC\":\"\xff\"}",
		"too large":     `{"agentVersion":"` + strings.Repeat("a", MaxBodyBytes) + `"}`,
	} {
		if err := Decode(strings.NewReader(body), &r); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

func TestToken(t *testing.T) {
	tok, err := NewToken(nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseToken(tok.String())
	if err != nil || got != tok {
		t.Fatalf("ParseToken(%q) = %v, %v", tok, got, err)
	}
	if !got.Matches(tok.SecretHash()) {
		t.Fatal("token does not match its own hash")
	}
	other, _ := NewToken(nil)
	if other.Matches(tok.SecretHash()) {
		t.Fatal("different token matches")
	}
	for _, bad := range []string{"", "abc", tok.BootID, tok.BootID + ".", "UPPER123." + tok.Secret, tok.BootID + ".short", tok.BootID + "." + tok.Secret + " x"} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
}

type harness struct {
	t       *testing.T
	backend *MemBackend
	handler *Handler
	logs    *bytes.Buffer
	token   Token
}

func newHarness(t *testing.T) *harness {
	logs := &bytes.Buffer{}
	b := NewMemBackend(5)
	tok, err := NewToken(nil)
	if err != nil {
		t.Fatal(err)
	}
	b.Issue(tok)
	return &harness{t: t, backend: b, handler: NewHandler(b, slog.New(slog.NewTextHandler(logs, nil))), logs: logs, token: tok}
}

func (h *harness) post(path, token string, body any) *httptest.ResponseRecorder {
	var data []byte
	switch b := body.(type) {
	case string:
		data = []byte(b)
	default:
		var err error
		if data, err = json.Marshal(b); err != nil {
			h.t.Fatal(err)
		}
	}
	req := httptest.NewRequest(http.MethodPost, Prefix+path, bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.handler.ServeHTTP(rec, req)
	return rec
}

func TestHandlerFlow(t *testing.T) {
	h := newHarness(t)
	reg := loadRegistration(t)
	rec := h.post(PathRegister, h.token.String(), reg)
	if rec.Code != http.StatusOK {
		t.Fatalf("register: %d %s", rec.Code, rec.Body)
	}
	var rr RegisterReply
	if err := DecodeBytes(rec.Body.Bytes(), &rr); err != nil || rr.MachineID == "" || rr.HeartbeatSeconds != 5 {
		t.Fatalf("register reply %s: %v", rec.Body, err)
	}
	// The same machine registering again with its token (agent restart) is fine.
	if rec := h.post(PathRegister, h.token.String(), reg); rec.Code != http.StatusOK {
		t.Fatalf("re-register: %d %s", rec.Code, rec.Body)
	}
	if rec := h.post(PathInventory, h.token.String(), reg.Inventory); rec.Code != http.StatusOK {
		t.Fatalf("inventory: %d %s", rec.Code, rec.Body)
	}
	if rec := h.post(PathHeartbeat, h.token.String(), Heartbeat{Seq: 1, State: "waiting"}); rec.Code != http.StatusOK {
		t.Fatalf("heartbeat: %d %s", rec.Code, rec.Body)
	}
	if rec := h.post(PathHeartbeat, h.token.String(), Heartbeat{Seq: 1, State: "waiting"}); rec.Code != http.StatusForbidden {
		t.Fatalf("replayed heartbeat: %d %s", rec.Code, rec.Body)
	}
	h.backend.Order(rr.MachineID, Order{Kind: OrderReboot})
	rec = h.post(PathHeartbeat, h.token.String(), Heartbeat{Seq: 2, State: "waiting"})
	var hr HeartbeatReply
	if rec.Code != http.StatusOK || DecodeBytes(rec.Body.Bytes(), &hr) != nil || len(hr.Orders) != 1 || hr.Orders[0].Kind != OrderReboot {
		t.Fatalf("heartbeat 2: %d %s", rec.Code, rec.Body)
	}
	ms := h.backend.Machines()
	if len(ms) != 1 || ms[0].Heartbeats != 2 || ms[0].Inventory.System.Serial != "LAB-A-01" {
		t.Fatalf("machines = %+v", ms)
	}
	if !strings.Contains(h.logs.String(), "replayed heartbeat") {
		t.Fatalf("replay not logged:\n%s", h.logs)
	}
}

func TestHandlerRejects(t *testing.T) {
	h := newHarness(t)
	reg := loadRegistration(t)
	forged := h.token
	forged.Secret = strings.Repeat("A", 43)
	unknown, _ := NewToken(nil)

	cases := []struct {
		name, path, token string
		body              any
		code              int
		log               string
	}{
		{"no token", PathRegister, "", reg, http.StatusUnauthorized, "no agent token"},
		{"malformed token", PathRegister, "garbage", reg, http.StatusUnauthorized, "malformed agent token"},
		{"forged token", PathRegister, forged.String(), reg, http.StatusUnauthorized, "forged agent token"},
		{"unknown token", PathRegister, unknown.String(), reg, http.StatusUnauthorized, "unknown or revoked"},
		{"heartbeat before register", PathHeartbeat, h.token.String(), Heartbeat{Seq: 1, State: "waiting"}, http.StatusConflict, "register first"},
		{"bad json", PathRegister, h.token.String(), `{"bootMAC":`, http.StatusBadRequest, "malformed report"},
		{"invalid", PathRegister, h.token.String(), `{"bootMAC":"x","arch":"amd64"}`, http.StatusBadRequest, "invalid report"},
		{"too large", PathRegister, h.token.String(), `{"agentVersion":"` + strings.Repeat("a", MaxBodyBytes) + `"}`, http.StatusRequestEntityTooLarge, "malformed report"},
		{"bad endpoint", "../../etc", h.token.String(), reg, http.StatusNotFound, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h.logs.Reset()
			rec := h.post(tc.path, tc.token, tc.body)
			if rec.Code != tc.code {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.code, rec.Body)
			}
			if !strings.Contains(h.logs.String(), tc.log) {
				t.Fatalf("log does not say %q:\n%s", tc.log, h.logs)
			}
			if strings.Contains(h.logs.String(), h.token.Secret) {
				t.Fatal("secret logged")
			}
		})
	}
	if len(h.backend.Machines()) != 0 {
		t.Fatal("a rejected report reached the backend")
	}
}

func TestHandlerReplayFromAnotherMachine(t *testing.T) {
	h := newHarness(t)
	reg := loadRegistration(t)
	if rec := h.post(PathRegister, h.token.String(), reg); rec.Code != http.StatusOK {
		t.Fatalf("register: %d %s", rec.Code, rec.Body)
	}
	// Someone who sniffed the token replays it with another identity.
	other := loadRegistration(t)
	other.Inventory.System.Serial = "EVIL"
	rec := h.post(PathRegister, h.token.String(), other)
	if rec.Code != http.StatusForbidden {
		t.Fatalf("replay with another identity: %d %s", rec.Code, rec.Body)
	}
	if !strings.Contains(h.logs.String(), "token already used by another machine") {
		t.Fatalf("replay not logged:\n%s", h.logs)
	}
	// A revoked token (the machine rebooted and got a new one) is refused.
	h.backend.Revoke(h.token.BootID)
	if rec := h.post(PathHeartbeat, h.token.String(), Heartbeat{Seq: 9, State: "waiting"}); rec.Code != http.StatusUnauthorized {
		t.Fatalf("revoked token: %d %s", rec.Code, rec.Body)
	}
}

func TestHandlerMethodAndStrippedPrefix(t *testing.T) {
	h := newHarness(t)
	req := httptest.NewRequest(http.MethodGet, Prefix+PathRegister, nil)
	rec := httptest.NewRecorder()
	h.handler.ServeHTTP(rec, req)
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d", rec.Code)
	}
	mux := http.NewServeMux()
	mux.Handle("/agent/", http.StripPrefix("/agent/", h.handler))
	data, _ := json.Marshal(loadRegistration(t))
	req = httptest.NewRequest(http.MethodPost, "/agent/register", bytes.NewReader(data))
	req.Header.Set("Authorization", "Bearer "+h.token.String())
	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("stripped prefix: %d %s", rec.Code, rec.Body)
	}
}

func TestHandlerBindsTokenToMACAndPeer(t *testing.T) {
	h := newHarness(t)
	reg := loadRegistration(t)
	tok, _ := NewToken(nil)
	h.backend.IssueFor(tok, "02:00:00:00:00:99")
	if rec := h.post(PathRegister, tok.String(), reg); rec.Code != http.StatusForbidden {
		t.Fatalf("registration with another MAC than the token's: %d %s", rec.Code, rec.Body)
	}
	if !strings.Contains(h.logs.String(), "issued to another MAC") {
		t.Fatalf("not logged:\n%s", h.logs)
	}
	if len(h.backend.Machines()) != 0 {
		t.Fatal("the refused registration reached the backend")
	}
	// The harness's own token registers from httptest's 192.0.2.1; the same
	// token from another address is refused.
	if rec := h.post(PathRegister, h.token.String(), reg); rec.Code != http.StatusOK {
		t.Fatalf("register: %d %s", rec.Code, rec.Body)
	}
	data, _ := json.Marshal(Heartbeat{Seq: 1, State: "waiting"})
	req := httptest.NewRequest(http.MethodPost, Prefix+PathHeartbeat, bytes.NewReader(data))
	req.RemoteAddr = "192.0.2.66:4000"
	req.Header.Set("Authorization", "Bearer "+h.token.String())
	rec := httptest.NewRecorder()
	h.handler.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden || !strings.Contains(h.logs.String(), "another address") {
		t.Fatalf("heartbeat from another address: %d %s\n%s", rec.Code, rec.Body, h.logs)
	}
	if rec := h.post(PathHeartbeat, h.token.String(), Heartbeat{Seq: 1, State: "waiting"}); rec.Code != http.StatusOK {
		t.Fatalf("heartbeat from the registered address: %d %s", rec.Code, rec.Body)
	}
}
