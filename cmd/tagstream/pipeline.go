package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/rules"
	"github.com/tagstream/tagstream/stream"
)

// pipeline is the cdc.Handler that joins the three stages:
//
//	cdc.Source --changes--> rules.Engine --tags--> stream.Hub --accepted--> Source.Ack
//
// Every method runs on the reader's goroutine; the engine may be swapped by a
// rules reload from another goroutine, so it sits behind an atomic pointer and
// each transaction keeps the engine it began with.
type pipeline struct {
	engine atomic.Pointer[rules.Engine]
	hub    *stream.Hub
	src    cdc.Source
	log    *slog.Logger

	// resumed is closed when the source first reports where it resumed
	// from; until then the hub cannot judge a client's cursor.
	resumed     chan struct{}
	resumedOnce sync.Once

	commits   atomic.Uint64
	emptyTx   atomic.Uint64
	lastPos   atomic.Uint64
	lastCommT atomic.Int64
}

func newPipeline(e *rules.Engine, hub *stream.Hub, src cdc.Source, log *slog.Logger) *pipeline {
	p := &pipeline{hub: hub, src: src, log: log, resumed: make(chan struct{})}
	p.engine.Store(e)
	return p
}

func (p *pipeline) setEngine(e *rules.Engine) { p.engine.Store(e) }

func (p *pipeline) Begin() cdc.Tx { return p.engine.Load().NewTx() }

// Commit publishes the transaction's tags and, once the hub accepted them,
// acknowledges the position to the reader. A transaction without tags still
// advances the position.
func (p *pipeline) Commit(ctx context.Context, tx cdc.Tx, c cdc.Commit) error {
	tags := tx.Tags()
	if err := p.hub.Publish(ctx, c.Position, c.Time, tags); err != nil {
		return fmt.Errorf("publish %d: %w", c.Position, err)
	}
	p.src.Ack(c.Position)
	p.commits.Add(1)
	if len(tags) == 0 {
		p.emptyTx.Add(1)
	}
	p.lastPos.Store(uint64(c.Position))
	p.lastCommT.Store(c.Time.UnixNano())
	return nil
}

func (p *pipeline) Resumed(pos cdc.Position) {
	p.log.Info("streaming", "resumed_from", uint64(pos))
	p.hub.SetFloor(pos)
	p.resumedOnce.Do(func() { close(p.resumed) })
}

// events serves the hub's /events once the source has resumed: a client
// reconnecting with its cursor right after a restart would otherwise be
// judged against an unknown floor and get a needless reset. It waits with
// the client (EventSource gives up on an error status) until then.
func (p *pipeline) events() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-p.resumed:
			p.hub.ServeHTTP(w, r)
		case <-r.Context().Done():
		}
	})
}

func (p *pipeline) Progress(end cdc.Position) { p.hub.SetEnd(end) }

// Drain has nothing to wait for: Commit returns once the hub accepted.
func (p *pipeline) Drain(context.Context) {}

// Lost tells every client to treat what it watches as invalidated.
func (p *pipeline) Lost(ctx context.Context, reason string) error {
	p.log.Error("continuity lost: every client gets a reset", "reason", reason)
	p.hub.Reset(reason)
	return nil
}

// metricsHandler serves counters in the Prometheus text format.
func (p *pipeline) metricsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		es := p.engine.Load().Stats()
		hs := p.hub.Stats()
		lag := 0.0
		if t := p.lastCommT.Load(); t != 0 {
			lag = time.Since(time.Unix(0, t)).Seconds()
		}
		fmt.Fprintf(w, "# TYPE tagstream_transactions_total counter\ntagstream_transactions_total %d\n", p.commits.Load())
		fmt.Fprintf(w, "# TYPE tagstream_transactions_without_tags_total counter\ntagstream_transactions_without_tags_total %d\n", p.emptyTx.Load())
		fmt.Fprintf(w, "# TYPE tagstream_position gauge\ntagstream_position %d\n", p.lastPos.Load())
		fmt.Fprintf(w, "# TYPE tagstream_seconds_since_last_commit gauge\ntagstream_seconds_since_last_commit %g\n", lag)
		writeStats(w, "tagstream_rules_", es)
		writeStats(w, "tagstream_hub_", hs)
	})
}
