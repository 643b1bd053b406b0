package mysql

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/internal/backoff"
)

// Log keys.
const (
	logErr      = "err"
	logPosition = "position"
	logGTID     = "gtid"
	logFile     = "file"
	logRetry    = "retry_in"
)

// Reader is a cdc.Source over a MySQL/MariaDB binlog.
type Reader struct {
	cfg  Config
	dsn  DSN
	log  *slog.Logger
	path string // checkpoint file

	ready   atomic.Bool
	running atomic.Bool
	streams atomic.Uint64 // binlog connections attempted (Reconnects)

	mu          sync.Mutex
	pending     []checkpoint // handed to the handler, not yet acknowledged, by position
	durableFile string       // where a restart resumes: the checkpoint written last
	durablePos  uint32
	acked       *checkpoint // newest acknowledged checkpoint
	ackGen      uint64      // increments with every new acked checkpoint
	samples     []ackSample // acked checkpoints seen by the writer, oldest first
	sampledGen  uint64
	wake        chan struct{} // write the newest acked checkpoint at once

	writeMu    sync.Mutex // serialises checkpoint writes
	writtenGen uint64
	// failed is what the last write tried to write when it failed (nil:
	// it succeeded), retried every tick; the error is logged once per run
	// of failures.
	failed    *checkpoint
	failedGen uint64

	retained      atomic.Int64 // binlog bytes after the checkpoint, last measured
	retainedKnown atomic.Bool

	st binlogState // owned by Run's goroutine

	fence fence
}

var (
	_ cdc.Source    = (*Reader)(nil)
	_ cdc.Retention = (*Reader)(nil)
)

// New validates cfg; it does no I/O.
func New(cfg Config) (*Reader, error) {
	d, err := ParseDSN(cfg.DSN)
	if err != nil {
		return nil, err
	}
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	r := &Reader{
		cfg:  cfg,
		dsn:  d,
		log:  cfg.Logger,
		path: checkpointPath(cfg.StateDir, d),
		wake: make(chan struct{}, 1),
	}
	if cfg.DryRun {
		r.path = "" // no checkpoint read or written
	}
	r.fence.r = r
	return r, nil
}

// DefaultSchema is the DSN's database: the schema of unqualified tables.
func (r *Reader) DefaultSchema() string { return r.dsn.Database }

// ServerID is the replica server_id the reader registers with.
func (r *Reader) ServerID() uint32 { return r.cfg.ServerID }

// CheckpointPath is the file that holds the resume point ("" in a dry run).
func (r *Reader) CheckpointPath() string { return r.path }

// Ready reports whether the reader is streaming.
func (r *Reader) Ready() bool { return r.ready.Load() }

// Reconnects counts the binlog connections attempted after the first (a
// lost connection, a server that is down: each retry counts).
func (r *Reader) Reconnects() uint64 { return max(r.streams.Load(), 1) - 1 }

// While running, the checkpoint file trails the newest acknowledged
// transaction by checkpointLag (sampled every checkpointTick): after a crash
// the reader re-delivers up to that much (harmless: invalidations are
// idempotent), and every client that was at most that far behind when the
// process died finds its cursor above the resume point and resumes instead
// of getting a reset. A clean stop writes the newest one.
const (
	checkpointLag  = time.Second
	checkpointTick = 100 * time.Millisecond
)

// ackSample is an acknowledged checkpoint and when the writer first saw it.
type ackSample struct {
	cp  checkpoint
	gen uint64
	at  time.Time
}

// Ack records that every transaction up to pos was accepted; the
// checkpoint file follows checkpointLag behind (and moves to the newest
// when Run returns).
func (r *Reader) Ack(pos cdc.Position) {
	r.mu.Lock()
	n := 0
	for n < len(r.pending) && r.pending[n].Position <= pos {
		n++
	}
	if n > 0 {
		cp := r.pending[n-1]
		r.acked = &cp
		r.ackGen++
		r.pending = append(r.pending[:0], r.pending[n:]...)
	}
	r.mu.Unlock()
	if n == 0 {
		return
	}
	if !r.running.Load() {
		r.flushCheckpoint() // no writer: an Ack after Run returned
	}
}

func (r *Reader) addPending(cp checkpoint) {
	r.mu.Lock()
	r.pending = append(r.pending, cp)
	r.mu.Unlock()
}

