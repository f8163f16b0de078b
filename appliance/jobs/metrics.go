package jobs

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the runner's Prometheus series, per kind (docs/jobs.md).
type metrics struct {
	runs     *prometheus.CounterVec
	running  *prometheus.GaugeVec
	duration *prometheus.GaugeVec
	success  *prometheus.GaugeVec
	items    *prometheus.GaugeVec
	bytes    *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vaultnode_job_runs_total",
			Help: "Jobs ended, by kind and final state (done, failed, canceled, interrupted)."}, []string{"kind", "state"}),
		running: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vaultnode_job_running",
			Help: "1 while a job of the kind runs."}, []string{"kind"}),
		duration: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vaultnode_job_last_duration_seconds",
			Help: "How long the last job of the kind ran."}, []string{"kind"}),
		success: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vaultnode_job_last_success_timestamp_seconds",
			Help: "When the last successful job of the kind ended (Unix time)."}, []string{"kind"}),
		items: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vaultnode_job_last_items",
			Help: "Items the last job of the kind went through."}, []string{"kind"}),
		bytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vaultnode_job_last_bytes",
			Help: "Bytes the last job of the kind went through."}, []string{"kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.runs, m.running, m.duration, m.success, m.items, m.bytes)
	}
	return m
}

// register makes a kind's series exist (at zero) before its first run.
func (m *metrics) register(k Kind) {
	for _, s := range []State{Done, Failed, Canceled, Interrupted} {
		m.runs.WithLabelValues(string(k), string(s))
	}
	m.running.WithLabelValues(string(k)).Set(0)
}

func (m *metrics) started(k Kind) { m.running.WithLabelValues(string(k)).Set(1) }

func (m *metrics) finished(rec Record) {
	k := string(rec.Kind)
	m.runs.WithLabelValues(k, string(rec.State)).Inc()
	m.running.WithLabelValues(k).Set(0)
	m.duration.WithLabelValues(k).Set(rec.Ended.Sub(rec.Started).Seconds())
	m.items.WithLabelValues(k).Set(float64(rec.Progress.Items))
	m.bytes.WithLabelValues(k).Set(float64(rec.Progress.Bytes))
	if rec.State == Done {
		m.success.WithLabelValues(k).Set(float64(rec.Ended.Unix()))
	}
}
