// Package metrics serves the firmware's health as JSON (/health) and as
// Prometheus text exposition (/metrics): services, restarts, disks, md
// arrays and memory.
package metrics

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"

	"vaultnode/firmware/disk"
	"vaultnode/firmware/qos"
	"vaultnode/firmware/service"
	"vaultnode/internal/storagehealth"
)

// Snapshot is the state the endpoints report.
type Snapshot struct {
	Version  string            `json:"version"`
	Hostname string            `json:"hostname"`
	Uptime   float64           `json:"uptime_seconds"`
	Services []service.Status  `json:"services"`
	Disks    []disk.Usage      `json:"filesystems"`
	Arrays   []Array           `json:"arrays"`
	Memory   Memory            `json:"memory"`
	Problems []string          `json:"problems"`
	QoS      []qos.ClassStatus `json:"qos,omitempty"`
	// Storage is the array controller's report (nil before the data
	// volume is up).
	Storage *storagehealth.Report `json:"storage,omitempty"`
}

// Array is an md array's state.
type Array struct {
	Name     string `json:"name"`
	Level    string `json:"level"`
	State    string `json:"state"`
	Active   int64  `json:"active"`
	Total    int64  `json:"total"`
	Failed   int64  `json:"failed"`
	Degraded bool   `json:"degraded"`
	Spares   int64  `json:"spares"`
	// Action is md's sync_action (idle, resync, recover, check, repair),
	// Progress 0-1 and ETA in seconds of the running one.
	Action     string  `json:"action"`
	Progress   float64 `json:"progress"`
	ETA        float64 `json:"eta_seconds"`
	Mismatches int64   `json:"mismatches"`
}

// Memory in bytes.
type Memory struct {
	Total     uint64 `json:"total"`
	Available uint64 `json:"available"`
}

// Healthy reports whether nothing needs attention.
func (s Snapshot) Healthy() bool { return len(s.Problems) == 0 }

// Handler serves /health and /metrics from snap.
func Handler(snap func() Snapshot) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		s := snap()
		w.Header().Set("Content-Type", "application/json")
		if !s.Healthy() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		status := "ok"
		if !s.Healthy() {
			status = "degraded"
		}
		_ = json.NewEncoder(w).Encode(struct {
			Status string `json:"status"`
			Snapshot
		}{status, s})
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		Write(w, snap())
	})
	return mux
}