// restartCheckpoint replaces whatever was pending with cp: after a loss of
// continuity, older transactions no longer matter.
func (r *Reader) restartCheckpoint(cp checkpoint) {
	r.mu.Lock()
	r.pending = r.pending[:0]
	r.acked = &cp
	r.ackGen++
	r.samples = r.samples[:0]
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// flushCheckpoint writes the newest acknowledged checkpoint, if any.
func (r *Reader) flushCheckpoint() {
	r.mu.Lock()
	cp, gen := r.acked, r.ackGen
	r.mu.Unlock()
	if cp != nil {
		r.writeCheckpoint(*cp, gen)
	}
}

// flushLagged samples the newest acknowledged checkpoint and writes the
// newest sample that is at least checkpointLag old.
func (r *Reader) flushLagged(now time.Time) {
	r.mu.Lock()
	if r.acked != nil && r.ackGen > r.sampledGen {
		r.samples = append(r.samples, ackSample{cp: *r.acked, gen: r.ackGen, at: now})
		r.sampledGen = r.ackGen
	}
	i := -1
	for i+1 < len(r.samples) && !r.samples[i+1].at.After(now.Add(-checkpointLag)) {
		i++
	}
	if i < 0 {
		r.mu.Unlock()
		return
	}
	s := r.samples[i]
	r.samples = append(r.samples[:0], r.samples[i+1:]...)
	r.mu.Unlock()
	r.writeCheckpoint(s.cp, s.gen)
}

// writeCheckpoint writes cp unless a newer one was written.
func (r *Reader) writeCheckpoint(cp checkpoint, gen uint64) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	if gen <= r.writtenGen {
		return
	}
	if err := saveCheckpoint(r.path, &cp); err != nil {
		if r.failed == nil {
			r.log.Error("mysql: checkpoint not written; retrying; until it is, a restart resumes from the last one written and repeats work", logErr, err)
		}
		r.failed, r.failedGen = &cp, gen
		return // retried on the next tick or at exit
	}
	if r.failed != nil {
		r.failed = nil
		r.log.Info("mysql: checkpoint written again", logPosition, cp.Position)
	}
	r.writtenGen = gen
	r.setDurable(cp.File, cp.Pos)
}

// retryFailed writes again the checkpoint whose write failed, unless a
// newer one was written since.
func (r *Reader) retryFailed() {
	r.writeMu.Lock()
	cp, gen := r.failed, r.failedGen
	r.writeMu.Unlock()
	if cp != nil {
		r.writeCheckpoint(*cp, gen)
	}
}

func (r *Reader) writeCheckpoints(ctx context.Context) {
	t := time.NewTicker(checkpointTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
			r.flushCheckpoint()
		case now := <-t.C:
			r.retryFailed()
			r.flushLagged(now)
		}
	}
}

// handlerError carries an error of the cdc.Handler: it stops Run.
type handlerError struct{ err error }

func (e handlerError) Error() string { return e.err.Error() }
func (e handlerError) Unwrap() error { return e.err }

// Run streams until ctx is cancelled (it then returns nil after writing
// the acknowledged checkpoint) or an unrecoverable error occurs.
// Connection losses are retried with jittered exponential backoff; a
// purged binlog is reported with h.Lost and replication restarts at the head.
func (r *Reader) Run(ctx context.Context, h cdc.Handler) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("mysql: Run is already running")
	}
	defer r.running.Store(false)
	defer r.ready.Store(false)
	r.fence.open()
	defer r.fence.close() // after the handler drained

	// An unwritable state dir is a configuration error now, not a stream
	// of failed checkpoint writes later.
	if err := checkStateDir(r.path); err != nil {
		return err
	}
	bo := backoff.Backoff{Min: r.cfg.BackoffMin, Max: r.cfg.BackoffMax}
	info, head, err := r.prepareRetrying(ctx, &bo, "cannot prepare replication")
	if err != nil || ctx.Err() != nil {
		return err
	}
	resumeFrom, err := r.startPoint(info, head)
	if err != nil {
		return err
	}
	r.st.setFloor(resumeFrom)
	r.setDurable(r.st.file, r.st.pos)
	r.st.startEnd = head.position()

	stopHelpers := r.startHelpers(ctx, h)
	defer stopHelpers()
	return r.replicateLoop(ctx, h, info, &bo, resumeFrom)
}

