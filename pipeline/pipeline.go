// Package pipeline joins tagstream's stages:
//
//	cdc.Source --row changes--> rules.Tx --commit--> [visibility fence] --> sinks --all accepted--> Source.Ack
//
// The Pipeline is the source's cdc.Handler. Each committed transaction's
// tags are handed to every sink (the SSE hub, webhooks, Redis, the broker)
// through a bounded queue per sink, delivered by one goroutine per sink in
// position order, and a position is acknowledged to the database only once
// every sink has accepted it — or has failed for longer than its give-up
// bound, after which it gets a reset when it answers again. With the fence,
// commits reach the sinks only once a fresh snapshot on the source sees them.
package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/rules"
	"github.com/tagstream/tagstream/sink"
)

// Log keys.
const (
	logSink     = "sink"
	logErr      = "err"
	logRetry    = "retry_in"
	logPosition = "position"
	logReason   = "reason"
)

// Defaults for a Target's zero values.
const (
	DefaultQueueSize  = 4096
	DefaultQueueBytes = 16 << 20
	DefaultMaxBatch   = 512
	DefaultBackoffMin = 100 * time.Millisecond
	DefaultBackoffMax = 30 * time.Second
	DefaultFenceBatch = 1024
)

// Target is a sink and how the pipeline treats it.
type Target struct {
	Name string // in logs and metrics: "sse", "webhook https://…", "redis"
	Sink sink.Sink
	// QueueSize and QueueBytes bound the transactions waiting for this
	// sink (default 4096 and 16 MiB); a full queue holds the reader.
	QueueSize, QueueBytes int
	// MaxBatch bounds the transactions of one Deliver (default 512).
	MaxBatch int
	// Linger waits this long for more transactions before delivering a
	// batch that is not full (default 0: deliver what is there).
	Linger time.Duration
	// GiveUp: a sink failing for longer stops holding the database back;
	// it is owed a reset, sent when it answers again. 0 never gives up.
	GiveUp time.Duration
	// BackoffMin and BackoffMax bound the retry delays (default 100 ms, 30 s).
	BackoffMin, BackoffMax time.Duration
	// ObserveDelay, when set, gets each delivered transaction's delay from
	// its commit time to its acceptance by the sink.
	ObserveDelay func(time.Duration)
}

// Options configure a Pipeline.
type Options struct {
	Logger *slog.Logger
	// Fence makes commits wait for the source's proof that a fresh
	// snapshot sees them (cdc.Fence) before any sink gets them. Ignored
	// when the source cannot prove it.
	Fence bool
	// FenceBatch bounds the commits proven by one round trip (default 1024).
	FenceBatch int
	// ObserveSource, when set, gets each commit's delay from its commit
	// time to the source handing it over: the database, its walsender or
	// binlog sender and the reader, before the fence and the sinks.
	ObserveSource func(time.Duration)
}

// Pipeline is the cdc.Handler of a source. Create it with New, hand it to
// the source's Run, and Close it after Run has returned.
type Pipeline struct {
	src     cdc.Source
	log     *slog.Logger
	engine  atomic.Pointer[rules.Engine]
	workers []*worker

	fence      cdc.Fence
	fenceQ     *queue
	fenceBatch int

	observeSource func(time.Duration)

	handed cdc.Position // last commit handed to the sinks (reader goroutine)

	rulesMu   sync.Mutex
	rulesBase rules.Stats // counters of the engines replaced by reloads

	ackMu   sync.Mutex
	lastAck uint64
	ackSig  chan struct{} // 1 slot: something was accepted (Drain)
	handedA atomic.Uint64 // handed, for Drain

	resumed      chan struct{} // closed once every sink saw the first Resumed
	resumedSinks atomic.Int32

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	commits, emptyTx, duplicates             atomic.Uint64
	fencedCommits, fenceWaits, fenceTimeouts atomic.Uint64
	fenceErrors                              atomic.Uint64
	fenceNanos                               atomic.Int64
	lastPos, end                             atomic.Uint64
	lastCommitNanos                          atomic.Int64
}

var _ cdc.Handler = (*Pipeline)(nil)

// New starts a pipeline from src through engine to the targets. engine may
// be nil when the source commits transactions already tagged (an edge node
// reading the broker): Begin is then not to be called.
func New(src cdc.Source, engine *rules.Engine, targets []Target, opts Options) *Pipeline {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pipeline{
		src:           src,
		log:           log,
		ackSig:        make(chan struct{}, 1),
		observeSource: opts.ObserveSource,
		resumed:       make(chan struct{}),
		ctx:           ctx,
		cancel:        cancel,
	}
	p.engine.Store(engine)
	for _, t := range targets {
		p.workers = append(p.workers, newWorker(p, withDefaults(t)))
	}
	if len(p.workers) == 0 {
		close(p.resumed)
	}
	if f, ok := src.(cdc.Fence); ok && opts.Fence {
		p.fence = f
		p.fenceBatch = opts.FenceBatch
		if p.fenceBatch <= 0 {
			p.fenceBatch = DefaultFenceBatch
		}
		p.fenceQ = newQueue(4*p.fenceBatch, DefaultQueueBytes)
		p.wg.Go(func() { p.runFence(ctx) })
	}
	for _, w := range p.workers {
		p.wg.Go(func() { w.run(ctx) })
	}
	return p
}

