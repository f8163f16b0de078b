package firmware

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"vaultnode/firmware/config"
	"vaultnode/firmware/qos"
	"vaultnode/internal/fwctl"
)

// qosEvery is how often the uplink's shaping is re-applied.
const qosEvery = time.Minute

// maxQoSJSON bounds "qos set": 256 caps of 64 prefixes fit well within it.
const maxQoSJSON = 1 << 20

// shapeUplink applies the saved QoS configuration, or first-boot defaults
// from the link speed, to the uplink. A kernel without the shaping modules
// leaves the appliance unshaped: that is logged and shown by "qos", never a
// reason to stop the boot.
func (m *Machine) shapeUplink(context.Context) error {
	m.mu.Lock()
	uplink, saved := m.uplink, m.cfg.QoS
	m.mu.Unlock()
	if uplink == "" {
		return nil
	}
	cfg := qos.Defaults(uplink, qos.LinkSpeed("/sys", uplink))
	cfg.Ports.AgentAPI = VaultPort
	cfg.Ports.Management = []uint16{22, 80, 443, 9100}
	if saved != nil {
		cfg = *saved
		cfg.Uplink = uplink // the saved rates follow the uplink if its name changed
	}
	// Route only: the appliance kernel has no XFRM, which NewHandle() opens
	// by default.
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		m.log.Warn("uplink not shaped", zap.Error(err))
		return nil
	}
	ctl := qos.New(m.log.Named("qos"), h, m.clk)
	m.mu.Lock()
	m.qos = ctl
	m.mu.Unlock()
	if err := ctl.Apply(cfg); err != nil { // the handle stays open: "qos set" may fix it
		m.mu.Lock()
		m.qosErr = err
		m.mu.Unlock()
		m.log.Warn("uplink not shaped", zap.Error(err))
		return nil
	}
	m.log.Info("uplink shaped", zap.String("uplink", uplink), zap.Uint64("link_bits", cfg.LinkRate))
	m.bgWG.Add(1)
	go func() { // owned by bgCancel
		defer m.bgWG.Done()
		defer h.Close()
		_ = ctl.Run(m.bgCtx, qosEvery)
	}()
	return nil
}

// qosControl answers "qos" (classes and counters), "qos json" (the same
// as fwctl.QoSStatus, for vaultctl qos), "qos config" and "qos set JSON"
// (apply a new configuration at run time and save it at configPath).
func (m *Machine) qosControl(cmd, configPath string, w io.Writer) error {
	m.mu.Lock()
	ctl, applyErr := m.qos, m.qosErr
	m.mu.Unlock()
	if ctl == nil {
		return fmt.Errorf("qos: the uplink is not up yet")
	}
	if arg, ok := strings.CutPrefix(cmd, "qos set "); ok {
		if len(arg) > maxQoSJSON {
			return fmt.Errorf("qos set: %d bytes of JSON, at most %d", len(arg), maxQoSJSON)
		}
		var cfg qos.Config
		if err := json.Unmarshal([]byte(arg), &cfg); err != nil {
			return fmt.Errorf("qos set: %w (send the JSON printed by 'qos config', edited)", err)
		}
		if err := ctl.Apply(cfg); err != nil {
			return fmt.Errorf("qos set: %w", err)
		}
		m.mu.Lock()
		m.qosErr = nil
		m.cfg.QoS = &cfg
		saved := m.cfg
		m.mu.Unlock()
		if err := config.Save(configPath, saved); err != nil {
			return fmt.Errorf("qos set: applied but not saved: %w", err)
		}
		fmt.Fprintln(w, "qos applied and saved")
		return nil
	}
	if cmd == "qos config" {
		cfg, ok := ctl.Config()
		if !ok {
			return fmt.Errorf("qos: nothing applied: %v", applyErr)
		}
		return json.NewEncoder(w).Encode(cfg)
	}
	if cmd == "qos json" {
		out := fwctl.QoSStatus{Classes: []fwctl.QoSClass{}}
		if applyErr != nil {
			out.Error = "uplink not shaped: " + applyErr.Error()
		}
		st, err := ctl.Status()
		if err != nil {
			return err
		}
		for _, s := range st {
			out.Classes = append(out.Classes, fwctl.QoSClass(s))
		}
		return json.NewEncoder(w).Encode(out)
	}
	if cmd != "qos" {
		return fmt.Errorf("unknown command %q: use qos, qos json, qos config or qos set JSON", cmd)
	}
	if applyErr != nil {
		fmt.Fprintf(w, "uplink not shaped: %v\n", applyErr)
	}
	st, err := ctl.Status()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%-8s %-8s %-6s %-22s %10s %10s %14s %10s %8s\n", "dir", "device", "class", "name", "rate Mbit", "ceil Mbit", "bytes", "packets", "drops")
	for _, s := range st {
		fmt.Fprintf(w, "%-8s %-8s %-6s %-22s %10.2f %10.2f %14d %10d %8d\n", s.Direction, s.Device, s.Handle, s.Name,
			float64(s.Rate)/qos.Mbit, float64(s.Ceil)/qos.Mbit, s.Bytes, s.Packets, s.Drops)
	}
	return nil
}

// qosLine is the status screen's line about shaping.
func (m *Machine) qosLine(st []qos.ClassStatus) string {
	m.mu.Lock()
	err := m.qosErr
	m.mu.Unlock()
	if err != nil {
		return fmt.Sprintf("qos: uplink not shaped: %v", err)
	}
	for _, s := range st {
		if s.Direction == "egress" && s.Handle == "1:1" {
			return fmt.Sprintf("qos: %s shaped at %.0f Mbit/s, %d classes (init ctl qos)", s.Device, float64(s.Rate)/qos.Mbit, len(st))
		}
	}
	return "qos: uplink not shaped"
}

// qosStatus is the classes for the metrics, nil when unshaped.
func (m *Machine) qosStatus() []qos.ClassStatus {
	m.mu.Lock()
	ctl := m.qos
	m.mu.Unlock()
	if ctl == nil {
		return nil
	}
	st, err := ctl.Status()
	if err != nil {
		m.log.Debug("read qos classes", zap.Error(err))
	}
	return st
}