// Write writes s in the Prometheus text format.
func Write(w io.Writer, s Snapshot) {
	m := &writer{w: w}
	m.gauge("vaultnode_info", "Firmware version and hostname.", 1, "version", s.Version, "hostname", s.Hostname)
	m.gauge("vaultnode_uptime_seconds", "Seconds since boot.", s.Uptime)
	m.gauge("vaultnode_healthy", "1 when nothing needs attention.", b2f(s.Healthy()))
	svcs := append([]service.Status(nil), s.Services...)
	sort.Slice(svcs, func(i, j int) bool { return svcs[i].Name < svcs[j].Name })
	m.header("vaultnode_service_up", "gauge", "1 when the service runs (and is healthy if it has a check).")
	for _, st := range svcs {
		m.sample("vaultnode_service_up", b2f(st.State == service.Running && st.Healthy), "service", st.Name)
	}
	m.header("vaultnode_service_state", "gauge", "The service's state, one series per state.")
	for _, st := range svcs {
		m.sample("vaultnode_service_state", 1, "service", st.Name, "state", string(st.State))
	}
	m.header("vaultnode_service_restarts_total", "counter", "Restarts after a crash.")
	for _, st := range svcs {
		m.sample("vaultnode_service_restarts_total", float64(st.Restarts), "service", st.Name)
	}
	m.header("vaultnode_service_crashes_total", "counter", "Unexpected exits.")
	for _, st := range svcs {
		m.sample("vaultnode_service_crashes_total", float64(st.Crashes), "service", st.Name)
	}
	m.header("vaultnode_service_failed", "gauge", "1 when the service crashed too often and was given up.")
	for _, st := range svcs {
		m.sample("vaultnode_service_failed", b2f(st.State == service.Failed), "service", st.Name)
	}
	m.header("vaultnode_filesystem_size_bytes", "gauge", "Filesystem size.")
	for _, d := range s.Disks {
		m.sample("vaultnode_filesystem_size_bytes", float64(d.Total), "mount", d.Mount)
	}
	m.header("vaultnode_filesystem_free_bytes", "gauge", "Filesystem space available.")
	for _, d := range s.Disks {
		m.sample("vaultnode_filesystem_free_bytes", float64(d.Free), "mount", d.Mount)
	}
	m.header("vaultnode_md_disks_active", "gauge", "Active members of an md array.")
	for _, a := range s.Arrays {
		m.sample("vaultnode_md_disks_active", float64(a.Active), "array", a.Name, "level", a.Level)
	}
	m.header("vaultnode_md_degraded", "gauge", "1 when an md array misses a member.")
	for _, a := range s.Arrays {
		m.sample("vaultnode_md_degraded", b2f(a.Degraded), "array", a.Name)
	}
	m.header("vaultnode_md_spares", "gauge", "Hot spares of an md array.")
	for _, a := range s.Arrays {
		m.sample("vaultnode_md_spares", float64(a.Spares), "array", a.Name)
	}
	m.header("vaultnode_md_state", "gauge", "An md array's state (clean, resyncing, degraded, failed), one series per state.")
	for _, a := range s.Arrays {
		for _, st := range []string{storagehealth.Clean, storagehealth.Resyncing, storagehealth.Degraded, storagehealth.Failed} {
			m.sample("vaultnode_md_state", b2f(a.State == st), "array", a.Name, "state", st)
		}
	}
	m.header("vaultnode_md_sync_progress", "gauge", "Progress 0-1 of the running resync, rebuild or check (action label).")
	for _, a := range s.Arrays {
		m.sample("vaultnode_md_sync_progress", a.Progress, "array", a.Name, "action", a.Action)
	}
	m.header("vaultnode_md_sync_eta_seconds", "gauge", "md's estimate of the time left to the running action.")
	for _, a := range s.Arrays {
		m.sample("vaultnode_md_sync_eta_seconds", a.ETA, "array", a.Name)
	}
	m.header("vaultnode_md_mismatch_sectors", "gauge", "Sectors the last check (scrub) found mismatched.")
	for _, a := range s.Arrays {
		m.sample("vaultnode_md_mismatch_sectors", float64(a.Mismatches), "array", a.Name)
	}
	if s.Storage != nil {
		m.header("vaultnode_storage_state", "gauge", "The data volume's state, one series per state.")
		for _, st := range []string{storagehealth.Clean, storagehealth.Resyncing, storagehealth.Degraded, storagehealth.Failed} {
			m.sample("vaultnode_storage_state", b2f(s.Storage.State == st), "state", st)
		}
		m.header("vaultnode_disk_smart_ok", "gauge", "1 when SMART passed, 0 when failing, absent when the disk does not answer.")
		for _, d := range s.Storage.Disks {
			switch {
			case d.SMART == "passed":
				m.sample("vaultnode_disk_smart_ok", 1, "disk", d.Device, "id", d.ID)
			case strings.HasPrefix(d.SMART, "FAILING"):
				m.sample("vaultnode_disk_smart_ok", 0, "disk", d.Device, "id", d.ID)
			}
		}
	}
	for _, q := range []struct {
		name, typ, help string
		v               func(qos.ClassStatus) uint64
	}{
		{"vaultnode_qos_rate_bits", "gauge", "A traffic class's guaranteed rate, bits/s.", func(c qos.ClassStatus) uint64 { return c.Rate }},
		{"vaultnode_qos_ceil_bits", "gauge", "A traffic class's ceiling, bits/s.", func(c qos.ClassStatus) uint64 { return c.Ceil }},
		{"vaultnode_qos_bytes_total", "counter", "Bytes a traffic class sent, headers included.", func(c qos.ClassStatus) uint64 { return c.Bytes }},
		{"vaultnode_qos_packets_total", "counter", "Packets a traffic class sent.", func(c qos.ClassStatus) uint64 { return c.Packets }},
		{"vaultnode_qos_drops_total", "counter", "Packets a traffic class dropped.", func(c qos.ClassStatus) uint64 { return c.Drops }},
	} {
		if len(s.QoS) == 0 {
			break
		}
		m.header(q.name, q.typ, q.help)
		for _, c := range s.QoS {
			m.sample(q.name, float64(q.v(c)), "direction", c.Direction, "class", c.Handle, "name", c.Name)
		}
	}
	m.gauge("vaultnode_memory_total_bytes", "Memory size.", float64(s.Memory.Total))
	m.gauge("vaultnode_memory_available_bytes", "Memory available.", float64(s.Memory.Available))
}

type writer struct{ w io.Writer }

func (m *writer) header(name, typ, help string) {
	fmt.Fprintf(m.w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

func (m *writer) gauge(name, help string, v float64, labels ...string) {
	m.header(name, "gauge", help)
	m.sample(name, v, labels...)
}

func (m *writer) sample(name string, v float64, labels ...string) {
	var b strings.Builder
	b.WriteString(name)
	if len(labels) > 0 {
		b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%s=%q", labels[i], labels[i+1])
		}
		b.WriteByte('}')
	}
	fmt.Fprintf(m.w, "%s %g\n", b.String(), v)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
