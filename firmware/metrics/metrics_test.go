package metrics

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"vaultnode/firmware/disk"
	"vaultnode/firmware/qos"
	"vaultnode/firmware/service"
	"vaultnode/internal/storagehealth"
)

func TestEndpoints(t *testing.T) {
	snap := Snapshot{Version: "v1", Hostname: "vault1",
		Services: []service.Status{{Name: "vaultd", State: service.Running, Healthy: true, Restarts: 1, Crashes: 1},
			{Name: "crasher", State: service.Failed, Crashes: 5, Restarts: 4}},
		Disks: []disk.Usage{{Mount: "/data", Total: 100, Free: 40}},
		Arrays: []Array{{Name: "md0", Level: "raid6", State: "resyncing", Active: 3, Total: 4, Degraded: true,
			Action: "recover", Progress: 0.25, ETA: 90, Spares: 1}},
		Storage: &storagehealth.Report{State: "resyncing", Disks: []storagehealth.Disk{{Device: "vdb", ID: "data1", SMART: "passed"},
			{Device: "vdc", ID: "data2", SMART: "FAILING: health self-assessment failed"}, {Device: "vdd", SMART: "unknown: no answer"}}},
		Problems: []string{"service crasher failed"}}
	srv := httptest.NewServer(Handler(func() Snapshot { return snap }))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var body strings.Builder
	buf := make([]byte, 64<<10)
	for {
		n, err := resp.Body.Read(buf)
		body.Write(buf[:n])
		if err != nil {
			break
		}
	}
	resp.Body.Close()
	for _, want := range []string{
		`vaultnode_service_restarts_total{service="crasher"} 4`,
		`vaultnode_service_failed{service="crasher"} 1`,
		`vaultnode_service_up{service="vaultd"} 1`,
		`vaultnode_filesystem_free_bytes{mount="/data"} 40`,
		`vaultnode_md_degraded{array="md0"} 1`,
		`vaultnode_md_state{array="md0",state="resyncing"} 1`,
		`vaultnode_md_state{array="md0",state="clean"} 0`,
		`vaultnode_md_sync_progress{array="md0",action="recover"} 0.25`,
		`vaultnode_md_sync_eta_seconds{array="md0"} 90`,
		`vaultnode_md_spares{array="md0"} 1`,
		`vaultnode_storage_state{state="resyncing"} 1`,
		`vaultnode_disk_smart_ok{disk="vdb",id="data1"} 1`,
		`vaultnode_disk_smart_ok{disk="vdc",id="data2"} 0`,
		`vaultnode_healthy 0`,
		`# TYPE vaultnode_service_restarts_total counter`,
	} {
		if !strings.Contains(body.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, body.String())
		}
	}

	resp, err = http.Get(srv.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h struct {
		Status   string
		Services []service.Status
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || h.Status != "degraded" || len(h.Services) != 2 {
		t.Fatalf("health %d %+v", resp.StatusCode, h)
	}
}

func TestQoSClasses(t *testing.T) {
	var b strings.Builder
	Write(&b, Snapshot{QoS: []qos.ClassStatus{{Direction: "ingress", Handle: "1:100", Name: "uploads/cap/acme",
		Rate: 3_000_000, Ceil: 30_000_000, Bytes: 12345, Packets: 9, Drops: 2}}})
	for _, want := range []string{
		`vaultnode_qos_ceil_bits{direction="ingress",class="1:100",name="uploads/cap/acme"} 3e+07`,
		`vaultnode_qos_bytes_total{direction="ingress",class="1:100",name="uploads/cap/acme"} 12345`,
		`vaultnode_qos_drops_total{direction="ingress",class="1:100",name="uploads/cap/acme"} 2`,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("metrics lack %s:\n%s", want, b.String())
		}
	}
	b.Reset()
	Write(&b, Snapshot{})
	if strings.Contains(b.String(), "vaultnode_qos") {
		t.Errorf("qos series without classes:\n%s", b.String())
	}
}
