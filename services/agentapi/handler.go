package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
)

// Handler serves the agent endpoints. Mount it at Prefix; it also works
// behind http.StripPrefix.
type Handler struct {
	backend Backend
	log     *slog.Logger
}

// NewHandler returns the agent API handler over backend.
func NewHandler(backend Backend, log *slog.Logger) *Handler {
	return &Handler{backend: backend, log: log}
}

type errorReply struct {
	Error string `json:"error"`
}

func (h *Handler) reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, code int, reason string, err error, attrs ...any) {
	attrs = append(attrs, "remote", r.RemoteAddr, "path", r.URL.Path, "status", code, "reason", reason)
	if err != nil {
		attrs = append(attrs, "err", err.Error())
	}
	level := slog.LevelWarn
	if code >= 500 {
		level = slog.LevelError
	}
	h.log.Log(r.Context(), level, "agent report rejected", attrs...)
	msg := reason
	if err != nil && code == http.StatusBadRequest {
		msg = reason + ": " + err.Error()
	}
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="airlock-agent"`)
	}
	h.reply(w, code, errorReply{Error: msg})
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	endpoint := strings.TrimPrefix(r.URL.Path, Prefix)
	endpoint = strings.TrimPrefix(endpoint, "/")
	switch endpoint {
	case PathRegister, PathInventory, PathHeartbeat:
	default:
		h.reply(w, http.StatusNotFound, errorReply{Error: "no such agent endpoint"})
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.reply(w, http.StatusMethodNotAllowed, errorReply{Error: "use POST"})
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		h.reply(w, http.StatusUnsupportedMediaType, errorReply{Error: "send application/json"})
		return
	}
	tok, boot, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	peer := peerAddr(r)
	if boot.Peer.IsValid() && peer != boot.Peer {
		h.fail(w, r, http.StatusForbidden, "agent token used from another address", nil, "boot", tok.BootID, "registeredFrom", boot.Peer)
		return
	}
	ctx := WithPeer(r.Context(), peer)
	switch endpoint {
	case PathRegister:
		var reg Registration
		if !h.decode(w, r, &reg, reg.Validate, tok.BootID) {
			return
		}
		if boot.MAC != "" && !strings.EqualFold(boot.MAC, reg.BootMAC) {
			h.fail(w, r, http.StatusForbidden, "agent token was issued to another MAC", nil,
				"boot", tok.BootID, "tokenMAC", boot.MAC, "mac", reg.BootMAC, "uuid", reg.Inventory.System.UUID, "serial", reg.Inventory.System.Serial)
			return
		}
		identity := Identity(&reg)
		if boot.Identity != "" && boot.Identity != identity {
			h.fail(w, r, http.StatusForbidden, "token already used by another machine", nil,
				"boot", tok.BootID, "uuid", reg.Inventory.System.UUID, "serial", reg.Inventory.System.Serial, "mac", reg.BootMAC)
			return
		}
		out, err := h.backend.Register(ctx, tok.BootID, identity, &reg)
		if h.backendError(w, r, err, tok.BootID) {
			return
		}
		h.log.Info("agent registered", "boot", tok.BootID, "machine", out.MachineID,
			"serial", reg.Inventory.System.Serial, "uuid", reg.Inventory.System.UUID, "mac", reg.BootMAC, "remote", r.RemoteAddr)
		h.reply(w, http.StatusOK, out)
	case PathInventory:
		var inv Inventory
		if !h.decode(w, r, &inv, inv.Validate, tok.BootID) {
			return
		}
		if boot.Identity == "" {
			h.fail(w, r, http.StatusConflict, "register first", nil, "boot", tok.BootID)
			return
		}
		out, err := h.backend.UpdateInventory(ctx, tok.BootID, &inv)
		if h.backendError(w, r, err, tok.BootID) {
			return
		}
		h.reply(w, http.StatusOK, out)
	case PathHeartbeat:
		var hb Heartbeat
		if !h.decode(w, r, &hb, hb.Validate, tok.BootID) {
			return
		}
		if boot.Identity == "" {
			h.fail(w, r, http.StatusConflict, "register first", nil, "boot", tok.BootID)
			return
		}
		if hb.Seq <= boot.LastSeq {
			h.fail(w, r, http.StatusForbidden, "replayed heartbeat", nil, "boot", tok.BootID, "seq", hb.Seq, "last", boot.LastSeq)
			return
		}
		out, err := h.backend.Heartbeat(ctx, tok.BootID, &hb)
		if h.backendError(w, r, err, tok.BootID) {
			return
		}
		h.reply(w, http.StatusOK, out)
	}
}

// peerAddr is the request's source address, IPv4 unmapped; the zero Addr
// if it does not parse.
func peerAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// authenticate checks the bearer token against the backend in constant
// time. Only a well-formed boot ID is ever logged; the secret never is.
func (h *Handler) authenticate(w http.ResponseWriter, r *http.Request) (Token, Boot, bool) {
	raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		h.fail(w, r, http.StatusUnauthorized, "no agent token", nil)
		return Token{}, Boot{}, false
	}
	tok, err := ParseToken(raw)
	if err != nil {
		h.fail(w, r, http.StatusUnauthorized, "malformed agent token", nil)
		return Token{}, Boot{}, false
	}
	boot, err := h.backend.Boot(r.Context(), tok.BootID)
	if errors.Is(err, ErrUnknownBoot) {
		// Compare anyway so unknown and wrong tokens take the same time.
		tok.Matches([32]byte{})
		h.fail(w, r, http.StatusUnauthorized, "unknown or revoked agent token", nil, "boot", tok.BootID)
		return Token{}, Boot{}, false
	}
	if err != nil {
		h.fail(w, r, http.StatusInternalServerError, "look up agent token", err, "boot", tok.BootID)
		return Token{}, Boot{}, false
	}
	if !tok.Matches(boot.SecretHash) {
		h.fail(w, r, http.StatusUnauthorized, "forged agent token", nil, "boot", tok.BootID)
		return Token{}, Boot{}, false
	}
	return tok, boot, true
}

func (h *Handler) decode(w http.ResponseWriter, r *http.Request, v any, validate func() error, bootID string) bool {
	var err error
	body := http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	switch v := v.(type) {
	case *Registration:
		err = Decode(body, v)
	case *Inventory:
		err = Decode(body, v)
	case *Heartbeat:
		err = Decode(body, v)
	}
	if err != nil {
		code := http.StatusBadRequest
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) || strings.Contains(err.Error(), "larger than") {
			code = http.StatusRequestEntityTooLarge
		}
		h.fail(w, r, code, "malformed report", err, "boot", bootID)
		return false
	}
	if err := validate(); err != nil {
		h.fail(w, r, http.StatusBadRequest, "invalid report", err, "boot", bootID)
		return false
	}
	return true
}

func (h *Handler) backendError(w http.ResponseWriter, r *http.Request, err error, bootID string) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, ErrUnknownBoot):
		h.fail(w, r, http.StatusUnauthorized, "unknown or revoked agent token", nil, "boot", bootID)
	case errors.Is(err, ErrReplay):
		h.fail(w, r, http.StatusForbidden, "replayed agent report", err, "boot", bootID)
	case errors.Is(err, ErrWrongMAC):
		h.fail(w, r, http.StatusForbidden, ErrWrongMAC.Error(), err, "boot", bootID)
	case errors.Is(err, ErrWrongPeer):
		h.fail(w, r, http.StatusForbidden, ErrWrongPeer.Error(), err, "boot", bootID)
	case errors.Is(err, ErrIdentityConflict):
		h.fail(w, r, http.StatusForbidden, "identity held by another machine; refused and flagged for the operator", err, "boot", bootID)
	case errors.Is(err, ErrTooMany):
		w.Header().Set("Retry-After", "60")
		h.fail(w, r, http.StatusServiceUnavailable, "airlock holds too many machines", err, "boot", bootID)
	case errors.Is(err, context.Canceled):
		h.fail(w, r, http.StatusServiceUnavailable, "shutting down", err, "boot", bootID)
	default:
		h.fail(w, r, http.StatusInternalServerError, "store agent report", err, "boot", bootID)
	}
	return true
}
