package ntp

import (
	"context"
	"net"
	"testing"
	"time"
)

// serve answers one SNTP request on a real UDP socket with a clock that is
// skew ahead of ours, or with stratum 0 (kiss-of-death).
func serve(t *testing.T, skew time.Duration, stratum byte) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		b := make([]byte, 48)
		n, addr, err := pc.ReadFrom(b)
		if err != nil || n != 48 {
			return
		}
		resp := make([]byte, 48)
		resp[0] = 0x24 // version 4, mode 4
		resp[1] = stratum
		copy(resp[24:32], b[40:48])
		now := time.Now().Add(skew)
		putTime(resp[32:], now)
		putTime(resp[40:], now)
		pc.WriteTo(resp, addr)
	}()
	return pc.LocalAddr().String()
}

func TestQuery(t *testing.T) {
	tests := []struct {
		name    string
		skew    time.Duration
		stratum byte
		ok      bool
	}{
		{"in step", 0, 2, true},
		{"an hour ahead", time.Hour, 2, true},
		{"kiss of death", 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			now, offset, err := Query(ctx, serve(t, tt.skew, tt.stratum))
			if (err == nil) != tt.ok {
				t.Fatalf("Query: %v", err)
			}
			if !tt.ok {
				return
			}
			if d := offset - tt.skew; d > time.Second || d < -time.Second {
				t.Errorf("offset %v, want about %v", offset, tt.skew)
			}
			if d := time.Until(now) - tt.skew; d > time.Second || d < -time.Second {
				t.Errorf("time %v is not about now+%v", now, tt.skew)
			}
		})
	}
}
