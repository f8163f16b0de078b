// Package ntp asks an NTP server for the time (SNTPv4, RFC 4330): enough for
// an appliance to set its clock at boot and now and then after.
package ntp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"
)

// ntpEpochOffset is the seconds from 1900-01-01 to 1970-01-01.
const ntpEpochOffset = 2208988800

// Query returns the server's time and the estimated offset of the local
// clock (add it to the local time to get the server's). server is a host
// or host:port (default port 123).
func Query(ctx context.Context, server string) (time.Time, time.Duration, error) {
	if _, _, err := net.SplitHostPort(server); err != nil {
		server = net.JoinHostPort(server, "123")
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", server)
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("reach ntp server %s: %w", server, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() }) // a cancelled ctx interrupts the read
	defer stop()
	deadline := time.Now().Add(5 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = c.SetDeadline(deadline)
	req := make([]byte, 48)
	req[0] = 0x23 // LI 0, version 4, mode 3 (client)
	t1 := time.Now()
	putTime(req[40:], t1) // transmit timestamp, echoed as originate
	if _, err := c.Write(req); err != nil {
		return time.Time{}, 0, fmt.Errorf("ask ntp server %s: %w", server, err)
	}
	resp := make([]byte, 48)
	n, err := c.Read(resp)
	t4 := time.Now()
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("read ntp answer from %s: %w", server, err)
	}
	if n < 48 {
		return time.Time{}, 0, fmt.Errorf("ntp answer from %s: %d bytes, want 48", server, n)
	}
	if mode := resp[0] & 7; mode != 4 {
		return time.Time{}, 0, fmt.Errorf("ntp answer from %s: mode %d, want 4 (server)", server, mode)
	}
	if resp[1] == 0 {
		return time.Time{}, 0, errors.New("ntp server " + server + " sent a kiss-of-death: try another server")
	}
	t2 := getTime(resp[32:])
	t3 := getTime(resp[40:])
	offset := (t2.Sub(t1) + t3.Sub(t4)) / 2
	return t4.Add(offset), offset, nil
}

func putTime(b []byte, t time.Time) {
	secs := uint64(t.Unix() + ntpEpochOffset)
	frac := uint64(t.Nanosecond()) << 32 / 1e9
	binary.BigEndian.PutUint32(b, uint32(secs))
	binary.BigEndian.PutUint32(b[4:], uint32(frac))
}

func getTime(b []byte) time.Time {
	secs := int64(binary.BigEndian.Uint32(b)) - ntpEpochOffset
	frac := int64(binary.BigEndian.Uint32(b[4:]))
	return time.Unix(secs, frac*1e9>>32)
}
