// Package deadpeer makes TCP dialers that notice a peer which died without
// closing its connections (a power cut, a machine cut off): with no FIN
// or RST, a connection to it would otherwise hang until the kernel gave up
// retransmitting, many minutes later.
package deadpeer

import (
	"net"
	"time"
)

// Dialer returns a dialer whose dial fails after timeout and whose
// connections end when data sent stays unacknowledged for unacked
// (TCP_USER_TIMEOUT, Linux) or when an idle connection's keepalive probes
// go unanswered (idle + 3 probes every idle/2). A slow link that still
// moves data trips none of these.
func Dialer(timeout, unacked, idle time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, Control: userTimeout(unacked),
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: idle, Interval: idle / 2, Count: 3}}
}
