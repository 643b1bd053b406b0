// Package cdc holds the domain types shared by tagstream's change readers
// (cdc/postgres, cdc/mysql) and their consumer (the pipeline that turns rows
// into tags with rules.Engine and publishes them to stream.Hub).
//
// A reader delivers each transaction's row changes in order, then its commit;
// aborted work is discarded before it reaches the consumer's published state.
// The consumer turns every change into tags as it arrives (memory stays flat in
// transaction size) and, once the hub has accepted a commit, the pipeline calls
// Source.Ack with its position so the database may forget it.
package cdc

import (
	"context"
	"errors"
	"time"
)

// Op is the kind of a row change.
type Op uint8

const (
	Insert Op = iota + 1
	Update
	Delete
	Truncate
)

// String returns the lower-case name used in rules files ("insert", …).
func (o Op) String() string {
	switch o {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	case Truncate:
		return "truncate"
	}
	return "unknown"
}

// Position orders a source's transactions. It only grows for one source and
// is the SSE event id. Postgres: the transaction's end LSN. MySQL/MariaDB:
// (binlog file sequence << 32) | end position of the commit event.
type Position uint64

// MaxTagLen is the longest tag, or subscription pattern, in bytes: the limit
// of Next.js's cache tags. The rules never emit a longer tag and /events
// refuses a longer entry.
const MaxTagLen = 256

// Kind says what a column of a row image holds.
type Kind uint8

const (
	// Absent: the image does not carry the column (Postgres REPLICA IDENTITY
	// DEFAULT old images, a column outside binlog_row_image, a missing image).
	Absent Kind = iota
	// Null: SQL NULL.
	Null
	// Unchanged: a Postgres TOASTed value that the update did not touch ('u').
	// Its value is unknown but equal in the old and new image.
	Unchanged
	// Text: Value.Text holds the column's canonical text in the source
	// database (Postgres `col::text`; MySQL as docs/rules.md lists).
	Text
)

// Value is one column of a row image. Text is only valid during the call
// that receives it: readers hand over their wire buffers without copying.
type Value struct {
	Kind Kind
	Text []byte
}

// Table describes a relation as the reader currently knows it. Readers reuse
// one *Table for as long as nothing in it changes and create a new one when
// something does (Postgres Relation message, MySQL TABLE_MAP with a different
// layout, a partition attached), so consumers may cache per-*Table work keyed
// by pointer. A Table is never modified once handed out.
type Table struct {
	Schema  string   // Postgres schema or MySQL database
	Name    string   // table name
	Columns []string // column names, in the order of row images
	// Key marks, per column, the columns an update without an old image
	// leaves unchanged: the replica identity key (Postgres logs the old row
	// whenever one of them changes). nil when the reader does not say.
	Key []bool
	// Ancestors are the partitioned tables this table is a partition of,
	// nearest first (Postgres). Rules naming one of them match its changes.
	Ancestors []TableName
	// Partitions are the partitions (at every level) whose changes the
	// source reports under this partitioned table's name (Postgres
	// publish_via_partition_root): the row's own partition is not known, so
	// rules naming any of them match every change of this table.
	Partitions []TableName
}

// TableName is a schema-qualified table name.
type TableName struct{ Schema, Name string }

// Change is one row change. Old and New are indexed like Table.Columns; a nil
// image means the reader has none (insert has no Old; delete no New; truncate
// neither; an update under REPLICA IDENTITY DEFAULT whose key did not change
// has no Old: its Table.Key columns equal New's, the others are unknown).
// A Change and its Values are only valid during the call.
type Change struct {
	Table *Table
	Op    Op
	Old   []Value
	New   []Value
}

// Commit ends a transaction.
type Commit struct {
	Position Position
	Time     time.Time // commit time reported by the database
	// Xid identifies the transaction to the source's visibility fence
	// (Postgres: the xid of Begin / Stream Start); 0 when the source has none.
	Xid uint64
}

// Tx accumulates the effects of one transaction's changes as they arrive.
// Implementations keep bounded memory whatever the number of changes.
type Tx interface {
	// Add turns one change into its effects (tags) now.
	Add(c *Change)
	// Merge absorbs another Tx of the same Handler (a committed
	// subtransaction of a streamed Postgres transaction). Merge(other) leaves
	// other unusable.
	Merge(other Tx)
	// Tags returns the transaction's tags, sorted and de-duplicated; the
	// caller may keep them.
	Tags() []string
}

// Projection is an optional capability of a Tx, found by type assertion:
// which columns its Add reads, so that a reader decodes only those.
type Projection interface {
	// Reads reports, per column of t (indexed like t.Columns), whether Add
	// may read that column of a change to t with op, from now until the
	// transaction ends. A reader may pass every other column as Absent
	// (and skip decoding it): that changes nothing Add produces. nil means
	// every column. The slice belongs to the Tx; callers must not modify it.
	Reads(t *Table, op Op) []bool
}