// prepareRetrying is prepare, retried with bo until it succeeds, ctx ends
// (nil error, ctx.Err() set) or the configuration turns out unusable.
func (r *Reader) prepareRetrying(ctx context.Context, bo *backoff.Backoff, what string) (*serverInfo, binlogHead, error) {
	for {
		info, head, err := r.prepare(ctx)
		if err == nil {
			return info, head, nil
		}
		if ctx.Err() != nil {
			return nil, binlogHead{}, nil
		}
		if errors.Is(err, ErrConfig) {
			return nil, binlogHead{}, err
		}
		d := bo.Next()
		r.log.Warn("mysql: "+what+"; retrying", logErr, errText(err), logRetry, d)
		if !backoff.Sleep(ctx, d) {
			return nil, binlogHead{}, nil
		}
	}
}

// startPoint sets the binlog state to the checkpoint, or to the head when
// there is none (writing that checkpoint at once), and returns the position
// replication resumes from.
func (r *Reader) startPoint(info *serverInfo, head binlogHead) (cdc.Position, error) {
	cp, err := loadCheckpoint(r.path)
	if err != nil {
		return 0, err
	}
	if cp != nil && cp.Flavor == info.flavor {
		if err := r.st.startAt(info, cp.GTIDSet, cp.File, cp.Pos); err != nil {
			return 0, fmt.Errorf("%w: checkpoint %s: %w", ErrConfig, r.path, err)
		}
		r.log.Info("mysql: resuming from checkpoint", logGTID, cp.GTIDSet, logFile, cp.File, logPosition, cp.Position)
		return cp.Position, nil
	}
	if cp != nil {
		r.log.Warn("mysql: checkpoint is for another server flavor; starting at the binlog head", "checkpoint", r.path, "flavor", cp.Flavor)
	}
	if err := r.st.startAt(info, head.gtid, head.file, head.pos); err != nil {
		return 0, err
	}
	from := head.position()
	r.log.Info("mysql: no checkpoint; starting at the binlog head", logGTID, head.gtid, logFile, head.file, logPosition, from)
	// Written now: a crash before the first acknowledged transaction
	// reaches the file resumes here, not at a later head.
	r.restartCheckpoint(checkpoint{Flavor: info.flavor, GTIDSet: head.gtid, File: head.file, Pos: head.pos, Position: from})
	r.flushCheckpoint()
	return from, nil
}

// startHelpers starts the checkpoint writer and the retention watcher; the
// function it returns drains the handler, stops them and writes the last
// acknowledged checkpoint.
func (r *Reader) startHelpers(ctx context.Context, h cdc.Handler) func() {
	wctx, stopWriter := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { r.writeCheckpoints(wctx) })
	rctx, stopRetention := context.WithCancel(ctx)
	wg.Go(func() { r.watchRetention(rctx) })
	return func() {
		// Let the handler finish what it was handed (bounded: what is not
		// acknowledged by then is re-read at the next start).
		dctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
		h.Drain(dctx)
		cancel()
		stopRetention()
		stopWriter()
		wg.Wait()
		// From here Ack writes by itself; this catches what came before.
		r.running.Store(false)
		r.flushCheckpoint()
	}
}

// replicateLoop runs binlog connections one after the other until ctx
// ends or an error no reconnect can fix.
func (r *Reader) replicateLoop(ctx context.Context, h cdc.Handler, info *serverInfo, bo *backoff.Backoff, resumeFrom cdc.Position) error {
	resumed := false
	for {
		connected, err := r.replicate(ctx, h, info, &resumed, resumeFrom)
		r.ready.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		var herr handlerError
		if errors.As(err, &herr) {
			return herr.err
		}
		if connected {
			bo.Reset() // the connection streamed: a new failure, retried quickly
		}
		if reason, lost := continuityLost(err); lost {
			from, err := r.restartAtHead(ctx, h, info, bo, reason)
			if err != nil || ctx.Err() != nil {
				return err
			}
			resumeFrom, resumed = from, false
			continue
		}
		if errors.Is(err, ErrConfig) {
			return err
		}
		d := bo.Next()
		r.log.Warn("mysql: binlog replication interrupted; reconnecting", logErr, errText(err), logRetry, d,
			logGTID, r.st.gtidString(), logFile, r.st.file)
		if !backoff.Sleep(ctx, d) {
			return nil
		}
	}
}

