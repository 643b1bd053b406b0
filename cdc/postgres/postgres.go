// Package postgres reads committed row changes from PostgreSQL through
// logical replication (the pgoutput plugin) and hands them to a cdc.Handler,
// one transaction at a time, in commit order.
//
// The reader owns a permanent replication slot and a publication (both
// created when missing). A transaction's position is its end LSN; Postgres
// may forget a transaction only once the consumer has acknowledged it with
// Ack, which the reader reports as the slot's flush position. Large
// transactions are streamed while in progress (protocol 2, PostgreSQL ≥ 14):
// their changes are accumulated per transaction and subtransaction and
// published only at stream commit; aborted work is dropped.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/internal/backoff"
)

// Defaults for Config.
const (
	DefaultSlot           = "tagstream"
	DefaultPublication    = "tagstream"
	DefaultStatusInterval = 10 * time.Second
	DefaultBackoffMin     = 500 * time.Millisecond
	DefaultBackoffMax     = 30 * time.Second
)

// drainTimeout bounds how long a stopping reader waits for its handler to
// finish the transactions it was handed (a sink that cannot deliver must
// not hold shutdown): what is not acknowledged by then is re-read at the
// next start.
const drainTimeout = 10 * time.Second

var (
	// ErrConfig is wrapped by errors that no retry can fix: the database or
	// the configuration must change (wal_level, privileges, names). The CLI
	// exits 2 on it.
	ErrConfig = errors.New("configuration error")
	// ErrSlotInUse is wrapped when another process streams from the slot
	// (SQLSTATE 55006). Run retries it.
	ErrSlotInUse = errors.New("replication slot in use")
)

// Log keys.
const (
	logSlot  = "slot"
	logLSN   = "lsn"
	logErr   = "err"
	logRetry = "retry_in"
)

// Config configures a Reader.
type Config struct {
	// DSN is a postgres:// URL; the reader adds replication=database for
	// its streaming connection itself.
	DSN string
	// Slot and Publication name the replication slot and the publication
	// (default "tagstream"): lower-case letters, digits and underscores, at
	// most 63 bytes.
	Slot, Publication string
	// PublicationTables: nil creates the publication FOR ALL TABLES; else
	// exactly these "schema.table" names (a missing schema means public).
	PublicationTables []string
	// HeartbeatInterval: 0 is off; else a transactional
	// pg_logical_emit_message is written this often so that a quiet
	// database's slot keeps advancing.
	HeartbeatInterval time.Duration
	// StatusInterval is the longest time between two standby status updates
	// (default 10s).
	StatusInterval time.Duration
	// BackoffMin and BackoffMax bound the jittered exponential backoff
	// between reconnects (default 500ms and 30s).
	BackoffMin, BackoffMax time.Duration
	// IdleTimeout: when the server sent nothing (not even a keepalive) for
	// this long, the connection is presumed dead and re-established
	// (default max(3×StatusInterval, 30s)). Set alone, it also shortens
	// StatusInterval to a third of it, so that a quiet server is asked for
	// a keepalive in time.
	IdleTimeout time.Duration
	// RetentionInterval is how often the WAL the slot retains is read for
	// RetainedBytes (default 15s).
	RetentionInterval time.Duration
	// FenceTimeout bounds WaitVisible: how long it waits for a fresh
	// snapshot to see a batch of commits (default 1s).
	FenceTimeout time.Duration
	// Temporary makes a dry run that leaves nothing durable (`tagstream
	// tail`): a TEMPORARY slot, dropped by the server when the connection
	// ends, and no publication created or altered (a missing one is an
	// ErrConfig error naming the SQL). Slot must not name an existing slot.
	// Every reconnect starts a new slot at the server's head and reports
	// Lost.
	Temporary bool
	// Logger receives operational logs (default: discarded).
	Logger *slog.Logger
}

// Reader is a cdc.Source for PostgreSQL.
type Reader struct {
	cfg    Config
	tables []qualifiedName
	log    *slog.Logger

	acked    atomic.Uint64
	ready    atomic.Bool
	sessions atomic.Uint64 // connections attempted (Reconnects)

	retained      atomic.Int64 // WAL bytes the slot holds back, last read
	retainedKnown atomic.Bool

	// heartbeatOff is set once the role turned out to lack permission for
	// pg_logical_emit_message: warned once, never retried.
	heartbeatOff atomic.Bool

	// tables by relation OID, kept across connections so that *cdc.Table
	// pointers stay stable while a relation does not change.
	relations map[uint32]*relation
	// haveSlot: this Run has seen the slot; finding it missing afterwards
	// means it was dropped under us (continuity lost).
	haveSlot bool
	// lostTemporary: Lost was reported for a Temporary reader's slot that
	// is not replaced yet.
	lostTemporary bool

	fence fence
}

var (
	_ cdc.Source    = (*Reader)(nil)
	_ cdc.Retention = (*Reader)(nil)
)

