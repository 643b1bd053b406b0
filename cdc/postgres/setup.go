package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tagstream/tagstream/cdc"
)

// SQLSTATE codes the reader branches on.
const (
	codeObjectInUse          = "55006" // slot active for another PID
	codeObjectNotInPrereq    = "55000" // e.g. reading from an invalidated slot
	codeInsufficientPriv     = "42501"
	codeInvalidAuthorization = "28000" // includes "no pg_hba.conf entry"
	codeInvalidPassword      = "28P01"
	codeInvalidCatalog       = "3D000" // database does not exist
	codeUndefinedTable       = "42P01"
	codeUndefinedObject      = "42704"
	codeDuplicateObject      = "42710"
)

const connectTimeout = 15 * time.Second

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// classifyConnect turns connection errors that no retry can fix into
// ErrConfig errors.
func classifyConnect(what string, err error) error {
	switch pgCode(err) {
	case codeInsufficientPriv:
		return fmt.Errorf("postgres: %s: %w: %w (the role needs the REPLICATION attribute: ALTER ROLE <role> WITH REPLICATION;)", what, ErrConfig, err)
	case codeInvalidAuthorization:
		return fmt.Errorf("postgres: %s: %w: %w (allow it in pg_hba.conf, e.g. `host replication <role> <address> scram-sha-256` and `host <db> <role> <address> scram-sha-256`, then SELECT pg_reload_conf();)", what, ErrConfig, err)
	case codeInvalidPassword, codeInvalidCatalog:
		return fmt.Errorf("postgres: %s: %w: %w", what, ErrConfig, err)
	}
	return fmt.Errorf("postgres: %s: %w", what, err)
}

func (r *Reader) connectSQL(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(r.cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w: invalid DSN: %v", ErrConfig, redactErr(err))
	}
	delete(cfg.RuntimeParams, "replication")
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = connectTimeout
	}
	// Simple protocol: no prepared-statement cache to go stale, and it works
	// through poolers.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, classifyConnect("connect", err)
	}
	return conn, nil
}

func (r *Reader) connectReplication(ctx context.Context) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(r.cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w: invalid DSN: %v", ErrConfig, redactErr(err))
	}
	cfg.RuntimeParams["replication"] = "database"
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = connectTimeout
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, classifyConnect("replication connect", err)
	}
	return conn, nil
}

// serverInfo is what the startup checks need to know about the server.
type serverInfo struct {
	walLevel    string
	version     int // server_version_num
	role        string
	superuser   bool
	replication bool
}

func queryServerInfo(ctx context.Context, conn *pgx.Conn) (serverInfo, error) {
	var si serverInfo
	err := conn.QueryRow(ctx, `SELECT current_setting('wal_level'), current_setting('server_version_num')::int,
		r.rolname, r.rolsuper, r.rolreplication FROM pg_roles r WHERE r.rolname = current_user`).
		Scan(&si.walLevel, &si.version, &si.role, &si.superuser, &si.replication)
	if err != nil {
		return si, fmt.Errorf("postgres: read server settings: %w", err)
	}
	return si, nil
}

// checkServer returns the ErrConfig error for a server the reader cannot
// stream from.
func checkServer(si serverInfo) error {
	if si.walLevel != "logical" {
		return fmt.Errorf("postgres: %w: wal_level is %q but logical replication needs \"logical\": run ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL", ErrConfig, si.walLevel)
	}
	if si.version < 100000 {
		return fmt.Errorf("postgres: %w: PostgreSQL %d is too old: pgoutput needs PostgreSQL 10 or newer", ErrConfig, si.version)
	}
	if !si.superuser && !si.replication {
		return fmt.Errorf("postgres: %w: role %q may not stream changes: ALTER ROLE %s WITH REPLICATION;", ErrConfig, si.role, quoteIdent(si.role))
	}
	return nil
}

