package lldp

import "os"

// errDeadline is what Listen wraps when it times out.
var errDeadline = os.ErrDeadlineExceeded