func withDefaults(t Target) Target {
	if t.QueueSize <= 0 {
		t.QueueSize = DefaultQueueSize
	}
	if t.QueueBytes <= 0 {
		t.QueueBytes = DefaultQueueBytes
	}
	if t.MaxBatch <= 0 {
		t.MaxBatch = DefaultMaxBatch
	}
	if t.BackoffMin <= 0 {
		t.BackoffMin = DefaultBackoffMin
	}
	if t.BackoffMax <= 0 {
		t.BackoffMax = DefaultBackoffMax
	}
	return t
}

// SetEngine swaps the rules (a reload); transactions already begun keep
// the engine they began with.
func (p *Pipeline) SetEngine(e *rules.Engine) {
	old := p.engine.Swap(e)
	if old == nil {
		return
	}
	p.rulesMu.Lock()
	st := old.Stats()
	p.rulesBase.LongTags += st.LongTags
	p.rulesBase.Collapses += st.Collapses
	p.rulesMu.Unlock()
}

// RulesStats returns the rules' counters since the pipeline started, across
// reloads.
func (p *Pipeline) RulesStats() rules.Stats {
	p.rulesMu.Lock()
	defer p.rulesMu.Unlock()
	var st rules.Stats
	if e := p.engine.Load(); e != nil {
		st = e.Stats()
	}
	st.LongTags += p.rulesBase.LongTags
	st.Collapses += p.rulesBase.Collapses
	return st
}

// Engine returns the rules in force.
func (p *Pipeline) Engine() *rules.Engine { return p.engine.Load() }

// Fenced reports whether commits wait for the source's visibility proof.
func (p *Pipeline) Fenced() bool { return p.fence != nil }

// Ready returns a channel closed once every sink has learnt where the
// source first resumed from: until then the hub cannot judge a client's
// cursor.
func (p *Pipeline) Ready() <-chan struct{} { return p.resumed }

func (p *Pipeline) sinkResumed() {
	if int(p.resumedSinks.Add(1)) == len(p.workers) {
		close(p.resumed)
	}
}

// Begin implements cdc.Handler.
func (p *Pipeline) Begin() cdc.Tx { return p.engine.Load().NewTx() }

// Commit hands the transaction to the sinks (through the fence). It
// returns once every sink's queue took it; acknowledgement follows when
// every sink has accepted it. A position handed over before (a source
// re-reading after a reconnect) is dropped: it is already on its way.
func (p *Pipeline) Commit(ctx context.Context, tx cdc.Tx, c cdc.Commit) error {
	if err := p.ctx.Err(); err != nil {
		return err
	}
	if c.Position <= p.handed {
		p.duplicates.Add(1)
		return nil
	}
	if p.observeSource != nil {
		p.observeSource(time.Since(c.Time))
	}
	tags := tx.Tags()
	p.commits.Add(1)
	if len(tags) == 0 {
		p.emptyTx.Add(1)
	}
	it := newItem(kindCommit, sink.Txn{Position: c.Position, Time: c.Time, Tags: tags})
	it.xid = c.Xid
	if err := p.dispatch(ctx, it); err != nil {
		return err
	}
	p.lastPos.Store(uint64(c.Position))
	p.lastCommitNanos.Store(c.Time.UnixNano())
	p.handedOver(c.Position)
	return nil
}

// handedOver records that everything up to pos is on its way to the sinks;
// without sinks it is acknowledged at once.
func (p *Pipeline) handedOver(pos cdc.Position) {
	p.handed = pos
	p.handedA.Store(uint64(pos))
	if len(p.workers) == 0 {
		p.src.Ack(pos)
	}
}

// Resumed implements cdc.Handler: the floor reaches every sink in order.
func (p *Pipeline) Resumed(pos cdc.Position) {
	p.log.Info("streaming", "resumed_from", uint64(pos))
	_ = p.dispatch(context.Background(), newItem(kindResumed, sink.Txn{Position: pos}))
}

// Idle implements cdc.Idler: pos goes to every sink after the transactions
// handed over before it and is acknowledged like one of them.
func (p *Pipeline) Idle(pos cdc.Position) {
	if pos <= p.handed {
		return
	}
	if err := p.dispatch(context.Background(), newItem(kindIdle, sink.Txn{Position: pos, Time: time.Now()})); err != nil {
		return
	}
	p.handedOver(pos)
}

