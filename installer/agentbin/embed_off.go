//go:build !agent_embed

package agentbin

var agent []byte
