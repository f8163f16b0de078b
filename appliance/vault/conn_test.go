package vault

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"vaultnode/internal/wire"
)

// countedConn counts what a client's TCP connection carried.
type countedConn struct {
	net.Conn
	read, written *atomic.Int64
}

func (c countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.read.Add(int64(n))
	return n, err
}

func (c countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.written.Add(int64(n))
	return n, err
}

// agentAPIMetrics reads the agent API's series from /metrics.
func agentAPIMetrics(t *testing.T, sv *servedVault) map[string]float64 {
	t.Helper()
	resp, err := sv.adminClient().Get("http://vault" + AdminMetrics)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || !strings.HasPrefix(name, "vaultnode_agent_api_") {
			continue
		}
		f, err := strconv.ParseFloat(val, 64)
		if err != nil {
			t.Fatalf("/metrics: %q: %v", sc.Text(), err)
		}
		m[name] = f
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}

// closedAll waits until the vault counts no open agent API connection
// and returns the metrics it then reports.
func closedAll(t *testing.T, sv *servedVault) map[string]float64 {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		m := agentAPIMetrics(t, sv)
		if m["vaultnode_agent_api_connections"] == 0 {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("connections still open after the clients closed: %v", m)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAgentAPIByteCounts: the agent API's byte counters on /metrics are
// what the clients' TCP connections carried, each way, TLS included,
// counted once the connections close; the connections gauge falls back
// to zero. Both HTTP/2 and HTTP/1.1.
func TestAgentAPIByteCounts(t *testing.T) {
	sv := serveTestVault(t, "acme")
	before := agentAPIMetrics(t, sv)
	if before["vaultnode_agent_api_connections"] != 0 {
		t.Fatalf("connections before any: %v", before)
	}
	var read, written atomic.Int64
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countedConn{Conn: c, read: &read, written: &written}, nil
	}
	conf := &tls.Config{RootCAs: sv.CA.Pool(), ServerName: "vaultd.vaultnode", MinVersion: tls.VersionTLS13}
	for _, h2 := range []bool{true, false} {
		var protos http.Protocols
		protos.SetHTTP1(!h2)
		protos.SetHTTP2(h2)
		tr := &http.Transport{TLSClientConfig: conf.Clone(), DialContext: dial, Protocols: &protos}
		cl := &http.Client{Transport: tr, Timeout: time.Minute}
		for range 3 {
			resp, err := cl.Get("https://" + sv.addr + wire.PathHealth)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.ProtoMajor != map[bool]int{true: 2, false: 1}[h2] {
				t.Fatalf("health: %s over %s", resp.Status, resp.Proto)
			}
		}
		mid := agentAPIMetrics(t, sv)
		if mid["vaultnode_agent_api_connections"] != 1 {
			t.Fatalf("connections while one is open: %v", mid)
		}
		tr.CloseIdleConnections()
		// The server counts a connection closed when it reads the
		// client's close, a moment later: wait for it before the next
		// protocol opens its own.
		closedAll(t, sv)
	}
	// The counters are added to after each read and write returns, so
	// one may lag what the client saw by a moment: poll until both agree
	// with the clients, or time out.
	// The server's TLS close_notify (24 bytes) may be written after a
	// client closed, so it was sent and never read.
	const closeNotify = 24
	var recv, sent int64
	for deadline := time.Now().Add(10 * time.Second); ; {
		after := closedAll(t, sv)
		recv = int64(after["vaultnode_agent_api_received_bytes_total"] - before["vaultnode_agent_api_received_bytes_total"])
		sent = int64(after["vaultnode_agent_api_sent_bytes_total"] - before["vaultnode_agent_api_sent_bytes_total"])
		if (recv == written.Load() && recv != 0 && sentMatches(sent, read.Load(), closeNotify)) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if recv != written.Load() || recv == 0 {
		t.Errorf("received %d bytes, the clients wrote %d", recv, written.Load())
	}
	if !sentMatches(sent, read.Load(), closeNotify) {
		t.Errorf("sent %d bytes, the clients read %d", sent, read.Load())
	}
}

// sentMatches reports whether the server's sent count is what the clients
// read plus at most two close_notify records they never read.
func sentMatches(sent, read, closeNotify int64) bool {
	d := sent - read
	return read != 0 && d >= 0 && d <= 2*closeNotify && d%closeNotify == 0
}
