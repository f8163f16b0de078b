//go:build !linux

package deadpeer

import (
	"syscall"
	"time"
)

// userTimeout: TCP_USER_TIMEOUT is Linux's; elsewhere keepalives alone
// notice a dead peer.
func userTimeout(time.Duration) func(network, address string, c syscall.RawConn) error { return nil }
