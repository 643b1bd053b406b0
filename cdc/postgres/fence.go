package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/internal/backoff"
)

// DefaultFenceTimeout bounds WaitVisible.
const DefaultFenceTimeout = time.Second

// The fence polls while a transaction is still in progress: the walsender
// sends a commit once its WAL is flushed, and the committing backend leaves
// the proc array (becomes visible) microseconds to milliseconds later.
const (
	fencePollMin = 200 * time.Microsecond
	fencePollMax = 2 * time.Millisecond
)

const codeUndefinedFunction = "42883"

// errFenceUnusable: the fence cannot prove anything now (the reader is not
// running, or the role may not read the snapshot); WaitVisible returns at
// once instead of polling.
var errFenceUnusable = errors.New("visibility cannot be proven now")

var _ cdc.Fence = (*Reader)(nil)

// fence proves visibility on a normal (non-replication) connection of its
// own: connected on first use, redialled with backoff after a failure,
// closed when Run ends. One query per attempt covers the whole batch.
type fence struct {
	r *Reader

	mu      sync.Mutex
	running bool
	conn    *pgx.Conn
	legacy  bool            // before PostgreSQL 13: txid_current_snapshot()
	retry   backoff.Backoff // between failed connects
	retryAt time.Time
	refused bool // the role may not read the snapshot (until retryAt)
	warned  bool
	queries atomic.Uint64 // snapshot queries sent (tests)
}

// open allows connecting; Run calls it when it starts.
func (f *fence) open() {
	f.mu.Lock()
	f.running = true
	f.retry = backoff.Backoff{Min: f.r.cfg.BackoffMin, Max: f.r.cfg.BackoffMax}
	f.retryAt, f.refused = time.Time{}, false
	f.mu.Unlock()
}

// close drops the connection; WaitVisible fails until the next open.
func (f *fence) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running = false
	f.dropLocked()
}

func (f *fence) dropLocked() {
	if f.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = f.conn.Close(ctx)
		cancel()
		f.conn = nil
	}
}