// New validates cfg and returns a Reader. It does no I/O.
func New(cfg Config) (*Reader, error) {
	if cfg.DSN == "" {
		return nil, fmt.Errorf("postgres: %w: no DSN", ErrConfig)
	}
	if _, err := pgconn.ParseConfig(cfg.DSN); err != nil {
		return nil, fmt.Errorf("postgres: %w: invalid DSN: %v", ErrConfig, redactErr(err))
	}
	if cfg.Slot == "" {
		cfg.Slot = DefaultSlot
	}
	if cfg.Publication == "" {
		cfg.Publication = DefaultPublication
	}
	if err := validName("slot", cfg.Slot); err != nil {
		return nil, err
	}
	if err := validName("publication", cfg.Publication); err != nil {
		return nil, err
	}
	var tables []qualifiedName
	if cfg.PublicationTables != nil {
		if len(cfg.PublicationTables) == 0 {
			return nil, fmt.Errorf("postgres: %w: publication tables: empty list", ErrConfig)
		}
		for _, t := range cfg.PublicationTables {
			q, err := parseQualified(t)
			if err != nil {
				return nil, err
			}
			tables = append(tables, q)
		}
	}
	if cfg.HeartbeatInterval < 0 || cfg.StatusInterval < 0 || cfg.BackoffMin < 0 || cfg.BackoffMax < 0 || cfg.IdleTimeout < 0 || cfg.RetentionInterval < 0 || cfg.FenceTimeout < 0 {
		return nil, fmt.Errorf("postgres: %w: negative interval", ErrConfig)
	}
	if cfg.StatusInterval == 0 {
		cfg.StatusInterval = DefaultStatusInterval
		if cfg.IdleTimeout > 0 {
			// A quiet server sends nothing until asked: ask (a status
			// update requesting a reply) well before the idle timeout.
			cfg.StatusInterval = min(DefaultStatusInterval, cfg.IdleTimeout/3)
		}
	}
	if cfg.RetentionInterval == 0 {
		cfg.RetentionInterval = DefaultRetentionInterval
	}
	if cfg.BackoffMin == 0 {
		cfg.BackoffMin = DefaultBackoffMin
	}
	if cfg.BackoffMax == 0 {
		cfg.BackoffMax = DefaultBackoffMax
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = cfg.BackoffMin
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = max(3*cfg.StatusInterval, 30*time.Second)
	}
	if cfg.FenceTimeout == 0 {
		cfg.FenceTimeout = DefaultFenceTimeout
	}
	if cfg.IdleTimeout <= cfg.StatusInterval {
		return nil, fmt.Errorf("postgres: %w: idle timeout %s must exceed the status interval %s", ErrConfig, cfg.IdleTimeout, cfg.StatusInterval)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reader{cfg: cfg, tables: tables, log: log.With("source", "postgres"), relations: map[uint32]*relation{}}
	r.fence.r = r
	return r, nil
}

// validName checks a slot or publication name: [a-z0-9_], 1..63 bytes.
func validName(what, s string) error {
	if s == "" || len(s) > 63 {
		return fmt.Errorf("postgres: %w: %s name %q must be 1 to 63 characters", ErrConfig, what, s)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return fmt.Errorf("postgres: %w: %s name %q may only contain a-z, 0-9 and _", ErrConfig, what, s)
		}
	}
	return nil
}

type qualifiedName struct{ Schema, Name string }

func (q qualifiedName) String() string { return q.Schema + "." + q.Name }

// sql renders the name as quoted identifiers.
func (q qualifiedName) sql() string { return quoteIdent(q.Schema) + "." + quoteIdent(q.Name) }

func parseQualified(s string) (qualifiedName, error) {
	schema, name, ok := strings.Cut(s, ".")
	if !ok {
		schema, name = "public", s
	}
	if schema == "" || name == "" || strings.Contains(name, ".") || strings.Contains(s, "*") {
		return qualifiedName{}, fmt.Errorf("postgres: %w: publication table %q: want schema.table", ErrConfig, s)
	}
	return qualifiedName{schema, name}, nil
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func quoteLiteral(s string) string { return `'` + strings.ReplaceAll(s, `'`, `''`) + `'` }

// Ack records that every transaction up to and including pos was accepted;
// the next standby status update reports it as flushed.
func (r *Reader) Ack(pos cdc.Position) {
	for {
		cur := r.acked.Load()
		if uint64(pos) <= cur || r.acked.CompareAndSwap(cur, uint64(pos)) {
			return
		}
	}
}

// Ready reports whether the reader is streaming.
func (r *Reader) Ready() bool { return r.ready.Load() }

// Reconnects counts the connections attempted after the first (a lost
// connection, a busy slot, a server that is down: each retry counts).
func (r *Reader) Reconnects() uint64 { return max(r.sessions.Load(), 1) - 1 }

// errHandler marks an error returned by the handler: it stops Run.
type errHandler struct{ err error }

func (e errHandler) Error() string { return e.err.Error() }
func (e errHandler) Unwrap() error { return e.err }

// Run streams changes to h until ctx is cancelled (it then sends a last
// status update with the acknowledged position and returns nil), the
// handler fails, or the configuration turns out unusable (an error wrapping
// ErrConfig). Connection losses and a busy slot are retried with jittered
// exponential backoff.
func (r *Reader) Run(ctx context.Context, h cdc.Handler) error {
	r.haveSlot = false
	r.fence.open()
	defer r.fence.close()
	bo := backoff.Backoff{Min: r.cfg.BackoffMin, Max: r.cfg.BackoffMax}
	for {
		streamed, err := r.session(ctx, h)
		r.ready.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		var he errHandler
		switch {
		case errors.As(err, &he):
			return he.err
		case errors.Is(err, ErrConfig):
			return err
		}
		if streamed {
			// The session streamed: this is a new failure, retried
			// quickly. One that never gets that far keeps backing off.
			bo.Reset()
		}
		if err == nil {
			continue // the server ended the stream; reconnect at once
		}
		wait := bo.Next()
		if errors.Is(err, ErrSlotInUse) {
			r.log.Warn("replication slot is in use by another process; waiting for it to be released", logSlot, r.cfg.Slot, logErr, err, logRetry, wait)
		} else {
			r.log.Warn("replication stopped; reconnecting", logErr, err, logRetry, wait)
		}
		if !backoff.Sleep(ctx, wait) {
			return nil
		}
	}
}

// redactErr keeps a DSN parse error from echoing a password.
func redactErr(err error) string {
	s := err.Error()
	if i := strings.Index(s, "://"); i >= 0 {
		return "cannot parse the DSN"
	}
	return s
}
