//go:build agent_embed

package agentbin

import _ "embed"

//go:embed bin/airlock-agent
var agent []byte
