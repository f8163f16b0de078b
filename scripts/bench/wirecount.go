package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// wireCounts are the vault's own counts of its agent connections, from
// GET /metrics on its admin socket (docs/jobs.md): bytes received and
// sent, TLS included, and connections open. The agent reaches the vault
// directly, so nothing between them costs CPU that a network would not.
type wireCounts struct{ received, sent, open int64 }

var wireSeries = map[string]func(*wireCounts) *int64{
	"vaultnode_agent_api_received_bytes_total": func(w *wireCounts) *int64 { return &w.received },
	"vaultnode_agent_api_sent_bytes_total":     func(w *wireCounts) *int64 { return &w.sent },
	"vaultnode_agent_api_connections":          func(w *wireCounts) *int64 { return &w.open },
}

// parseWireCounts reads the agent API's series from Prometheus text.
func parseWireCounts(r io.Reader) (wireCounts, error) {
	var w wireCounts
	seen := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		field, known := wireSeries[name]
		if !ok || !known {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			return w, fmt.Errorf("vault metrics: %s: %w", name, err)
		}
		*field(&w) = int64(f)
		seen++
	}
	if err := sc.Err(); err != nil {
		return w, fmt.Errorf("vault metrics: %w", err)
	}
	if seen != len(wireSeries) {
		return w, fmt.Errorf("vault metrics: %d of the %d agent API series (vaultnode_agent_api_*): is vaultd older than this benchmark?", seen, len(wireSeries))
	}
	return w, nil
}

// wireCounts asks vaultd for its counts.
func (t *vaultnode) wireCounts(ctx context.Context) (wireCounts, error) {
	sock := filepath.Join(t.StoreDir(), "admin.sock")
	cl := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	defer cl.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://vault/metrics", nil)
	if err != nil {
		return wireCounts{}, err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return wireCounts{}, fmt.Errorf("vault metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return wireCounts{}, fmt.Errorf("vault metrics: %s", resp.Status)
	}
	return parseWireCounts(resp.Body)
}

// wireIdle waits until no agent connection is open (so every byte a
// finished agent sent has been counted) and returns the counts then.
func (t *vaultnode) wireIdle(ctx context.Context) (wireCounts, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		w, err := t.wireCounts(ctx)
		if err != nil || w.open == 0 {
			return w, err
		}
		select {
		case <-ctx.Done():
			return w, fmt.Errorf("wait for the agent's connections to close (%d open): %w", w.open, ctx.Err())
		case <-t.clk.After(20 * time.Millisecond):
		}
	}
}