// createPublication is the statement that creates the reader's
// publication: for its tables, or FOR ALL TABLES when it was given none.
func (r *Reader) createPublication(version int) string {
	stmt := "CREATE PUBLICATION " + quoteIdent(r.cfg.Publication) + " FOR ALL TABLES"
	if r.tables != nil {
		names := make([]string, len(r.tables))
		for i, t := range r.tables {
			names[i] = t.sql()
		}
		stmt = "CREATE PUBLICATION " + quoteIdent(r.cfg.Publication) + " FOR TABLE " + strings.Join(names, ", ")
	}
	if version >= 130000 {
		stmt += " WITH (publish_via_partition_root = true)"
	}
	return stmt
}

// ensurePublication creates the publication when it is missing and, when
// the reader was given its tables, adds those the publication lacks.
// PostgreSQL 13+ publishes a partitioned table's changes under its own name
// (publish_via_partition_root), resolved by the server with the catalog as
// it was when the row changed.
func (r *Reader) ensurePublication(ctx context.Context, conn *pgx.Conn, version int) error {
	if r.cfg.Temporary {
		return r.requirePublication(ctx, conn, version)
	}
	pub := r.cfg.Publication
	var allTables bool
	err := conn.QueryRow(ctx, `SELECT puballtables FROM pg_publication WHERE pubname = $1`, pub).Scan(&allTables)
	if errors.Is(err, pgx.ErrNoRows) {
		stmt := r.createPublication(version)
		if _, err := conn.Exec(ctx, stmt); err != nil {
			switch pgCode(err) {
			case codeInsufficientPriv:
				return fmt.Errorf("postgres: create publication: %w: %w: run as a superuser (FOR ALL TABLES needs one; FOR TABLE needs table ownership): %s;", ErrConfig, err, stmt)
			case codeUndefinedTable:
				return fmt.Errorf("postgres: create publication: %w: %w", ErrConfig, err)
			case codeDuplicateObject:
				return fmt.Errorf("postgres: create publication: %w", err) // created concurrently: retry
			}
			return fmt.Errorf("postgres: create publication: %w", err)
		}
		r.log.Info("created publication", "publication", pub, "statement", stmt)
		return nil
	}
	if err != nil {
		return fmt.Errorf("postgres: read publication: %w", err)
	}
	if allTables || r.tables == nil {
		return nil
	}
	missing, err := missingFromPublication(ctx, conn, pub, r.tables)
	if err != nil {
		return err
	}
	for _, t := range missing {
		stmt := "ALTER PUBLICATION " + quoteIdent(pub) + " ADD TABLE " + t.sql()
		if _, err := conn.Exec(ctx, stmt); err != nil {
			if c := pgCode(err); c == codeInsufficientPriv || c == codeUndefinedTable {
				return fmt.Errorf("postgres: publication %s lacks %s: %w: %w: %s;", pub, t, ErrConfig, err, stmt)
			}
			return fmt.Errorf("postgres: alter publication: %w", err)
		}
		r.log.Info("added table to publication", "publication", pub, "table", t.String())
	}
	return nil
}

// missingFromPublication returns the tables that the publication does not
// publish (a partitioned table: when one of its partitions is not), and
// those that do not exist (adding them fails with a clear error).
func missingFromPublication(ctx context.Context, conn *pgx.Conn, pub string, tables []qualifiedName) ([]qualifiedName, error) {
	var missing []qualifiedName
	for _, t := range tables {
		var oid uint32
		err := conn.QueryRow(ctx, `SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = $2`, t.Schema, t.Name).Scan(&oid)
		if errors.Is(err, pgx.ErrNoRows) {
			missing = append(missing, t)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("postgres: read publication tables: %w", err)
		}
		leaves, err := unpublishedLeaves(ctx, conn, pub, oid)
		if err != nil {
			return nil, err
		}
		if len(leaves) > 0 {
			missing = append(missing, t)
		}
	}
	return missing, nil
}