// Progress implements cdc.Handler.
func (p *Pipeline) Progress(end cdc.Position) {
	p.end.Store(uint64(end))
	for _, w := range p.workers {
		if pr, ok := w.t.Sink.(sink.Progresser); ok {
			pr.Progress(end)
		}
	}
}

// Lost implements cdc.Handler: every sink gets a reset, after the
// transactions handed over before.
func (p *Pipeline) Lost(ctx context.Context, reason string) error {
	p.log.Error("continuity lost: every sink and client gets a reset", logReason, reason)
	it := newItem(kindLost, sink.Txn{Position: p.handed})
	it.reason = reason
	return p.dispatch(ctx, it)
}

func (p *Pipeline) dispatch(ctx context.Context, it item) error {
	if p.fence != nil {
		return p.fenceQ.push(ctx, it)
	}
	return p.fanout(ctx, it)
}

func (p *Pipeline) fanout(ctx context.Context, it item) error {
	for _, w := range p.workers {
		if err := w.q.push(ctx, it); err != nil {
			return err
		}
	}
	return nil
}

// acknowledge tells the source the highest position every sink accepted.
func (p *Pipeline) acknowledge() {
	p.ackMu.Lock()
	m := uint64(math.MaxUint64)
	for _, w := range p.workers {
		m = min(m, w.acked.Load())
	}
	if m > p.lastAck {
		p.lastAck = m
		p.src.Ack(cdc.Position(m))
	}
	p.ackMu.Unlock()
	notify(p.ackSig)
}

// Drain implements cdc.Handler: it waits until every sink accepted the
// last transaction handed over, or ctx ends.
func (p *Pipeline) Drain(ctx context.Context) {
	for {
		p.ackMu.Lock()
		done := p.lastAck >= p.handedA.Load() || len(p.workers) == 0
		p.ackMu.Unlock()
		if done {
			return
		}
		select {
		case <-p.ackSig:
		case <-p.ctx.Done():
			return // abandoned or closed: nothing more will be accepted
		case <-ctx.Done():
			p.log.Warn("stopping before every sink accepted what it was handed; it is read again at the next start",
				"handed", p.handedA.Load(), "acknowledged", p.lastAck)
			return
		}
	}
}

// Abandon stops delivering at once: what the sinks have not accepted is
// dropped (never acknowledged), Drain returns without waiting and Commit
// fails. A writer that lost its lease on the broker calls it, so that it
// neither waits for appends that are refused nor holds the source; another
// process reads the dropped transactions again from the database's
// acknowledged position. Close is still to be called.
func (p *Pipeline) Abandon() {
	p.log.Warn("abandoning the transactions in flight: they are read again by whoever streams next")
	p.cancel()
}

// Close stops the fence and the sinks' goroutines. Call it after the
// source's Run has returned (Run drains first).
func (p *Pipeline) Close() {
	p.cancel()
	p.wg.Wait()
}

// runFence proves the visibility of queued commits, a batch per round
// trip, and passes them (and the markers between them) on in order.
func (p *Pipeline) runFence(ctx context.Context) {
	var (
		batch   []item
		commits []cdc.Commit
	)
	for ctx.Err() == nil {
		batch = p.fenceQ.take(batch[:0], p.fenceBatch)
		if len(batch) == 0 {
			// No spinning: each batch waits a database round trip anyway
			// (a spinning fence measured no faster: 3-tag drain 0.67–1.22
			// against 0.66–1.04 × pg_recvlogical, four runs each).
			p.fenceQ.wait(ctx, 0, nil)
			continue
		}
		commits = commits[:0]
		for i := range batch {
			if it := &batch[i]; it.kind == kindCommit {
				commits = append(commits, cdc.Commit{Position: it.txn.Position, Time: it.txn.Time, Xid: it.xid})
			}
		}
		if len(commits) > 0 && !p.prove(ctx, commits) {
			return
		}
		for i := range batch {
			if p.fanout(ctx, batch[i]) != nil {
				return
			}
		}
		clear(batch)
	}
}

// prove waits for the fence. A proof that fails or times out is counted
// and the commits go on: the fence delays, it never withholds.
func (p *Pipeline) prove(ctx context.Context, commits []cdc.Commit) bool {
	start := time.Now()
	err := p.fence.WaitVisible(ctx, commits)
	p.fenceNanos.Add(int64(time.Since(start)))
	p.fenceWaits.Add(1)
	switch {
	case err == nil:
		p.fencedCommits.Add(uint64(len(commits)))
	case ctx.Err() != nil:
		return false
	case errors.Is(err, cdc.ErrNotVisible):
		p.fenceTimeouts.Add(1)
		p.log.Warn("visibility not proven in time; publishing anyway", logErr, err, logPosition, uint64(commits[len(commits)-1].Position))
	default:
		p.fenceErrors.Add(1)
		p.log.Warn("visibility fence failed; publishing anyway", logErr, err, logPosition, uint64(commits[len(commits)-1].Position))
	}
	return true
}
