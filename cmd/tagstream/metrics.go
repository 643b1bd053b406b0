package main

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/cdc/mysql"
	"github.com/tagstream/tagstream/cdc/postgres"
	"github.com/tagstream/tagstream/pipeline"
	"github.com/tagstream/tagstream/rules"
	"github.com/tagstream/tagstream/stream"
)

// publishDelayBuckets span a fenced local commit (a millisecond) to a sink
// that needed retries (a minute).
var publishDelayBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// metrics is the daemon's Prometheus registry. Figures are read from the
// components' own atomic counters when /metrics is scraped, so nothing is
// added to the path of a transaction but the delay histograms.
type metrics struct {
	reg    *prometheus.Registry
	delay  *prometheus.HistogramVec
	source prometheus.Histogram
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.delay = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "tagstream_publish_delay_seconds",
		Help:    "Delay from a transaction's commit (database clock) to its acceptance by a sink.",
		Buckets: publishDelayBuckets,
	}, []string{"sink"})
	m.source = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "tagstream_source_delay_seconds",
		Help:    "Delay from a transaction's commit (database clock) to its reading by tagstream (the database's replication stream and the reader; on an edge, the broker), before the fence and the sinks.",
		Buckets: publishDelayBuckets,
	})
	m.reg.MustRegister(m.delay, m.source,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observer returns the delay observer of one sink.
func (m *metrics) observer(sink string) func(time.Duration) {
	o := m.delay.WithLabelValues(sink)
	return func(d time.Duration) { o.Observe(d.Seconds()) }
}

// observeSource records a commit's source delay.
func (m *metrics) observeSource(d time.Duration) { m.source.Observe(d.Seconds()) }

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: nil})
}

// statsCollector exposes the pipeline's, the rules' and the hub's figures.
type statsCollector struct {
	pipe *pipeline.Pipeline
	hub  *stream.Hub
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descTransactions   = desc("tagstream_transactions_total", "Committed transactions handed to the sinks.")
	descNoTags         = desc("tagstream_transactions_without_tags_total", "Committed transactions that produced no tags (they still advance the position).")
	descDuplicates     = desc("tagstream_duplicate_transactions_total", "Transactions read again after a reconnect and dropped (already on their way).")
	descPosition       = desc("tagstream_position", "Position of the last transaction handed to the sinks.")
	descAcknowledged   = desc("tagstream_acknowledged_position", "Position acknowledged to the database (every sink accepted it).")
	descLagSeconds     = desc("tagstream_replication_lag_seconds", "Age (by commit time) of the last transaction handed to the sinks while the source reports more to read; 0 when caught up.")
	descLagBytes       = desc("tagstream_replication_lag_bytes", "Source end (server WAL end or binlog head) minus the last position handed to the sinks.")
	descSinceCommit    = desc("tagstream_seconds_since_last_commit", "Seconds since the commit time of the last transaction handed to the sinks.")
	descLongTags       = desc("tagstream_rules_long_tags_total", "Tag expansions over 256 bytes, replaced by their rule's wildcard form.")
	descCollapses      = desc("tagstream_rules_collapses_total", "Transactions collapsed to their rules' wildcard forms at --max-tx-tags.")
	descMissingColumns = desc("tagstream_rules_missing_columns_total", "Rules bound to a table layout that lacks a column they read (its placeholders give *; logged once each).")
	descFenceWaits     = desc("tagstream_fence_waits_total", "Batches the visibility fence waited for (one round trip each, more while a commit is still in progress).")
	descFenced         = desc("tagstream_fence_commits_total", "Commits proven visible by the fence.")
	descFenceTimeouts  = desc("tagstream_fence_timeouts_total", "Batches published without a visibility proof because the fence timed out.")
	descFenceErrors    = desc("tagstream_fence_errors_total", "Batches published without a visibility proof because the fence failed.")
	descFenceSeconds   = desc("tagstream_fence_seconds_total", "Time spent waiting for the visibility fence.")
	descSinkDelivered  = desc("tagstream_sink_delivered_total", "Transactions a sink accepted.", "sink")
	descSinkBatches    = desc("tagstream_sink_batches_total", "Deliveries a sink accepted (each one or more transactions).", "sink")
	descSinkFailures   = desc("tagstream_sink_failures_total", "Failed deliveries and resets (each retried).", "sink")
	descSinkResets     = desc("tagstream_sink_resets_total", "Continuity resets a sink accepted.", "sink")
	descSinkGiveUps    = desc("tagstream_sink_give_ups_total", "Times a sink failed past its give-up bound.", "sink")
	descSinkGivenUp    = desc("tagstream_sink_given_up", "1 while a sink is failing past its give-up bound (it no longer holds the database back).", "sink")
	descSinkQueued     = desc("tagstream_sink_queued", "Transactions and markers waiting for a sink.", "sink")
	descSinkLagPos     = desc("tagstream_sink_lag_positions", "Last position handed over minus the last a sink accepted.", "sink")
	descSinkLagSeconds = desc("tagstream_sink_lag_seconds", "Age (by commit time) of the oldest transaction a sink has not accepted; 0 when caught up.", "sink")
	descSubscribers    = desc("tagstream_subscribers", "Connected SSE clients.")
	descHubPublished   = desc("tagstream_hub_published_total", "Transactions the hub accepted.")
	descHubMatched     = desc("tagstream_hub_matched_total", "invalidate events queued for SSE clients (live and replay).")
	descHubDelivered   = desc("tagstream_hub_delivered_total", "Events written to SSE clients (every kind).")
	descHubDropped     = desc("tagstream_hub_dropped_total", "Queued events discarded by overflows and resets.")
	descHubOverflows   = desc("tagstream_hub_overflows_total", "Client queue overflows (each answered with one reset).")
	descHubResets      = desc("tagstream_hub_resets_total", "reset events queued for SSE clients.")
)

