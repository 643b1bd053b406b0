package mysql

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/internal/backoff"
)

// DefaultFenceTimeout bounds WaitVisible.
const DefaultFenceTimeout = time.Second

// The binlog is written (and sent to replicas) before the storage engine
// commits: the fence polls until the engine commit is proven.
const (
	fencePollMin = 200 * time.Microsecond
	fencePollMax = 2 * time.Millisecond
)

var _ cdc.Fence = (*Reader)(nil)

// errFenceUnusable: the fence cannot prove anything now; WaitVisible
// returns at once instead of polling.
var errFenceUnusable = errors.New("visibility cannot be proven on this server")

type fenceMode uint8

const (
	fenceUnknown fenceMode = iota
	// MariaDB: Binlog_snapshot_file/position is the binlog position of the
	// last transaction whose engine commit (commit_ordered) has run, read
	// under the lock those commits hold.
	fenceMariaDB
	// MySQL: @@GLOBAL.gtid_executed gains a GTID only after the engine
	// commit of its transaction.
	fenceGTID
	fenceUnsupported
)

// fence proves engine commits on a connection of its own: connected on
// first use, redialled with backoff after a failure, closed when Run ends.
// One query per attempt covers the whole batch.
type fence struct {
	r *Reader

	mu      sync.Mutex
	running bool
	conn    *client.Conn
	mode    fenceMode
	why     string // fenceUnsupported: the reason and its fix
	warned  bool
	retry   backoff.Backoff // between failed connects
	retryAt time.Time
	// The header end of the newest binlog file the status named (MariaDB).
	hdrSeq  uint64
	hdrEnd  uint64
	queries atomic.Uint64 // probe queries sent (tests)
}

func (f *fence) open() {
	f.mu.Lock()
	f.retry = backoff.Backoff{Min: f.r.cfg.BackoffMin, Max: f.r.cfg.BackoffMax}
	f.running, f.retryAt, f.mode = true, time.Time{}, fenceUnknown
	f.mu.Unlock()
}

func (f *fence) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running = false
	f.dropLocked()
}

func (f *fence) dropLocked() {
	if f.conn != nil {
		f.conn.Close()
		f.conn = nil
	}
}

func (f *fence) failed() {
	f.retryAt = time.Now().Add(f.retry.Next())
}

// WaitVisible returns nil once the storage engine has committed every
// transaction in cs, so that a fresh read sees them. One query per attempt
// covers the batch (MariaDB: SHOW GLOBAL STATUS LIKE 'Binlog_snapshot_%';
// MySQL: GTID_SUBSET against @@GLOBAL.gtid_executed), repeated while the
// commit is still under way. After the fence timeout (Config.FenceTimeout),
// or at once where the server offers no proof (MySQL without GTIDs), it
// returns an error wrapping cdc.ErrNotVisible; when ctx ends, ctx.Err().
func (r *Reader) WaitVisible(ctx context.Context, cs []cdc.Commit) error {
	if len(cs) == 0 {
		return nil
	}
	target := cs[0].Position
	for _, c := range cs[1:] {
		target = max(target, c.Position)
	}
	f := &r.fence
	f.mu.Lock()
	defer f.mu.Unlock()
	deadline := time.Now().Add(r.cfg.FenceTimeout)
	wait := fencePollMin
	var lastErr error
	for {
		ok, err := f.probeLocked(ctx, deadline, target)
		switch {
		case ok:
			return nil
		case errors.Is(err, errFenceUnusable):
			return fmt.Errorf("mysql: visibility fence: %w: %w", cdc.ErrNotVisible, err)
		case err != nil:
			lastErr = err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		now := time.Now()
		if !now.Before(deadline) {
			if lastErr != nil {
				return fmt.Errorf("mysql: visibility fence: %w after %s: %v", cdc.ErrNotVisible, r.cfg.FenceTimeout, errText(lastErr))
			}
			return fmt.Errorf("mysql: visibility fence: %w: position %d not committed in the engine after %s", cdc.ErrNotVisible, target, r.cfg.FenceTimeout)
		}
		next := now.Add(wait)
		if f.conn == nil && f.retryAt.After(next) {
			next = f.retryAt
		}
		if next.After(deadline) {
			next = deadline
		}
		if !backoff.Sleep(ctx, time.Until(next)) {
			return ctx.Err()
		}
		wait = min(2*wait, fencePollMax)
	}
}

// probeLocked asks the server once whether target is committed in the
// engine, connecting first when needed.
func (f *fence) probeLocked(ctx context.Context, deadline time.Time, target cdc.Position) (bool, error) {
	if !f.running {
		return false, fmt.Errorf("%w: the reader is not running", errFenceUnusable)
	}
	if f.conn == nil {
		now := time.Now()
		if now.Before(f.retryAt) {
			if f.mode == fenceUnsupported {
				return false, fmt.Errorf("%w: %s", errFenceUnusable, f.why)
			}
			return false, errors.New("fence connection: waiting to reconnect")
		}
		if err := f.connectLocked(ctx, deadline); err != nil {
			f.failed()
			return false, err
		}
		if f.mode == fenceUnsupported {
			f.dropLocked()
			f.retryAt = now.Add(time.Minute) // settings may change; look again later
			return false, fmt.Errorf("%w: %s", errFenceUnusable, f.why)
		}
	}
	_ = f.conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = f.conn.SetDeadline(time.Unix(1, 0)) })
	f.queries.Add(1)
	var ok bool
	var err error
	if f.mode == fenceMariaDB {
		ok, err = f.mariadbCommitted(target)
	} else {
		ok, err = f.gtidCommitted(target)
	}
	if !stop() || err != nil {
		// A query cut short leaves the connection unusable.
		f.dropLocked()
		f.failed()
		if err != nil && !errors.Is(err, errFenceUnusable) && errCode(err) != 0 && f.refused(err) {
			return false, fmt.Errorf("%w: %s", errFenceUnusable, f.why)
		}
		return false, err
	}
	f.retry.Reset()
	return ok, nil
}

