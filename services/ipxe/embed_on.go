//go:build ipxe_embed

package ipxe

import "embed"

//go:generate sh fetch.sh

//go:embed bin/undionly.kpxe bin/ipxe.efi bin/snponly.efi
var files embed.FS

const embedded = true