func (c statsCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	ps := c.pipe.Stats()
	counter(descTransactions, ps.Transactions)
	counter(descNoTags, ps.TransactionsNoTags)
	counter(descDuplicates, ps.Duplicates)
	gauge(descPosition, float64(ps.Position))
	gauge(descAcknowledged, float64(ps.Acknowledged))
	lagBytes, lagSeconds, since := 0.0, 0.0, 0.0
	if !ps.LastCommit.IsZero() {
		since = time.Since(ps.LastCommit).Seconds()
	}
	if ps.End > ps.Position {
		lagBytes, lagSeconds = float64(ps.End-ps.Position), since
	}
	gauge(descLagBytes, lagBytes)
	gauge(descLagSeconds, lagSeconds)
	gauge(descSinceCommit, since)
	rs := c.pipe.RulesStats()
	counter(descLongTags, rs.LongTags)
	counter(descCollapses, rs.Collapses)
	counter(descMissingColumns, rs.MissingColumns)
	counter(descFenceWaits, ps.FenceWaits)
	counter(descFenced, ps.FencedCommits)
	counter(descFenceTimeouts, ps.FenceTimeouts)
	counter(descFenceErrors, ps.FenceErrors)
	ch <- prometheus.MustNewConstMetric(descFenceSeconds, prometheus.CounterValue, ps.FenceTime.Seconds())
	for _, s := range ps.Sinks {
		counter(descSinkDelivered, s.Delivered, s.Name)
		counter(descSinkBatches, s.Batches, s.Name)
		counter(descSinkFailures, s.Failures, s.Name)
		counter(descSinkResets, s.Resets, s.Name)
		counter(descSinkGiveUps, s.GiveUps, s.Name)
		givenUp := 0.0
		if s.GivenUp {
			givenUp = 1
		}
		gauge(descSinkGivenUp, givenUp, s.Name)
		gauge(descSinkQueued, float64(s.Queued), s.Name)
		gauge(descSinkLagPos, float64(s.LagPositions), s.Name)
		gauge(descSinkLagSeconds, s.LagSeconds, s.Name)
	}
	hs := c.hub.Stats()
	gauge(descSubscribers, float64(hs.Subscribers))
	counter(descHubPublished, hs.Published)
	counter(descHubMatched, hs.Matched)
	counter(descHubDelivered, hs.Delivered)
	counter(descHubDropped, hs.Dropped)
	counter(descHubOverflows, hs.Overflows)
	counter(descHubResets, hs.Resets)
}

var (
	descRuleFires  = desc("tagstream_rule_fires_total", "Row changes that fired a rule (its op and columns filter let them through), by rule name (`rule N` when unnamed); counted across reloads.", "rule")
	descReconnects = desc("tagstream_source_reconnects_total", "Connections to the database the source attempted after its first (each retry counts).", "source")
)

// reconnecter is what a source tells about its retries (both readers have it).
type reconnecter interface{ Reconnects() uint64 }

var (
	_ reconnecter = (*postgres.Reader)(nil)
	_ reconnecter = (*mysql.Reader)(nil)
)

// sourceCollector exposes the per-rule fire counts and the source's
// reconnects; both are atomic counters that the collector reads.
type sourceCollector struct {
	fires  *rules.FireCounts
	source cdc.Source
	name   string // postgres or mysql
}

func (c sourceCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c sourceCollector) Collect(ch chan<- prometheus.Metric) {
	c.fires.Each(func(rule string, n uint64) {
		ch <- prometheus.MustNewConstMetric(descRuleFires, prometheus.CounterValue, float64(n), rule)
	})
	if r, ok := c.source.(reconnecter); ok {
		ch <- prometheus.MustNewConstMetric(descReconnects, prometheus.CounterValue, float64(r.Reconnects()), c.name)
	}
}