// connectLocked dials and finds out how this server proves commits.
func (f *fence) connectLocked(ctx context.Context, deadline time.Time) error {
	d := f.r.dsn
	c, err := client.ConnectWithContext(ctx, d.Addr(), d.User, d.Password, "", time.Until(deadline))
	if err != nil {
		return fmt.Errorf("fence connection: %w", err)
	}
	f.conn = c
	_ = c.SetDeadline(deadline)
	mode, why, err := detectFence(c)
	_ = c.SetDeadline(time.Time{})
	if err != nil {
		f.dropLocked()
		return fmt.Errorf("fence connection: %w", err)
	}
	f.mode, f.why = mode, why
	if mode == fenceUnsupported && !f.warned {
		f.warned = true
		f.r.log.Warn("mysql: the visibility fence cannot prove engine commits on this server: invalidations are published unproven (counted as fence timeouts)", "why", why)
	}
	return nil
}

// detectFence chooses the proof this server offers.
func detectFence(c *client.Conn) (fenceMode, string, error) {
	if strings.Contains(strings.ToLower(c.GetServerVersion()), "mariadb") {
		v, err := queryStrings(c, "SELECT @@global.binlog_optimize_thread_scheduling")
		switch {
		case err != nil && errCode(err) == gomysql.ER_UNKNOWN_SYSTEM_VARIABLE:
		case err != nil:
			return fenceUnknown, "", err
		case v[0] == "0":
			return fenceUnsupported, "binlog_optimize_thread_scheduling is OFF: each transaction of a group commit then commits in its own thread, and the binlog snapshot position can run ahead of them; fix: remove binlog_optimize_thread_scheduling from the server configuration (it defaults to ON)", nil
		}
		return fenceMariaDB, "", nil
	}
	v, err := queryStrings(c, "SELECT @@global.gtid_mode")
	if err != nil {
		return fenceUnknown, "", err
	}
	if !strings.EqualFold(v[0], "ON") {
		return fenceUnsupported, "gtid_mode is " + v[0] + ": MySQL shows an engine commit only as its GTID in @@global.gtid_executed; fix: SET GLOBAL enforce_gtid_consistency = ON, then SET GLOBAL gtid_mode = OFF_PERMISSIVE, ON_PERMISSIVE, ON (one step at a time)", nil
	}
	return fenceGTID, "", nil
}