// Handler consumes what a Source reads. All methods are called from the
// source's goroutine, one at a time.
type Handler interface {
	// Begin starts accumulating a transaction (or a subtransaction that may
	// later be merged or discarded). A Tx that is dropped without Commit is
	// discarded: aborted work never produces tags.
	Begin() Tx
	// Commit publishes tx. It returns nil once the hub accepted it; only then
	// does the pipeline call Source.Ack(c.Position). An error stops the source.
	Commit(ctx context.Context, tx Tx, c Commit) error
	// Resumed reports that the source (re)started streaming and that every
	// transaction after pos will be delivered: the continuity floor.
	Resumed(pos Position)
	// Progress reports the source's current end (Postgres server WAL end,
	// binlog head) so that clients whose cursor lies between the last
	// published position and pos wait instead of getting a reset.
	Progress(end Position)
	// Lost reports that continuity was lost (slot invalidated, binlog
	// purged): every client must get a `reset`. The source then restarts at
	// the database's head and calls Resumed again.
	Lost(ctx context.Context, reason string) error
	// Drain waits until every transaction handed to Commit was accepted
	// downstream (and acknowledged through Source.Ack), or ctx ends. A
	// source calls it when it stops, before its last acknowledgement to
	// the database.
	Drain(ctx context.Context)
}

// Idler is an optional capability of a Handler, found by type assertion:
// a quiet source's position moves without transactions (Postgres: a
// keepalive's WAL end while no transaction is open).
type Idler interface {
	// Idle reports that every transaction ending at or before pos was
	// handed to Commit. The handler passes pos downstream in order with
	// the transactions and acknowledges it (Source.Ack) once every sink
	// has accounted for it, so that the database may forget up to pos and
	// clients' cursors (ping ids) reach pos before a restart resumes there.
	Idle(pos Position)
}

// Source is a change reader for one database. One source per process.
type Source interface {
	// Run reads changes and calls h until ctx is cancelled (then it returns
	// nil after acknowledging what was acked) or an unrecoverable error
	// occurs. Connection losses are retried internally with backoff.
	Run(ctx context.Context, h Handler) error
	// Ack says that every transaction up to and including pos was accepted
	// by the hub and may be forgotten by the database. Safe to call from any
	// goroutine.
	Ack(pos Position)
	// Ready reports whether the source is currently streaming (for /readyz).
	Ready() bool
}

// Fence is an optional capability of a Source, found by type assertion:
// proof that committed transactions are visible to new snapshots on the
// source database. A database may stream a commit before a fresh read sees
// it (Postgres sends it once its WAL is flushed, before the backend leaves
// the proc array; MySQL/MariaDB write the binlog before the engine commit);
// a cache that re-reads at once would keep the old value.
type Fence interface {
	// WaitVisible returns nil once a fresh snapshot sees every commit in cs
	// (consecutive commits in position order), with one round trip for the
	// whole batch plus retries while some are still in progress. It returns
	// an error wrapping ErrNotVisible when that could not be proven within
	// the fence's own timeout (the caller publishes anyway and counts it),
	// and ctx.Err() when ctx ends.
	WaitVisible(ctx context.Context, cs []Commit) error
}

// ErrNotVisible is wrapped by Fence errors that mean visibility could not be
// proven in time.
var ErrNotVisible = errors.New("commit visibility not proven")

// ErrContinuityLost is wrapped by errors that mean changes may have been
// lost (Postgres slot invalidated, MySQL binlog purged, error 1236).
var ErrContinuityLost = errors.New("continuity lost")

// Requirement is what one rule needs from the database; `tagstream check
// --db` hands the rules' requirements to the reader's checker.
type Requirement struct {
	Rule    string   // the rule's name, or "rule N" when unnamed
	Schema  string   // schema pattern (`*` allowed); the default schema already applied
	Table   string   // table pattern (`*` allowed)
	Columns []string // every column the rule reads (placeholders and the columns filter)
	// NeedsOld: the rule reads old values (an update expanded against the old
	// row, {old.col}, or a columns filter), so it is only precise with full
	// old images (REPLICA IDENTITY FULL / binlog_row_image=FULL).
	NeedsOld bool
}

// Severity grades a Finding.
type Severity uint8

const (
	Warning Severity = iota + 1 // works, but less precise or less safe than it could be
	Error                       // cannot work as written
)

func (s Severity) String() string {
	if s == Error {
		return "error"
	}
	return "warning"
}

// Finding is one result of checking rules against a live database.
type Finding struct {
	Severity Severity
	Rule     string // the rule concerned, "" for database-wide findings
	Message  string // what is wrong, in one sentence
	Fix      string // the SQL (or configuration line) that fixes it, "" when none
	// Apply: Fix is one SQL statement that changes only a table or the
	// publication (never the server's configuration or roles), which
	// `tagstream check --db --apply` may run.
	Apply bool
}

// Retention is an optional capability of a Source, found by type assertion:
// how much change log the database keeps because of this reader, for a
// gauge that warns before the database's disk fills up.
type Retention interface {
	// RetainedBytes returns the bytes between the position a restart would
	// resume from and the database's current end (Postgres: WAL the slot
	// holds back, pg_current_wal_lsn() - restart_lsn; MySQL/MariaDB: binlog
	// after the checkpoint), and false while it is not known.
	RetainedBytes() (int64, bool)
}