// restartAtHead handles a loss of continuity: every client is told, and
// replication restarts at the binlog head, which it returns.
func (r *Reader) restartAtHead(ctx context.Context, h cdc.Handler, info *serverInfo, bo *backoff.Backoff, reason string) (cdc.Position, error) {
	lostErr := fmt.Errorf("%w: %s", cdc.ErrContinuityLost, reason)
	r.log.Error("mysql: CONTINUITY LOST: the binlog the reader needs is gone; every client gets a reset and replication restarts at the head",
		logErr, lostErr, logGTID, r.st.gtidString(), logFile, r.st.file)
	if err := h.Lost(ctx, lostErr.Error()); err != nil {
		if ctx.Err() != nil {
			return 0, nil
		}
		return 0, err
	}
	_, head, err := r.prepareRetrying(ctx, bo, "cannot read the binlog head")
	if err != nil || ctx.Err() != nil {
		return 0, err
	}
	if err := r.st.startAt(info, head.gtid, head.file, head.pos); err != nil {
		return 0, err
	}
	from := head.position()
	r.st.setFloor(from)
	r.st.startEnd = from
	r.restartCheckpoint(checkpoint{Flavor: info.flavor, GTIDSet: head.gtid, File: head.file, Pos: head.pos, Position: from})
	return from, nil
}

// prepare connects, checks the server and reads the binlog head.
func (r *Reader) prepare(ctx context.Context) (*serverInfo, binlogHead, error) {
	c, err := connect(ctx, r.dsn)
	if err != nil {
		return nil, binlogHead{}, err
	}
	defer c.Close()
	info, err := inspect(c)
	if err != nil {
		return nil, binlogHead{}, err
	}
	var fatal []string
	for _, f := range info.serverFindings(r.dsn) {
		if f.Severity == cdc.Error {
			fatal = append(fatal, f.Message+"; fix: "+f.Fix)
		} else {
			r.log.Warn("mysql: "+f.Message, "fix", f.Fix)
		}
	}
	if len(fatal) > 0 {
		return nil, binlogHead{}, fmt.Errorf("%w: %s", ErrConfig, strings.Join(fatal, "; "))
	}
	head, err := readHead(c, info)
	if err != nil {
		return nil, binlogHead{}, err
	}
	return info, head, nil
}

// continuityLost reports whether err means the binlog the reader needs is
// gone (purged, or a GTID the server never had).
func continuityLost(err error) (string, bool) {
	if err == nil || errCode(err) != gomysql.ER_MASTER_FATAL_ERROR_READING_BINLOG {
		return "", false
	}
	msg := err.Error()
	if strings.Contains(msg, "server_id") || strings.Contains(msg, "server_uuid") || strings.Contains(msg, "server id") {
		return "", false // another replica with our id: not a loss
	}
	return "binlog purged or unknown to the server: " + msg, true
}

func (r *Reader) syncerConfig(info *serverInfo) replication.BinlogSyncerConfig {
	return replication.BinlogSyncerConfig{
		ServerID:              r.cfg.ServerID,
		Flavor:                info.flavor,
		Host:                  r.dsn.Host,
		Port:                  uint16(r.dsn.Port),
		User:                  r.dsn.User,
		Password:              r.dsn.Password,
		Charset:               "utf8mb4",
		RenderJSONAsMySQLText: true,       // JSON columns that a rule reads (jsonRows)
		RowsEventDecodeFunc:   decodeRows, // row images are decoded by the reader
		HeartbeatPeriod:       r.cfg.Heartbeat,
		ReadTimeout:           r.cfg.ReadTimeout,
		DisableRetrySync:      true, // we reconnect ourselves, from the last delivered commit
		FillZeroLogPos:        info.mariadb(),
		EventCacheCount:       256,
		Logger:                slog.New(quietHandler{r.log.Handler()}),
	}
}