// refused reports a probe denied for lack of a grant: the fence then
// publishes unproven at once (counted) instead of timing out on every batch,
// says so once, and tries again in a minute.
func (f *fence) refused(err error) bool {
	switch errCode(err) {
	case gomysql.ER_SPECIFIC_ACCESS_DENIED_ERROR, gomysql.ER_ACCESS_DENIED_ERROR, gomysql.ER_DBACCESS_DENIED_ERROR, gomysql.ER_TABLEACCESS_DENIED_ERROR:
	default:
		return false
	}
	f.mode, f.why = fenceUnsupported, "refused: "+errText(err)+"; fix: GRANT BINLOG MONITOR ON *.* TO the tagstream user (MariaDB, for SHOW BINLOG EVENTS)"
	f.retryAt = time.Now().Add(time.Minute)
	if !f.warned {
		f.warned = true
		f.r.log.Error("mysql: the visibility fence was refused a query: invalidations are published unproven (counted as fence timeouts)", logErr, f.why)
	}
	return true
}

// mariadbCommitted compares target with the binlog position of the last
// transaction that the engine has committed.
func (f *fence) mariadbCommitted(target cdc.Position) (bool, error) {
	res, err := f.conn.Execute(`SHOW GLOBAL STATUS LIKE 'Binlog\_snapshot\_%'`)
	if err != nil {
		return false, err
	}
	var file string
	var off uint64
	for i := range res.RowNumber() {
		name, _ := res.GetString(i, 0)
		val, _ := res.GetString(i, 1)
		switch strings.ToLower(name) {
		case "binlog_snapshot_file":
			file = strings.Clone(val)
		case "binlog_snapshot_position":
			_, err = fmt.Sscan(val, &off)
		}
	}
	res.Close()
	seq := fileSeq(file)
	if seq == 0 || err != nil {
		return false, fmt.Errorf("%w: Binlog_snapshot_file %q, Binlog_snapshot_position %d", errFenceUnusable, file, off)
	}
	tseq, toff := uint64(target)>>32, uint64(target)&0xFFFF_FFFF
	switch {
	case seq < tseq:
		return false, nil
	case seq == tseq:
		return off >= toff, nil
	case seq > tseq+1:
		return true, nil
	}
	// The group commit that rotates the binlog names the new file (at its
	// header's end) before the engine has committed that group's
	// transactions, which are in the previous file. Any later position in
	// the new file proves them.
	hdr, err := f.headerEnd(file, seq)
	if err != nil {
		return false, err
	}
	return off > hdr, nil
}

// headerEnd is where the first transaction of a binlog file may start:
// after its format description, GTID list and binlog checkpoint events.
func (f *fence) headerEnd(file string, seq uint64) (uint64, error) {
	if f.hdrSeq == seq {
		return f.hdrEnd, nil
	}
	for _, r := range file {
		if !(r == '.' || r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return 0, fmt.Errorf("%w: binlog file name %q", errFenceUnusable, file)
		}
	}
	res, err := f.conn.Execute("SHOW BINLOG EVENTS IN '" + file + "' LIMIT 6")
	if err != nil {
		return 0, err
	}
	defer res.Close()
	var end uint64
	for i := range res.RowNumber() {
		typ, _ := res.GetString(i, 2)
		if typ != "Format_desc" && typ != "Start_encryption" && typ != "Gtid_list" && typ != "Binlog_checkpoint" {
			break
		}
		if end, err = res.GetUint(i, 4); err != nil {
			return 0, err
		}
	}
	if end == 0 {
		return 0, fmt.Errorf("%w: no header in binlog file %s", errFenceUnusable, file)
	}
	f.hdrSeq, f.hdrEnd = seq, end
	return end, nil
}

// gtidCommitted checks the GTID set up to target against
// @@GLOBAL.gtid_executed.
func (f *fence) gtidCommitted(target cdc.Position) (bool, error) {
	set := f.r.gtidSetAt(target)
	if set == "" {
		return false, fmt.Errorf("%w: no GTID recorded for position %d", errFenceUnusable, target)
	}
	for _, r := range set {
		if !(r == ':' || r == ',' || r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false, fmt.Errorf("%w: GTID set %q", errFenceUnusable, set)
		}
	}
	res, err := f.conn.Execute("SELECT GTID_SUBSET('" + set + "', @@GLOBAL.gtid_executed)")
	if err != nil {
		return false, err
	}
	defer res.Close()
	n, err := res.GetInt(0, 0)
	return n == 1, err
}

// gtidSetAt returns the GTID set recorded with the transaction handed over
// at pos (every transaction up to it), or "" when it is not pending.
func (r *Reader) gtidSetAt(pos cdc.Position) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := sort.Search(len(r.pending), func(i int) bool { return r.pending[i].Position >= pos })
	if i < len(r.pending) && r.pending[i].Position == pos {
		return r.pending[i].GTIDSet
	}
	return ""
}
