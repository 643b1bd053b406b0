package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/internal/backoff"
)

// ReaderConfig configures a Reader.
type ReaderConfig struct {
	URL    string // redis://…
	Stream string // default DefaultStream
	// Block bounds each blocking read; the epoch and the writer's lease
	// are checked at least this often (default 1 s).
	Block time.Duration
	// Count bounds the entries of one read (default 1024).
	Count  int64
	Logger *slog.Logger
}

// Reader is the cdc.Source of an edge node: it reads the stream with
// blocking reads and commits each entry's transaction, already tagged, to
// its handler (a pipeline without rules: the hub and the edge's sinks).
// After a reconnect it goes on from the last id it read. It turns a lost
// history into Lost: a new epoch (the broker restarted empty), a broken
// chain of entries (trimmed or deleted past its cursor), a reset appended
// by the writer.
type Reader struct {
	cfg    ReaderConfig
	client *redis.Client
	keys   keys
	log    *slog.Logger

	// The reader's goroutine only.
	epoch  string // "" before the first read of a history
	lastID string // last entry handled, "" at the start of a history
	began  bool   // the handler got its first Resumed

	reading    atomic.Bool  // connected and reading
	writerSeen atomic.Int64 // UnixNano when the lease was last seen held
	entries    atomic.Uint64
	lost       atomic.Uint64
}

// ReaderStats are a Reader's figures.
type ReaderStats struct {
	Reading      bool   // connected and reading the stream
	WriterActive bool   // a writer held the lease recently
	Entries      uint64 // entries read
	HistoryLost  uint64 // times continuity was lost (new epoch, gap, reset entry)
}

// Stats returns the current figures.
func (r *Reader) Stats() ReaderStats {
	seen := r.writerSeen.Load()
	return ReaderStats{
		Reading:      r.reading.Load(),
		WriterActive: seen != 0 && time.Since(time.Unix(0, seen)) < writerWindow+r.cfg.Block,
		Entries:      r.entries.Load(),
		HistoryLost:  r.lost.Load(),
	}
}

var _ cdc.Source = (*Reader)(nil)

