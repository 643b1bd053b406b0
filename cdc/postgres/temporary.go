package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tagstream/tagstream/cdc"
)

// A Temporary reader (Config.Temporary, `tagstream tail`) leaves nothing
// durable behind: its slot is a TEMPORARY one that the server drops when
// the replication connection ends, and it creates or alters no
// publication: one that is missing is a configuration error whose message
// holds the CREATE PUBLICATION statement to run.

// requirePublication is ensurePublication for a Temporary reader: the
// publication must exist.
func (r *Reader) requirePublication(ctx context.Context, conn *pgx.Conn, version int) error {
	pub := r.cfg.Publication
	var one int
	err := conn.QueryRow(ctx, `SELECT 1 FROM pg_publication WHERE pubname = $1`, pub).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("postgres: %w: publication %q does not exist, and a dry run creates nothing durable: run %s; or name an existing publication (--publication)", ErrConfig, pub, r.createPublication(version))
	}
	if err != nil {
		return fmt.Errorf("postgres: read publication: %w", err)
	}
	return nil
}

// createTemporarySlot is ensureSlot for a Temporary reader: a new temporary
// slot at the server's current position, on repl, for every session. A
// second session cannot resume where the first stopped (its slot is gone),
// so h hears Lost.
func (r *Reader) createTemporarySlot(ctx context.Context, repl *pgconn.PgConn, h cdc.Handler) (pglogrepl.LSN, error) {
	again := r.haveSlot
	if again && !r.lostTemporary {
		reason := fmt.Sprintf("temporary replication slot %q ended with its connection: changes since may be missing", r.cfg.Slot)
		if err := h.Lost(ctx, reason); err != nil {
			return 0, errHandler{fmt.Errorf("postgres: %w: %s: %w", cdc.ErrContinuityLost, reason, err)}
		}
		r.lostTemporary = true // once per lost slot, not per attempt to replace it
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, repl, r.cfg.Slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true, Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT"})
	if err != nil {
		switch pgCode(err) {
		case codeInsufficientPriv:
			return 0, fmt.Errorf("postgres: create temporary replication slot: %w: %w", ErrConfig, err)
		case codeDuplicateObject:
			if again {
				// The previous connection's slot: the server drops it
				// once that walsender has exited.
				return 0, fmt.Errorf("postgres: create temporary replication slot: the previous one is not dropped yet: %w", err)
			}
			return 0, fmt.Errorf("postgres: create temporary replication slot: %w: slot %q exists: pick another name", ErrConfig, r.cfg.Slot)
		}
		return 0, fmt.Errorf("postgres: create temporary replication slot: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return 0, fmt.Errorf("postgres: create temporary replication slot: consistent point %q: %w", res.ConsistentPoint, err)
	}
	r.haveSlot, r.lostTemporary = true, false
	r.log.Info("created temporary replication slot", logSlot, r.cfg.Slot, logLSN, lsn.String())
	return lsn, nil
}
