package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/internal/backoff"
	"github.com/tagstream/tagstream/sink"
)

// worker owns one sink: its queue, its retries, its give-up state and the
// position it has accepted. It runs on its own goroutine, so a slow sink
// holds only the acknowledgement (and, once its queue is full, the reader),
// never the other sinks.
type worker struct {
	p    *Pipeline
	t    Target
	q    *queue
	log  *slog.Logger
	bo   backoff.Backoff
	txns []sink.Txn // scratch for Deliver

	acked     atomic.Uint64 // highest position accepted or given up on
	ackedTime atomic.Int64  // commit time (UnixNano) of that position
	inFlight  atomic.Int64  // commit time (UnixNano) of the oldest transaction being delivered, 0 when none

	delivered, batches, failures, resets, giveUps atomic.Uint64
	givenUp                                       atomic.Bool

	sawResumed   bool
	failingSince time.Time
	// After a give-up: the reset the sink gets once it answers again.
	resetPending bool
	resetReason  string
	resetPos     cdc.Position
	nextReset    time.Time
}

func newWorker(p *Pipeline, t Target) *worker {
	return &worker{
		p:   p,
		t:   t,
		q:   newQueue(t.QueueSize, t.QueueBytes),
		log: p.log.With(logSink, t.Name),
		bo:  backoff.Backoff{Min: t.BackoffMin, Max: t.BackoffMax},
	}
}

func (w *worker) run(ctx context.Context) {
	var batch []item
	for ctx.Err() == nil {
		if w.resetPending && !time.Now().Before(w.nextReset) {
			w.retryPendingReset(ctx)
		}
		batch = w.q.take(batch[:0], w.t.MaxBatch)
		if len(batch) == 0 {
			w.idle(ctx)
			continue
		}
		if w.t.Linger > 0 && len(batch) < w.t.MaxBatch && !w.resetPending {
			// Let a burst of commits join this batch.
			if !backoff.Sleep(ctx, w.t.Linger) {
				return
			}
			batch = w.q.take(batch, w.t.MaxBatch-len(batch))
		}
		w.process(ctx, batch)
		clear(batch)
	}
}

// idle waits for items, or for the next attempt of a pending reset.
func (w *worker) idle(ctx context.Context) {
	var retry <-chan time.Time
	if w.resetPending {
		t := time.NewTimer(time.Until(w.nextReset))
		defer t.Stop()
		retry = t.C
	}
	w.q.wait(ctx, idleSpins, retry)
}

// process hands consecutive commits over as one batch; markers split them.
func (w *worker) process(ctx context.Context, batch []item) {
	start := 0
	for i := range batch {
		if batch[i].kind == kindCommit {
			continue
		}
		w.deliver(ctx, batch[start:i])
		w.marker(ctx, &batch[i])
		start = i + 1
	}
	w.deliver(ctx, batch[start:])
}

func (w *worker) marker(ctx context.Context, it *item) {
	switch it.kind {
	case kindResumed:
		if r, ok := w.t.Sink.(sink.Resumer); ok {
			r.Resumed(it.txn.Position)
		}
		if !w.sawResumed {
			w.sawResumed = true
			w.p.sinkResumed()
		}
	case kindLost:
		w.reset(ctx, it.reason, it.txn.Position)
	case kindIdle:
		if i, ok := w.t.Sink.(sink.Idler); ok {
			i.Idle(it.txn.Position)
		}
		w.accept(it.txn)
	}
}

func (w *worker) deliver(ctx context.Context, items []item) {
	if len(items) == 0 {
		return
	}
	last := items[len(items)-1].txn
	if w.resetPending {
		// Given up: the reset it gets once it answers covers these.
		w.resetPos = last.Position
		w.accept(last)
		return
	}
	txns := w.txns[:0]
	for i := range items {
		txns = append(txns, items[i].txn)
	}
	w.inFlight.Store(txns[0].Time.UnixNano())
	defer func() {
		w.inFlight.Store(0)
		clear(txns)
		w.txns = txns[:0]
	}()
	for {
		err := w.t.Sink.Deliver(ctx, txns)
		if err == nil {
			w.succeeded()
			w.observe(txns)
			w.delivered.Add(uint64(len(txns)))
			w.batches.Add(1)
			w.accept(last)
			return
		}
		if ctx.Err() != nil {
			return
		}
		if w.failed(err, last.Position, "deliver") {
			w.accept(last) // given up: no longer holds the database
			return
		}
		if !backoff.Sleep(ctx, w.bo.Next()) {
			return
		}
	}
}

func (w *worker) observe(txns []sink.Txn) {
	if w.t.ObserveDelay == nil {
		return
	}
	now := time.Now()
	for i := range txns {
		w.t.ObserveDelay(now.Sub(txns[i].Time))
	}
}

// reset gives the sink a continuity reset, retried like a delivery.
func (w *worker) reset(ctx context.Context, reason string, pos cdc.Position) {
	if w.resetPending {
		w.resetReason = reason // the pending reset covers this one too
		return
	}
	for {
		err := w.t.Sink.Reset(ctx, reason, pos)
		if err == nil {
			w.succeeded()
			w.resets.Add(1)
			return
		}
		if ctx.Err() != nil || w.failed(err, pos, "reset") {
			w.resetReason = reason
			return
		}
		if !backoff.Sleep(ctx, w.bo.Next()) {
			return
		}
	}
}

// retryPendingReset tries the reset a given-up sink is owed; once it is
// accepted, the sink is back and gets every later transaction again.
func (w *worker) retryPendingReset(ctx context.Context) {
	err := w.t.Sink.Reset(ctx, w.resetReason, w.resetPos)
	if err != nil {
		w.failures.Add(1)
		d := w.bo.Next()
		w.nextReset = time.Now().Add(d)
		w.log.Debug("sink still failing; its reset is retried", logErr, err, logRetry, d)
		return
	}
	w.log.Info("sink answers again: it got a reset and receives every transaction from here", logPosition, uint64(w.resetPos))
	w.resets.Add(1)
	w.resetPending = false
	w.givenUp.Store(false)
	w.succeeded()
}

func (w *worker) succeeded() {
	w.failingSince = time.Time{}
	w.bo.Reset()
}

// failed counts a failure and reports whether the sink has now failed for
// longer than its give-up bound (it then stops holding the database and is
// owed a reset).
func (w *worker) failed(err error, pos cdc.Position, what string) bool {
	w.failures.Add(1)
	now := time.Now()
	if w.failingSince.IsZero() {
		w.failingSince = now
	}
	down := now.Sub(w.failingSince)
	if w.t.GiveUp > 0 && down >= w.t.GiveUp {
		w.resetPending = true
		w.resetPos = pos
		w.resetReason = fmt.Sprintf("%s failed for longer than %s and was given up on; its deliveries until now were dropped", w.t.Name, w.t.GiveUp)
		w.nextReset = now.Add(w.bo.Next())
		w.givenUp.Store(true)
		w.giveUps.Add(1)
		w.log.Error("sink gave up: it no longer holds the database back; it gets a reset when it answers again",
			logErr, err, "failing_for", down.Round(time.Millisecond), logPosition, uint64(pos))
		return true
	}
	w.log.Warn("sink "+what+" failed; retrying", logErr, err, "failing_for", down.Round(time.Millisecond))
	return false
}

// accept records that everything up to txn was accepted (or given up on)
// and lets the pipeline acknowledge what every sink has.
func (w *worker) accept(txn sink.Txn) {
	w.acked.Store(uint64(txn.Position))
	w.ackedTime.Store(txn.Time.UnixNano())
	w.p.acknowledge()
}