// unpublishedLeaves returns the tables holding rows of relation oid (the
// table itself, or a partitioned table's leaf partitions) that publication
// pub does not publish. A leaf is published when it or a partitioned table
// above it is in pg_publication_tables, which lists a partitioned table's
// leaves, or with publish_via_partition_root the partitioned table itself.
func unpublishedLeaves(ctx context.Context, conn *pgx.Conn, pub string, oid uint32) ([]qualifiedName, error) {
	rows, err := conn.Query(ctx, `WITH RECURSIVE down(oid) AS (
			SELECT $2::oid
			UNION ALL
			SELECT i.inhrelid FROM down d JOIN pg_class c ON c.oid = d.oid
			JOIN pg_inherits i ON i.inhparent = d.oid WHERE c.relkind = 'p'),
		up(leaf, oid) AS (
			SELECT d.oid, d.oid FROM down d JOIN pg_class c ON c.oid = d.oid WHERE c.relkind <> 'p'
			UNION ALL
			SELECT u.leaf, i.inhparent FROM up u JOIN pg_class c ON c.oid = u.oid
			JOIN pg_inherits i ON i.inhrelid = u.oid WHERE c.relispartition)
		SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid IN (SELECT leaf FROM up) AND NOT EXISTS (
			SELECT 1 FROM up u JOIN pg_class a ON a.oid = u.oid JOIN pg_namespace an ON an.oid = a.relnamespace
			JOIN pg_publication_tables pt ON pt.pubname = $1 AND pt.schemaname = an.nspname AND pt.tablename = a.relname
			WHERE u.leaf = c.oid)
		ORDER BY 1, 2`, pub, oid)
	if err != nil {
		return nil, fmt.Errorf("postgres: read publication tables: %w", err)
	}
	var out []qualifiedName
	for rows.Next() {
		var q qualifiedName
		if err := rows.Scan(&q.Schema, &q.Name); err != nil {
			rows.Close()
			return nil, fmt.Errorf("postgres: read publication tables: %w", err)
		}
		out = append(out, q)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: read publication tables: %w", err)
	}
	return out, nil
}

// slotInfo is the slot as pg_replication_slots shows it.
type slotInfo struct {
	exists    bool
	plugin    string
	slotType  string
	database  string
	confirmed pglogrepl.LSN
	walStatus string // "" before PostgreSQL 13
	invalid   string // PostgreSQL 17 invalidation_reason
	activePID int32
}

func (s slotInfo) lost() bool { return s.walStatus == "lost" || s.invalid != "" }

func querySlot(ctx context.Context, conn *pgx.Conn, slot string) (slotInfo, error) {
	var si slotInfo
	var confirmed string
	var active *int32
	// to_jsonb keeps the query valid on versions without wal_status /
	// invalidation_reason.
	err := conn.QueryRow(ctx, `SELECT coalesce(plugin, ''), slot_type, coalesce(database::text, ''),
		coalesce(confirmed_flush_lsn::text, ''), coalesce(to_jsonb(s)->>'wal_status', ''),
		coalesce(to_jsonb(s)->>'invalidation_reason', ''), active_pid
		FROM pg_replication_slots s WHERE slot_name = $1`, slot).
		Scan(&si.plugin, &si.slotType, &si.database, &confirmed, &si.walStatus, &si.invalid, &active)
	if errors.Is(err, pgx.ErrNoRows) {
		return si, nil
	}
	if err != nil {
		return si, fmt.Errorf("postgres: read replication slot: %w", err)
	}
	si.exists = true
	if active != nil {
		si.activePID = *active
	}
	if confirmed != "" {
		if si.confirmed, err = pglogrepl.ParseLSN(confirmed); err != nil {
			return si, fmt.Errorf("postgres: replication slot %s: confirmed_flush_lsn %q: %w", slot, confirmed, err)
		}
	}
	return si, nil
}