// replicate runs one binlog connection until it fails or ctx ends.
// connected says whether the server accepted the start point and sent
// events (the backoff resets then).
func (r *Reader) replicate(ctx context.Context, h cdc.Handler, info *serverInfo, resumed *bool, resumeFrom cdc.Position) (connected bool, err error) {
	r.streams.Add(1)
	syncer := replication.NewBinlogSyncer(r.syncerConfig(info))
	defer syncer.Close()
	st := &r.st
	st.resetConnection()
	var s *replication.BinlogStreamer
	if st.gset != nil && !st.gset.IsEmpty() {
		s, err = syncer.StartSyncGTID(st.gset.Clone())
	} else {
		s, err = syncer.StartSync(gomysql.Position{Name: st.file, Pos: st.pos})
	}
	if err != nil {
		return false, fmt.Errorf("mysql: start binlog dump: %w", err)
	}
	streaming := func() {
		r.ready.Store(true)
		if *resumed {
			return
		}
		*resumed = true
		// The head read at start is a position this stream will reach: a
		// client whose cursor lies between the resume point and it (a
		// crash left the checkpoint behind the events it received) waits
		// for its events instead of getting a reset. Reported before
		// Resumed, which lets waiting clients in.
		r.progress(h, r.st.startEnd)
		h.Resumed(resumeFrom)
	}
	sawPreamble := false
	for {
		wait := time.Duration(0)
		if sawPreamble && !r.ready.Load() {
			wait = preambleQuiet
		}
		ev, err := nextEvent(ctx, s, wait)
		if errors.Is(err, errQuiet) {
			// The preamble, then silence: the server accepted the start
			// point and waits for commits (a quiet database would
			// otherwise keep clients waiting for the first heartbeat).
			// Should it refuse the start point after all, the refusal is
			// a loss of continuity like any other: every client gets a
			// reset.
			streaming()
			continue
		}
		if err != nil {
			return connected, err
		}
		if preamble(ev) {
			sawPreamble = true
		} else if !connected {
			// Streaming for real: the server found our start point (it
			// reports a purged one after the preamble).
			connected = true
			streaming()
		}
		if err := r.handle(ctx, h, ev, 0); err != nil {
			return connected, err
		}
	}
}

// preambleQuiet is how long a dump that has sent its preamble stays
// silent before the reader counts it as streaming.
const preambleQuiet = 200 * time.Millisecond

// errQuiet is nextEvent's answer when nothing came within its wait.
var errQuiet = errors.New("mysql: no event yet")

// nextEvent is s.GetEvent, waiting at most wait when that is positive.
func nextEvent(ctx context.Context, s *replication.BinlogStreamer, wait time.Duration) (*replication.BinlogEvent, error) {
	if wait <= 0 {
		return s.GetEvent(ctx)
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	ev, err := s.GetEvent(wctx)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return nil, errQuiet // not an error the server sent: that stays the stream's
	}
	return ev, err
}

// errText is err's message without the stack trace that go-mysql's
// errors append.
func errText(err error) string {
	msg, _, _ := strings.Cut(err.Error(), "\n")
	return msg
}

// preamble reports the events a server sends when a dump starts, before
// it has checked the start position.
func preamble(ev *replication.BinlogEvent) bool {
	switch ev.Event.(type) {
	case *replication.RotateEvent:
		return ev.Header.Flags&replication.LOG_EVENT_ARTIFICIAL_F != 0 || ev.Header.Timestamp == 0
	case *replication.FormatDescriptionEvent, *replication.PreviousGTIDsEvent,
		*replication.MariadbGTIDListEvent, *replication.MariadbBinlogCheckPointEvent:
		return true
	}
	return false
}

// quietHandler lowers go-mysql's own logging to Debug: the reader logs
// what matters (reconnects, losses) itself.
type quietHandler struct{ h slog.Handler }

func (q quietHandler) Enabled(ctx context.Context, _ slog.Level) bool {
	return q.h.Enabled(ctx, slog.LevelDebug)
}

func (q quietHandler) Handle(ctx context.Context, rec slog.Record) error {
	rec.Level = slog.LevelDebug
	return q.h.Handle(ctx, rec)
}

func (q quietHandler) WithAttrs(as []slog.Attr) slog.Handler { return quietHandler{q.h.WithAttrs(as)} }
func (q quietHandler) WithGroup(n string) slog.Handler       { return quietHandler{q.h.WithGroup(n)} }