// WaitVisible returns nil once a fresh snapshot on the database sees every
// transaction in cs: its xid is below the snapshot's xmax and not in
// progress. One `SELECT pg_current_snapshot()` answers for the whole batch;
// it is repeated while some transaction is still in progress. After the
// fence timeout (Config.FenceTimeout) it returns an error wrapping
// cdc.ErrNotVisible; when ctx ends, ctx.Err().
func (r *Reader) WaitVisible(ctx context.Context, cs []cdc.Commit) error {
	xids := make([]uint32, 0, len(cs))
	for _, c := range cs {
		if c.Xid != 0 {
			xids = append(xids, uint32(c.Xid))
		}
	}
	if len(xids) == 0 {
		return nil
	}
	f := &r.fence
	f.mu.Lock()
	defer f.mu.Unlock()
	deadline := time.Now().Add(r.cfg.FenceTimeout)
	wait := fencePollMin
	var lastErr error
	pending := len(xids)
	for {
		snap, err := f.snapshotLocked(ctx, deadline)
		if errors.Is(err, errFenceUnusable) {
			return fmt.Errorf("postgres: visibility fence: %w: %w", cdc.ErrNotVisible, err)
		}
		if err == nil {
			if pending = snap.countInvisible(xids); pending == 0 {
				return nil
			}
		} else {
			lastErr = err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		now := time.Now()
		if !now.Before(deadline) {
			return f.notVisible(pending, len(xids), lastErr)
		}
		next := now.Add(wait)
		if f.conn == nil && f.retryAt.After(next) {
			next = f.retryAt
		}
		if next.After(deadline) {
			next = deadline
		}
		if !sleepUntil(ctx, next) {
			return ctx.Err()
		}
		wait = min(2*wait, fencePollMax)
	}
}

func (f *fence) notVisible(pending, total int, lastErr error) error {
	if lastErr != nil && pending == total {
		return fmt.Errorf("postgres: visibility fence: %w after %s: %w", cdc.ErrNotVisible, f.r.cfg.FenceTimeout, lastErr)
	}
	return fmt.Errorf("postgres: visibility fence: %w: %d of %d transactions still in progress after %s", cdc.ErrNotVisible, pending, total, f.r.cfg.FenceTimeout)
}

// snapshotLocked reads the current snapshot, connecting first when needed.
func (f *fence) snapshotLocked(ctx context.Context, deadline time.Time) (pgSnapshot, error) {
	if !f.running {
		return pgSnapshot{}, fmt.Errorf("%w: the reader is not running", errFenceUnusable)
	}
	qctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if f.conn == nil {
		if time.Now().Before(f.retryAt) {
			if f.refused {
				return pgSnapshot{}, fmt.Errorf("%w: pg_current_snapshot() refused", errFenceUnusable)
			}
			return pgSnapshot{}, errors.New("fence connection: waiting to reconnect")
		}
		conn, err := f.r.connectSQL(qctx)
		if err != nil {
			f.failed()
			return pgSnapshot{}, fmt.Errorf("fence connection: %w", err)
		}
		f.conn = conn
	}
	q := `SELECT pg_current_snapshot()::text`
	if f.legacy {
		q = `SELECT txid_current_snapshot()::text`
	}
	var text string
	f.queries.Add(1)
	err := f.conn.QueryRow(qctx, q).Scan(&text)
	if err != nil && pgCode(err) == codeUndefinedFunction && !f.legacy {
		f.legacy = true
		err = f.conn.QueryRow(qctx, `SELECT txid_current_snapshot()::text`).Scan(&text)
	}
	if err != nil {
		// A cancelled or timed-out query leaves the connection unusable.
		f.dropLocked()
		f.failed()
		if pgCode(err) == codeInsufficientPriv {
			// Revoked from PUBLIC: publish unproven at once (counted)
			// instead of timing out on every batch; look again in a minute.
			f.retryAt = time.Now().Add(time.Minute)
			f.refused = true
			if !f.warned {
				f.warned = true
				f.r.log.Error("postgres: the visibility fence may not read the current snapshot: invalidations are published unproven (counted as fence timeouts)",
					logErr, err, "fix", "GRANT EXECUTE ON FUNCTION pg_current_snapshot() TO the tagstream role")
			}
			return pgSnapshot{}, fmt.Errorf("%w: read snapshot: %w", errFenceUnusable, err)
		}
		return pgSnapshot{}, fmt.Errorf("read snapshot: %w", err)
	}
	f.refused = false
	f.retry.Reset()
	return parseSnapshot(text)
}

func (f *fence) failed() {
	f.retryAt = time.Now().Add(f.retry.Next())
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// pgSnapshot is a pg_snapshot: xids as xid8 (epoch << 32 | xid). xmax is
// the first xid not yet assigned; xip lists the ones in progress, sorted.
type pgSnapshot struct {
	xmin, xmax uint64
	xip        []uint64
}

// parseSnapshot parses the text form "xmin:xmax:xip,xip,…".
func parseSnapshot(s string) (pgSnapshot, error) {
	bad := func() (pgSnapshot, error) { return pgSnapshot{}, fmt.Errorf("unexpected snapshot %q", s) }
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return bad()
	}
	var snap pgSnapshot
	var err error
	if snap.xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return bad()
	}
	if snap.xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil || snap.xmax < snap.xmin {
		return bad()
	}
	if parts[2] != "" {
		for x := range strings.SplitSeq(parts[2], ",") {
			v, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				return bad()
			}
			snap.xip = append(snap.xip, v)
		}
		slices.Sort(snap.xip)
	}
	return snap, nil
}

// fullXid extends a 32-bit xid that was assigned before the snapshot to
// its xid8: the one value below xmax with those low 32 bits (xids wrap
// around every 2^32; the epoch counts the wraps).
func (s pgSnapshot) fullXid(xid uint32) (uint64, bool) {
	full := s.xmax&^0xFFFF_FFFF | uint64(xid)
	if full >= s.xmax {
		if s.xmax>>32 == 0 {
			return 0, false // not assigned yet: cannot be a streamed commit
		}
		full -= 1 << 32
	}
	return full, true
}

// visible reports whether a committed transaction is visible to the
// snapshot: assigned before it and not in progress in it.
func (s pgSnapshot) visible(xid uint32) bool {
	full, ok := s.fullXid(xid)
	if !ok {
		return false
	}
	if full < s.xmin {
		return true
	}
	_, inProgress := slices.BinarySearch(s.xip, full)
	return !inProgress
}

func (s pgSnapshot) countInvisible(xids []uint32) int {
	n := 0
	for _, x := range xids {
		if !s.visible(x) {
			n++
		}
	}
	return n
}
