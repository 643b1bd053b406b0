package main

import (
	"context"
	"log/slog"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/rules"
)

// sourceHealth is what `run` knows about the source database beyond the
// stream: the findings of `tagstream check --db` at startup, and how much
// change log the database keeps for tagstream.
type sourceHealth struct {
	checked          atomic.Bool
	errors, warnings atomic.Int64
	retention        cdc.Retention // nil when the source cannot say
}

// healthFigures are sourceHealth's gauges as plain numbers.
type healthFigures struct {
	Checked         bool  // the startup check ran
	FindingErrors   int64 // findings of severity error
	FindingWarnings int64 // findings of severity warning
	RetainedKnown   bool
	RetainedBytes   int64 // WAL the slot holds back / binlog after the checkpoint
}

func newSourceHealth(src cdc.Source) *sourceHealth {
	h := &sourceHealth{}
	h.retention, _ = src.(cdc.Retention)
	return h
}

func (h *sourceHealth) figures() healthFigures {
	f := healthFigures{Checked: h.checked.Load(), FindingErrors: h.errors.Load(), FindingWarnings: h.warnings.Load()}
	if h.retention != nil {
		f.RetainedBytes, f.RetainedKnown = h.retention.RetainedBytes()
	}
	return f
}

// checkAtStartup runs the checks of `tagstream check --db` and logs each
// finding with the SQL that fixes it. A failure to check is logged too: the
// reader's own startup checks decide whether tagstream can run.
func (h *sourceHealth) checkAtStartup(ctx context.Context, src *source, set *rules.Set, log *slog.Logger) {
	findings, err := src.check(ctx, set.Requirements(src.defaultSchema))
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("database check failed; run 'tagstream check --db' to see what it would report", "err", err)
		}
		return
	}
	var errs, warns int64
	for _, f := range findings {
		args := []any{"fix", f.Fix}
		if f.Rule != "" {
			args = append(args, "rule", f.Rule)
		}
		if f.Severity == cdc.Error {
			errs++
			log.Error("database check: "+f.Message, args...)
		} else {
			warns++
			log.Warn("database check: "+f.Message, args...)
		}
	}
	h.errors.Store(errs)
	h.warnings.Store(warns)
	h.checked.Store(true)
	if len(findings) > 0 {
		log.Info("database check done; 'tagstream check --db --apply' applies the table and publication fixes", "errors", errs, "warnings", warns)
	}
}

// healthCollector exposes sourceHealth's figures to Prometheus.
type healthCollector struct{ h *sourceHealth }

var (
	descFindings = desc("tagstream_check_findings", "Findings of the database check at startup (tagstream check --db), by severity.", "severity")
	descRetained = desc("tagstream_source_retained_bytes", "Change log the database keeps for tagstream: WAL the slot holds back (Postgres), binlog after the checkpoint (MySQL/MariaDB).")
)

func (c healthCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descFindings
	ch <- descRetained
}

// Collect reports the findings once the check ran and the retained bytes
// once measured.
func (c healthCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.h.figures()
	if f.Checked {
		ch <- prometheus.MustNewConstMetric(descFindings, prometheus.GaugeValue, float64(f.FindingErrors), "error")
		ch <- prometheus.MustNewConstMetric(descFindings, prometheus.GaugeValue, float64(f.FindingWarnings), "warning")
	}
	if f.RetainedKnown {
		ch <- prometheus.MustNewConstMetric(descRetained, prometheus.GaugeValue, float64(f.RetainedBytes))
	}
}
