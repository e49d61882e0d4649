// Package metrics defines pyrunner's Prometheus metrics, all named
// pyrunner_…, and serves them. It is the only package that imports
// prometheus/client_golang (asynq's own queue collector comes from the
// queue package).
//
// On the API (GET /metrics): runs submitted by kind, submissions refused
// by admission control, the depth of each queue against its cap, and
// asynq's queue metrics (asynq_…). On each worker (PYRUNNER_METRICS_LISTEN):
// runs started and finished by kind and final status, histograms of queue
// wait, K-line load and execution time, busy and total slots per queue,
// zygote restarts and the sandbox in force.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// buckets span a trivial warm run (milliseconds) to a long one (minutes).
var buckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}

// API holds the API's metrics.
type API struct {
	Registry  *prometheus.Registry
	Submitted *prometheus.CounterVec // kind
	Refused   *prometheus.CounterVec // queue
	// Restarts counts restarts this API's reaper made (workers lost).
	Restarts *prometheus.CounterVec // reason
	// Firings counts schedule firings this API handled, by result (fired,
	// skipped, failed).
	Firings *prometheus.CounterVec
}

// NewAPI registers the API's metrics, plus the Go runtime's and the
// process's, and extra collectors (asynq's queues, the queue depths).
func NewAPI(extra ...prometheus.Collector) *API {
	m := &API{
		Registry: prometheus.NewRegistry(),
		Submitted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pyrunner_runs_submitted_total",
			Help: "Runs accepted by this API, by kind (research or script)."}, []string{"kind"}),
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pyrunner_runs_refused_total",
			Help: "Submissions refused with 429 because their queue was full (PYRUNNER_MAX_QUEUED)."}, []string{"queue"}),
		Restarts: NewRestarts(),
		Firings: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pyrunner_schedule_firings_total",
			Help: "Schedule firings this API handled, by result: fired (a run submitted), skipped (overlap: skip, the last run still live), failed (the run was refused)."},
			[]string{"result"}),
	}
	m.Registry.MustRegister(m.Submitted, m.Refused, m.Restarts, m.Firings, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.Registry.MustRegister(extra...)
	return m
}

// Handler serves the registry's metrics in Prometheus' text format.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

// QueueDepth is a collector of pyrunner_queue_depth{queue} and
// pyrunner_queue_max{queue}, read at every scrape by depth.
func QueueDepth(queues []string, max int, depth func(queue string) (int64, error)) prometheus.Collector {
	return &queueDepth{queues: queues, max: max, depth: depth,
		depthDesc: prometheus.NewDesc("pyrunner_queue_depth", "Runs waiting for a worker, per queue.", []string{"queue"}, nil),
		maxDesc:   prometheus.NewDesc("pyrunner_queue_max", "PYRUNNER_MAX_QUEUED, the admission cap of each queue (0: none).", []string{"queue"}, nil)}
}

type queueDepth struct {
	queues             []string
	max                int
	depth              func(string) (int64, error)
	depthDesc, maxDesc *prometheus.Desc
}

func (q *queueDepth) Describe(ch chan<- *prometheus.Desc) { ch <- q.depthDesc; ch <- q.maxDesc }

func (q *queueDepth) Collect(ch chan<- prometheus.Metric) {
	for _, name := range q.queues {
		if n, err := q.depth(name); err == nil {
			ch <- prometheus.MustNewConstMetric(q.depthDesc, prometheus.GaugeValue, float64(n), name)
		}
		ch <- prometheus.MustNewConstMetric(q.maxDesc, prometheus.GaugeValue, float64(q.max), name)
	}
}

// Worker holds a worker's metrics.
type Worker struct {
	Registry  *prometheus.Registry
	Started   *prometheus.CounterVec   // kind
	Finished  *prometheus.CounterVec   // kind, status
	QueueWait *prometheus.HistogramVec // kind
	Load      prometheus.Histogram
	Exec      *prometheus.HistogramVec // kind
	// KlineCache counts research loads by the cache's answer (hit, miss).
	KlineCache *prometheus.CounterVec
	// Restarts counts attempts of script runs that ended and were
	// started again, by cause (restart.Cause).
	Restarts *prometheus.CounterVec
}

// NewRestarts is pyrunner_run_restarts_total{reason}: the worker counts
// the attempts it saw end, a reaper (API or worker) those of lost workers.
func NewRestarts() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pyrunner_run_restarts_total",
		Help: "Attempts of script runs that ended and were started again by their restart policy, by reason (exit_code, signal, exit_zero, worker_lost)."},
		[]string{"reason"})
}

// WorkerGauges are read at every scrape.
type WorkerGauges struct {
	// Slots and Busy give each queue's concurrency and the runs in it now.
	Slots, Busy func(queue string) int
	Queues      []string
	// ZygoteRestarts counts the warm zygote's replacements.
	ZygoteRestarts func() int64
	// Sandbox is the sandbox in force ("bwrap" or "none") and Executor the
	// executor mode.
	Sandbox, Executor string
}

// NewWorker registers a worker's metrics.
func NewWorker(g WorkerGauges) *Worker {
	m := &Worker{
		Registry: prometheus.NewRegistry(),
		Started: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pyrunner_runs_started_total",
			Help: "Runs this worker claimed and started, by kind."}, []string{"kind"}),
		Finished: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pyrunner_runs_finished_total",
			Help: "Runs this worker ended, by kind and final status."}, []string{"kind", "status"}),
		QueueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pyrunner_queue_wait_seconds",
			Help: "Time from submission to a worker's claim.", Buckets: buckets}, []string{"kind"}),
		Load: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pyrunner_kline_load_seconds",
			Help: "Time to load a research run's K-lines.", Buckets: buckets}),
		Exec: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pyrunner_exec_seconds",
			Help: "Time the user's code ran (research) or the script lived.", Buckets: buckets}, []string{"kind"}),
		KlineCache: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pyrunner_kline_cache_total",
			Help: "Research K-line loads by the K-line cache's answer (hit: closed history from memory)."}, []string{"result"}),
		Restarts: NewRestarts(),
	}
	m.Registry.MustRegister(m.Started, m.Finished, m.QueueWait, m.Load, m.Exec, m.KlineCache, m.Restarts,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, q := range g.Queues {
		q := q
		m.Registry.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pyrunner_worker_slots", Help: "Runs this worker may run at once, per queue.",
				ConstLabels: prometheus.Labels{"queue": q}}, func() float64 { return float64(g.Slots(q)) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pyrunner_worker_busy_slots", Help: "Runs this worker runs now, per queue.",
				ConstLabels: prometheus.Labels{"queue": q}}, func() float64 { return float64(g.Busy(q)) }))
	}
	m.Registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "pyrunner_zygote_restarts_total",
			Help: "Times the warm Python zygote died and was replaced."}, func() float64 { return float64(g.ZygoteRestarts()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pyrunner_sandbox_info", Help: "1, labelled with the sandbox in force and the executor.",
			ConstLabels: prometheus.Labels{"sandbox": g.Sandbox, "executor": g.Executor}}, func() float64 { return 1 }))
	return m
}
