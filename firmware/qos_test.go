package firmware

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap/zaptest"

	"vaultnode/firmware/config"
	"vaultnode/firmware/qos"
	"vaultnode/internal/clock"
	"vaultnode/internal/fwctl"
)

// TestQoSControl drives the control socket's qos commands against a veth in
// a namespace of its own: set applies and saves, qos lists the kernel's
// classes in Mbit/s, qos config prints what set applied.
func TestQoSControl(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New() // unnamed: see newLab in firmware/qos's tests
	if serr := netns.Set(orig); serr != nil {
		t.Fatalf("back to the test's namespace: %v", serr) // the thread stays locked and dies with the test
	}
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up1"}); err != nil {
		t.Fatal(err)
	}
	log := zaptest.NewLogger(t)
	m := &Machine{log: log, clk: clock.Real{}, uplink: "up0", qos: qos.New(log, h, clock.Real{})}
	cfg := qos.Defaults("up0", 100*qos.Mbit)
	cfg.IFB = "ifbfw0"
	cfg.Management.Rate = 7 * qos.Mbit
	cfg.Replication.Rate = 18 * qos.Mbit
	js, _ := json.Marshal(cfg)
	path := filepath.Join(t.TempDir(), "config.json")
	var out strings.Builder
	if err := m.qosControl("qos set "+string(js), path, &out); err != nil {
		t.Fatalf("qos set: %v", err)
	}
	saved, err := config.Load(path)
	if err != nil || saved.QoS == nil || saved.QoS.Management.Rate != 7*qos.Mbit {
		t.Fatalf("saved config %+v, %v: want management at 7 Mbit/s", saved.QoS, err)
	}
	out.Reset()
	if err := m.qosControl("qos", path, &out); err != nil {
		t.Fatal(err)
	}
	if !regexpLine(out.String(), "egress", "1:10", "management", "7.00", "100.00") || !regexpLine(out.String(), "ingress", "ifbfw0", "1:41") {
		t.Errorf("qos output lacks the classes:\n%s", out.String())
	}
	out.Reset()
	if err := m.qosControl("qos json", path, &out); err != nil {
		t.Fatal(err)
	}
	var st fwctl.QoSStatus
	if err := json.Unmarshal([]byte(out.String()), &st); err != nil || st.Error != "" || len(st.Classes) == 0 {
		t.Fatalf("qos json printed %q (%v)", out.String(), err)
	}
	found := false
	for _, c := range st.Classes {
		found = found || c.Direction == "egress" && c.Handle == "1:10" && c.Name == "management" && c.Rate == 7*qos.Mbit
	}
	if !found {
		t.Errorf("qos json lacks the management class at 7 Mbit/s: %+v", st.Classes)
	}
	out.Reset()
	if err := m.qosControl("qos config", path, &out); err != nil {
		t.Fatal(err)
	}
	var back qos.Config
	if err := json.Unmarshal([]byte(out.String()), &back); err != nil || back.Management != cfg.Management {
		t.Errorf("qos config printed %q (%v)", out.String(), err)
	}
	if err := m.qosControl("qos set "+strings.Repeat(" ", 1<<20+1), path, &out); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("an oversized qos set: %v", err)
	}
	bad := cfg
	bad.Uploads.Rate = 99 * qos.Mbit
	js, _ = json.Marshal(bad)
	if err := m.qosControl("qos set "+string(js), path, &out); err == nil || !strings.Contains(err.Error(), "guaranteed rates add up") {
		t.Errorf("an over-guaranteed configuration: %v", err)
	}
}

func regexpLine(text string, words ...string) bool {
	for _, l := range strings.Split(text, "\n") {
		all := true
		for _, w := range words {
			if !strings.Contains(l, w) {
				all = false
			}
		}
		if all {
			return true
		}
	}
	return false
}