// ensureSlot makes sure the slot exists and is usable and returns the LSN
// to stream from. A slot that was invalidated, or that vanished while this
// Run was using it, means changes were lost: the handler hears Lost and the
// slot is recreated at the server's current position.
func (r *Reader) ensureSlot(ctx context.Context, sqlConn *pgx.Conn, repl *pgconn.PgConn, db string, h cdc.Handler) (pglogrepl.LSN, error) {
	if r.cfg.Temporary {
		return r.createTemporarySlot(ctx, repl, h)
	}
	slot := r.cfg.Slot
	si, err := querySlot(ctx, sqlConn, slot)
	if err != nil {
		return 0, err
	}
	if si.exists {
		if si.slotType != "logical" || si.plugin != "pgoutput" {
			return 0, fmt.Errorf("postgres: %w: replication slot %q exists but is a %s slot with plugin %q, not a logical pgoutput slot: pick another --slot or SELECT pg_drop_replication_slot('%s');", ErrConfig, slot, si.slotType, si.plugin, slot)
		}
		if si.database != db {
			return 0, fmt.Errorf("postgres: %w: replication slot %q belongs to database %q, not %q: pick another --slot", ErrConfig, slot, si.database, db)
		}
		if !si.lost() {
			if si.walStatus == "unreserved" {
				r.log.Warn("replication slot is about to lose WAL (wal_status unreserved): the reader is lagging behind max_slot_wal_keep_size", logSlot, slot)
			}
			r.haveSlot = true
			return si.confirmed, nil
		}
		reason := fmt.Sprintf("replication slot %q was invalidated (wal_status %q %s): changes since %s are lost", slot, si.walStatus, si.invalid, si.confirmed)
		r.log.Error("continuity lost; recreating the slot", logSlot, slot, "reason", reason)
		if err := h.Lost(ctx, reason); err != nil {
			return 0, errHandler{fmt.Errorf("postgres: %w: %s: %w", cdc.ErrContinuityLost, reason, err)}
		}
		if si.activePID != 0 {
			_, _ = sqlConn.Exec(ctx, `SELECT pg_terminate_backend($1)`, si.activePID)
		}
		if _, err := sqlConn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err != nil && pgCode(err) != codeUndefinedObject {
			return 0, fmt.Errorf("postgres: drop invalidated slot %s: %w", slot, err)
		}
	} else if r.haveSlot {
		reason := fmt.Sprintf("replication slot %q was dropped while in use: changes may be lost", slot)
		r.log.Error("continuity lost; recreating the slot", logSlot, slot, "reason", reason)
		if err := h.Lost(ctx, reason); err != nil {
			return 0, errHandler{fmt.Errorf("postgres: %w: %s: %w", cdc.ErrContinuityLost, reason, err)}
		}
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, repl, slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT"})
	if err != nil {
		if pgCode(err) == codeInsufficientPriv {
			return 0, fmt.Errorf("postgres: create replication slot: %w: %w", ErrConfig, err)
		}
		return 0, fmt.Errorf("postgres: create replication slot: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return 0, fmt.Errorf("postgres: create replication slot: consistent point %q: %w", res.ConsistentPoint, err)
	}
	r.haveSlot = true
	r.log.Info("created replication slot", logSlot, slot, logLSN, lsn.String())
	return lsn, nil
}

// heartbeat writes a transactional logical message every interval so that
// the slot of a quiet database keeps advancing. It stops when ctx ends.
func (r *Reader) heartbeat(ctx context.Context, cat *catalog, wg *sync.WaitGroup) {
	defer wg.Done()
	t := time.NewTicker(r.cfg.HeartbeatInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if r.heartbeatOff.Load() {
			return
		}
		qctx, cancel := context.WithTimeout(ctx, r.cfg.HeartbeatInterval+5*time.Second)
		err := cat.exec(qctx, `SELECT pg_logical_emit_message(true, 'tagstream', '')`)
		cancel()
		switch {
		case err == nil:
			failing = false
		case ctx.Err() != nil:
			return
		case pgCode(err) == codeInsufficientPriv:
			r.heartbeatOff.Store(true)
			r.log.Warn("heartbeat disabled: the role may not call pg_logical_emit_message (GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO <role>;)", logErr, err)
			return
		default:
			if !failing {
				r.log.Warn("heartbeat failed", logErr, err)
			}
			failing = true
			if cat.closed() {
				return // the streaming connection will fail too and start a new session
			}
		}
	}
}
