// Package agentbin carries the static airlock-agent binary inside the
// airlock executable, so that airlock can assemble the discovery boot image
// from the bundle's kernel package on site. `make build` builds the agent
// into bin/ here and airlock with -tags agent_embed; a plain `go build`
// compiles without it, and Binary says what to do.
package agentbin

import "errors"

// ErrNotEmbedded says the executable was built without the agent.
var ErrNotEmbedded = errors.New("this airlock carries no airlock-agent (build it with `make build`), so it cannot assemble the discovery image: give one with --boot-files")

// Binary returns the embedded linux/amd64 agent.
func Binary() ([]byte, error) {
	if len(agent) == 0 {
		return nil, ErrNotEmbedded
	}
	return agent, nil
}
