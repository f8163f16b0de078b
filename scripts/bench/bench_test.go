package main

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"vaultnode/internal/clock"
)

func TestFindInt(t *testing.T) {
	tests := []struct {
		name   string
		out    string
		want   int64
		wantOK bool
	}{
		{"one document", `{"files": 3, "bytes_sent": 1234}`, 1234, true},
		{"nested", `{"summary": {"bytes_sent": 99}}`, 99, true},
		{"lines, last wins", "{\"bytes_sent\": 1}\n{\"progress\": 5}\n{\"bytes_sent\": 7}\n", 7, true},
		{"absent", `{"bytes": 5}`, 0, false},
		{"not JSON", "backup done\n", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := findInt([]byte(tt.out), "bytes_sent")
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("findInt = %d, %v; want %d, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestResticDataAdded(t *testing.T) {
	out := `{"message_type":"status","percent_done":0.5}
{"message_type":"summary","files_new":3,"data_added":4567,"total_bytes_processed":9}
`
	if n, ok := resticDataAdded([]byte(out)); !ok || n != 4567 {
		t.Errorf("resticDataAdded = %d, %v; want 4567, true", n, ok)
	}
	if _, ok := resticDataAdded([]byte(`{"message_type":"status"}`)); ok {
		t.Errorf("resticDataAdded found a summary where there is none")
	}
}

// TestProxyCounts sends known amounts both ways through the proxy.
func TestProxyCounts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const up, down = 300_000, 70_000
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		if _, err := io.CopyN(io.Discard, c, up); err != nil {
			served <- err
			return
		}
		_, err = c.Write(make([]byte, down))
		served <- err
	}()
	p, err := startProxy(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.addr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(make([]byte, up)); err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, c); err != nil || n != down {
		t.Fatalf("read %d bytes back (%v), want %d", n, err, down)
	}
	c.Close()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.idle(ctx, clock.Real{}); err != nil {
		t.Fatal(err)
	}
	if u, d := p.counts(); u != up || d != down {
		t.Errorf("proxy counted %d up, %d down; want %d, %d", u, d, up, down)
	}
}

func TestSelectPhases(t *testing.T) {
	got, err := selectPhases("no-change, initial")
	if err != nil || len(got) != 2 || got[0] != phaseInitial || got[1] != phaseNoChange {
		t.Errorf("selectPhases = %v, %v; want [initial no-change] in run order", got, err)
	}
	for _, bad := range []string{"", "initial,backup"} {
		if _, err := selectPhases(bad); err == nil {
			t.Errorf("selectPhases(%q) accepted", bad)
		}
	}
}
