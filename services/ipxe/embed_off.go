//go:build !ipxe_embed

package ipxe

import "embed"

//go:generate sh fetch.sh

var files embed.FS

const embedded = false