// NewReader validates cfg; it connects lazily.
func NewReader(cfg ReaderConfig) (*Reader, error) {
	if cfg.Stream == "" {
		cfg.Stream = DefaultStream
	}
	if cfg.Block <= 0 {
		cfg.Block = time.Second
	}
	if cfg.Count <= 0 {
		cfg.Count = 1024
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := newClient(cfg.URL, cfg.Block+5*time.Second)
	if err != nil {
		return nil, err
	}
	return &Reader{cfg: cfg, client: c, keys: keysFor(cfg.Stream), log: log}, nil
}

// writerWindow: the writer counts as active when its lease was seen held
// this recently.
const writerWindow = 5 * time.Second

// Ready reports whether the reader is reading the broker and a writer held
// the lease recently (for /readyz).
func (r *Reader) Ready() bool {
	s := r.Stats()
	return s.Reading && s.WriterActive
}

// Ack does nothing: the broker keeps its stream for every edge, so there
// is nothing to tell it what one edge's sinks accepted.
func (r *Reader) Ack(cdc.Position) {}

// Close closes the connections.
func (r *Reader) Close() error { return r.client.Close() }

// errNoHistory: the broker has no epoch yet (no writer since it started).
var errNoHistory = errors.New("broker: no history yet (no writer has appended since the broker started)")

// Run reads until ctx ends, reconnecting with backoff.
func (r *Reader) Run(ctx context.Context, h cdc.Handler) error {
	bo := backoff.Backoff{Min: 50 * time.Millisecond, Max: 5 * time.Second}
	for ctx.Err() == nil {
		err := r.session(ctx, h, bo.Reset)
		r.reading.Store(false)
		if ctx.Err() != nil {
			break
		}
		if err == nil {
			continue // a new history: read it from its start at once
		}
		d := bo.Next()
		if errors.Is(err, errNoHistory) {
			r.log.Debug("broker: waiting for a writer", logErr, err)
		} else {
			r.log.Warn("broker: read failed; reconnecting", logErr, err, "retry_in", d)
		}
		backoff.Sleep(ctx, d)
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	h.Drain(dctx)
	return nil
}

// session reads one connection's worth; it returns on an error, or nil
// when the history changed and reading must start again from its start.
func (r *Reader) session(ctx context.Context, h cdc.Handler, connected func()) error {
	if err := r.checkEpoch(ctx, h); err != nil {
		return err
	}
	connected()
	if !r.began && r.lastID == "" {
		n, err := r.client.XLen(ctx, r.keys.stream).Result()
		if err != nil {
			return err
		}
		if n == 0 { // nothing to judge a cursor by but an empty history
			r.began = true
			h.Resumed(0)
		}
	}
	r.reading.Store(true)
	lastCheck := time.Now()
	for {
		start := r.lastID
		if start == "" {
			start = "0"
		}
		res, err := r.client.XRead(ctx, &redis.XReadArgs{
			Streams: []string{r.keys.stream, start},
			Count:   r.cfg.Count,
			Block:   r.cfg.Block,
		}).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		for _, s := range res {
			for _, m := range s.Messages {
				same, err := r.handle(ctx, h, m)
				if err != nil {
					return err
				}
				if !same {
					return nil // a new history: read it from its start
				}
			}
		}
		if errors.Is(err, redis.Nil) || time.Since(lastCheck) >= r.cfg.Block {
			lastCheck = time.Now()
			before := r.epoch
			if err := r.checkEpoch(ctx, h); err != nil {
				return err
			}
			if r.epoch != before {
				return nil // the history changed
			}
		}
	}
}

// checkEpoch reads the epoch and whether a writer holds the lease. A
// changed or vanished epoch resets the handler's clients.
func (r *Reader) checkEpoch(ctx context.Context, h cdc.Handler) error {
	var epoch, lease *redis.StringCmd
	_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		epoch = p.Get(ctx, r.keys.epoch)
		lease = p.Get(ctx, r.keys.lease)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	if lease.Err() == nil {
		r.writerSeen.Store(time.Now().UnixNano())
	}
	ep := epoch.Val()
	if ep == r.epoch && ep != "" {
		return nil
	}
	if r.epoch != "" {
		r.newHistory(ctx, h, "the broker lost its history (restarted without persistence, or its stream was deleted): events may be missing")
	}
	r.epoch = ep
	if ep == "" {
		return errNoHistory
	}
	r.log.Info("broker: reading history", logEpoch, ep, logStream, r.keys.stream)
	return nil
}

// newHistory resets the clients; the reader then reads the stream from
// its start.
func (r *Reader) newHistory(ctx context.Context, h cdc.Handler, reason string) {
	r.log.Warn("broker: continuity lost: every client gets a reset", logReason, reason)
	r.lost.Add(1)
	_ = h.Lost(ctx, reason)
	r.epoch, r.lastID = "", ""
}

// entry is a stream entry decoded.
type entry struct {
	id, kind, epoch, prev, reason string
	pos                           cdc.Position
	ts                            time.Time
	tags                          []string
}

func decode(m redis.XMessage) (entry, error) {
	str := func(k string) string { s, _ := m.Values[k].(string); return s }
	e := entry{id: m.ID, kind: str("k"), epoch: str("e"), prev: str("p"), reason: str("r")}
	var err error
	if e.pos, err = idPosition(m.ID); err != nil {
		return e, err
	}
	if ts := str("ts"); ts != "" && ts != "0" {
		n, err := strconv.ParseInt(ts, 10, 64)
		if err != nil {
			return e, fmt.Errorf("broker: entry %s: ts %q", m.ID, ts)
		}
		e.ts = time.Unix(0, n)
	}
	if g := str("g"); g != "" && g != "[]" {
		if err := json.Unmarshal([]byte(g), &e.tags); err != nil {
			return e, fmt.Errorf("broker: entry %s: tags: %w", m.ID, err)
		}
	}
	return e, nil
}

// floorOf is the position after which the stream is complete, judged
// from its first entry read: the entry before it when known, else itself.
func floorOf(e entry) cdc.Position {
	if e.prev != "" {
		if p, err := idPosition(e.prev); err == nil {
			return p
		}
	}
	return e.pos
}

// handle passes one entry on. It reports false when the entry belongs to
// another history (the reader must start again from the stream's start).
func (r *Reader) handle(ctx context.Context, h cdc.Handler, m redis.XMessage) (bool, error) {
	e, err := decode(m)
	if err != nil {
		// Not tagstream's (someone else wrote to the key): what it meant is
		// unknown, so every client resets, and reading goes on after it.
		reason := fmt.Sprintf("unreadable broker entry: %v", err)
		r.log.Error("broker: continuity lost: every client gets a reset", logReason, reason)
		r.lost.Add(1)
		if err := h.Lost(ctx, reason); err != nil {
			return false, err
		}
		r.lastID = m.ID
		h.Resumed(e.pos)
		return true, nil
	}
	if e.epoch != r.epoch {
		r.newHistory(ctx, h, "the broker's history was replaced: events may be missing")
		return false, nil
	}
	switch {
	case r.lastID == "":
		r.began = true
		h.Resumed(floorOf(e))
	case e.prev != r.lastID:
		reason := fmt.Sprintf("the broker's stream has a gap after %s (trimmed or deleted): events may be missing", r.lastID)
		r.log.Warn("broker: continuity lost: every client gets a reset", logReason, reason)
		r.lost.Add(1)
		if err := h.Lost(ctx, reason); err != nil {
			return false, err
		}
		h.Resumed(floorOf(e))
	}
	r.lastID = e.id
	r.entries.Add(1)
	switch e.kind {
	case kindReset:
		r.lost.Add(1)
		if err := h.Lost(ctx, e.reason); err != nil {
			return false, err
		}
		h.Resumed(e.pos)
	default: // a commit; a floor is an empty one
		if err := h.Commit(ctx, tagged(e.tags), cdc.Commit{Position: e.pos, Time: e.ts}); err != nil {
			return false, err
		}
	}
	return true, nil
}

// tagged is a transaction that arrives with its tags.
type tagged []string

func (t tagged) Add(*cdc.Change) {}
func (t tagged) Merge(cdc.Tx)    {}
func (t tagged) Tags() []string  { return t }
