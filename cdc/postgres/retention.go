package postgres

import (
	"context"
	"time"
)

// DefaultRetentionInterval is how often the reader reads how much WAL its
// slot holds back.
const DefaultRetentionInterval = 15 * time.Second

// RetainedBytes returns the WAL the slot holds back (pg_current_wal_lsn() -
// restart_lsn) as last read, and false before the first reading.
func (r *Reader) RetainedBytes() (int64, bool) {
	return r.retained.Load(), r.retainedKnown.Load()
}

// watchRetention reads the slot's retained WAL at once and then every
// RetentionInterval, until ctx ends.
func (r *Reader) watchRetention(ctx context.Context, cat *catalog) {
	t := time.NewTicker(r.cfg.RetentionInterval)
	defer t.Stop()
	warned := false
	for {
		qctx, cancel := context.WithTimeout(ctx, r.cfg.RetentionInterval+5*time.Second)
		var retained *int64
		err := cat.queryRow(qctx, `SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1`,
			[]any{r.cfg.Slot}, &retained)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err == nil && retained != nil:
			r.retained.Store(*retained)
			r.retainedKnown.Store(true)
		case err != nil && !warned:
			// e.g. a standby (no pg_current_wal_lsn); the gauge keeps its last value.
			warned = true
			r.log.Warn("cannot read the WAL the replication slot retains", logSlot, r.cfg.Slot, logErr, err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
