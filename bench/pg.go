package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/testcontainers"
)

// pgSchema is the benchmark's schema: the tables of rules.yaml. todos and
// comments have REPLICA IDENTITY FULL, as `tagstream check --db` advises for
// rules that read old values or filter on columns.
const pgSchema = `
CREATE TABLE todos (id bigserial PRIMARY KEY, user_id int NOT NULL, title text NOT NULL, done boolean NOT NULL DEFAULT false, updated_at timestamptz NOT NULL DEFAULT now());
ALTER TABLE todos REPLICA IDENTITY FULL;
CREATE TABLE comments (id bigserial PRIMARY KEY, post_id int NOT NULL, body text NOT NULL, spam_score int NOT NULL DEFAULT 0, deleted_at timestamptz);
ALTER TABLE comments REPLICA IDENTITY FULL;
CREATE TABLE posts (id bigserial PRIMARY KEY, author_id int NOT NULL, title text NOT NULL);
ALTER TABLE posts REPLICA IDENTITY FULL;
CREATE TABLE auctions (id bigserial PRIMARY KEY, title text NOT NULL, price numeric(12,2) NOT NULL DEFAULT 0);
CREATE TABLE bids (id bigserial PRIMARY KEY, auction_id int NOT NULL, amount numeric(12,2) NOT NULL);
CREATE TABLE bench_marker (id int PRIMARY KEY);
`

// pgSlots names the slots of one repetition: pg_recvlogical's, then one
// per drain client.
func pgSlots() []string {
	s := []string{pgRecvSlot}
	for i := range drainClients {
		s = append(s, fmt.Sprintf("%s_%d", pgDaemonSlot, i))
	}
	return s
}

const (
	pgPublication = "bench"
	pgRecvSlot    = "bench_recvlogical"
	pgDaemonSlot  = "bench_tagstream"
)

// pgWorkload writes one backlog and says how many transactions it committed.
type pgWorkload struct {
	name    string
	preload func(ctx context.Context, conn *pgx.Conn) error
	write   func(ctx context.Context, dsn string) (tx int64, err error)
}

func (b *bench) runPostgres(ctx context.Context) error {
	srv, err := testcontainers.StartPostgres(ctx)
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	defer srv.Close()
	admin, err := pgx.Connect(ctx, srv.AdminDSN())
	if err != nil {
		return err
	}
	// The private server is tuned to stream in-progress transactions early
	// (logical_decoding_work_mem=64kB) for the tests; the benchmark uses
	// PostgreSQL's default instead, as a production server would.
	if _, err := admin.Exec(ctx, "ALTER SYSTEM SET logical_decoding_work_mem = '64MB'"); err == nil {
		_, _ = admin.Exec(ctx, "SELECT pg_reload_conf()")
	}
	admin.Close(ctx)
	b.note("PostgreSQL: private server from testcontainers/ (%s) with fsync=off, synchronous_commit=off, logical_decoding_work_mem=64MB", srv.Source())

	c := b.cfg
	workloads := []pgWorkload{
		{
			name: fmt.Sprintf("(a) %d single-row INSERT tx, pgbench %d clients", c.smallTx, c.clients),
			write: func(ctx context.Context, dsn string) (int64, error) {
				script := "\\set uid random(1, 10000)\nINSERT INTO todos (user_id, title) VALUES (:uid, 'buy milk');\n"
				per := max(c.smallTx/c.clients, 1)
				return int64(per * c.clients), b.pgbench(ctx, dsn, per, map[string]string{"insert.sql": script})
			},
		},
		{
			name: fmt.Sprintf("(b) one INSERT … SELECT of %d rows", c.bulkRows),
			write: func(ctx context.Context, dsn string) (int64, error) {
				conn, err := pgx.Connect(ctx, dsn)
				if err != nil {
					return 0, err
				}
				defer conn.Close(ctx)
				_, err = conn.Exec(ctx, `INSERT INTO todos (user_id, title, done) SELECT i % 10000 + 1, 'todo ' || i, false FROM generate_series(1, $1::int) AS i`, c.bulkRows)
				return 1, err
			},
		},
		{
			name: fmt.Sprintf("(c) %d update/delete tx, pgbench %d clients", c.mixedTx, c.clients),
			preload: func(ctx context.Context, conn *pgx.Conn) error {
				_, err := conn.Exec(ctx, `INSERT INTO todos (user_id, title) SELECT i % 10000 + 1, 'todo ' || i FROM generate_series(1, $1::int) AS i`, c.mixedRows)
				if err == nil {
					_, err = conn.Exec(ctx, `INSERT INTO comments (post_id, body) SELECT i % 5000 + 1, 'comment ' || i FROM generate_series(1, $1::int) AS i`, max(c.mixedRows/2, 1))
				}
				if err == nil {
					_, err = conn.Exec(ctx, `VACUUM ANALYZE`)
				}
				return err
			},
			write: func(ctx context.Context, dsn string) (int64, error) {
				n := c.mixedRows
				scripts := map[string]string{
					// A todo is ticked off: fires todo-item.
					"done.sql@5": fmt.Sprintf("\\set id random(1, %d)\nUPDATE todos SET done = NOT done, updated_at = now() WHERE id = :id;\n", n),
					// A moderation job touches only spam_score: the columns filter fires nothing.
					"spam.sql@2": fmt.Sprintf("\\set id random(1, %d)\nUPDATE comments SET spam_score = spam_score + 1 WHERE id = :id;\n", max(n/2, 1)),
					// An edit and a soft delete in one transaction.
					"edit.sql@1": fmt.Sprintf("\\set id random(1, %d)\nBEGIN;\nUPDATE comments SET body = body || '!' WHERE id = :id;\nUPDATE comments SET deleted_at = now() WHERE id = :id + 1;\nCOMMIT;\n", max(n/2-1, 1)),
					// A todo is deleted (may hit an already deleted id: 0 rows).
					"delete.sql@2": fmt.Sprintf("\\set id random(1, %d)\nDELETE FROM todos WHERE id = :id;\n", n),
				}
				per := max(c.mixedTx/c.clients, 1)
				return int64(per * c.clients), b.pgbench(ctx, dsn, per, scripts)
			},
		},
	}
	for i, w := range workloads {
		if !b.wantWorkload(i) {
			continue
		}
		if err := b.pgWorkload(ctx, srv, fmt.Sprintf("bench_pg_%d", i), w); err != nil {
			return fmt.Errorf("%s: %w", w.name, err)
		}
	}
	return nil
}

// pgWorkload measures one workload on a fresh database: schema and preload,
// then both slots, then the backlog and a marker row, then the two drains.
func (b *bench) pgWorkload(ctx context.Context, srv *testcontainers.PostgresServer, db string, w pgWorkload) error {
	b.logf("postgres %s", w.name)
	dsn, err := srv.CreateDatabase(ctx, db)
	if err != nil {
		return err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := srv.DropDatabase(dctx, db); err != nil {
			b.logf("drop %s: %v", db, err)
		}
	}()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := pgLoad(ctx, conn, dsn, w); err != nil {
		return err
	}
	// One slot per consumer per repetition: a drained slot cannot be
	// drained again.
	reps := max(b.cfg.repeat, 1)
	startLSN, err := pgCreateSlots(ctx, conn, reps)
	if err != nil {
		return err
	}
	bl, err := b.pgWriteBacklog(ctx, conn, dsn, w, startLSN)
	if err != nil {
		return err
	}
	if err := b.pgDrains(ctx, conn, dsn, db, w, reps, bl); err != nil {
		return err
	}
	if reps > 1 {
		b.note("PostgreSQL throughput: each consumer drained %d slots in turn; the table shows its fastest drain", reps)
	}
	return nil
}

// pgLoad creates the schema, runs the workload's preload and creates the
// publication.
func pgLoad(ctx context.Context, conn *pgx.Conn, dsn string, w pgWorkload) error {
	if _, err := conn.Exec(ctx, pgSchema); err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	if w.preload != nil {
		// On its own connection: a session flushes its row statistics
		// when it ends, which pgRowCount relies on.
		if err := pgWith(ctx, dsn, w.preload); err != nil {
			return fmt.Errorf("preload: %w", err)
		}
	}
	// The slots exist before the writes: both consumers start from the same
	// point and find the whole backlog waiting.
	_, err := conn.Exec(ctx, "CREATE PUBLICATION "+pgPublication+" FOR ALL TABLES")
	return err
}

// pgRepSlot names repetition rep's slot of a consumer (base is repetition 0's).
func pgRepSlot(base string, rep int) string {
	if rep == 0 {
		return base
	}
	return fmt.Sprintf("%s_%d", base, rep+1)
}

// pgCreateSlots creates every consumer's slot for reps repetitions and
// returns the LSN the last one starts at.
func pgCreateSlots(ctx context.Context, conn *pgx.Conn, reps int) (string, error) {
	var startLSN string
	for rep := range reps {
		for _, base := range pgSlots() {
			if err := conn.QueryRow(ctx, "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", pgRepSlot(base, rep)).Scan(&startLSN); err != nil {
				return "", fmt.Errorf("create slot %s: %w", pgRepSlot(base, rep), err)
			}
		}
	}
	return startLSN, nil
}

// pgBacklog is one written PostgreSQL backlog: its size and WAL range.
type pgBacklog struct {
	rows, tx         int64
	startLSN, endLSN string
	extra            string // the WAL's size, for the report
}

// pgWriteBacklog writes the workload's backlog and the marker row after it.
func (b *bench) pgWriteBacklog(ctx context.Context, conn *pgx.Conn, dsn string, w pgWorkload, startLSN string) (pgBacklog, error) {
	bl := pgBacklog{startLSN: startLSN}
	rows0, err := pgRowCount(ctx, conn)
	if err != nil {
		return bl, err
	}
	t0 := time.Now()
	tx, err := w.write(ctx, dsn)
	if err != nil {
		return bl, fmt.Errorf("write: %w", err)
	}
	// The marker is the backlog's last transaction; its event tells the
	// benchmark that tagstream has delivered everything before it.
	err = pgWith(ctx, dsn, func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "INSERT INTO bench_marker (id) VALUES (1)")
		return err
	})
	if err != nil {
		return bl, err
	}
	var endLSN string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&endLSN); err != nil {
		return bl, err
	}
	writeTime := time.Since(t0)
	rows1, err := pgRowCount(ctx, conn)
	if err != nil {
		return bl, err
	}
	rows := rows1 - rows0 - 1 // without the marker
	var walBytes int64
	_ = conn.QueryRow(ctx, "SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::bigint", endLSN, startLSN).Scan(&walBytes)
	b.logf("  backlog written in %s: %d rows, %d tx, %.1f MiB of WAL, end LSN %s", writeTime.Round(time.Millisecond), rows, tx, float64(walBytes)/(1<<20), endLSN)
	bl.rows, bl.tx, bl.endLSN = rows, tx, endLSN
	bl.extra = fmt.Sprintf("%.0f MiB WAL", float64(walBytes)/(1<<20))
	return bl, nil
}

// pgDrains lets the consumers take turns (pg_recvlogical, tagstream,
// pg_recvlogical, …) for reps repetitions; each keeps its fastest drain,
// which filters out the noise of a shared machine.
func (b *bench) pgDrains(ctx context.Context, conn *pgx.Conn, dsn, db string, w pgWorkload, reps int, bl pgBacklog) error {
	best := make([]*throughputRow, 1+len(drainClients))
	keep := func(i int, r throughputRow) {
		if best[i] == nil || r.Drain < best[i].Drain {
			best[i] = &r
		}
	}
	for rep := range reps {
		r, err := b.pgRecvDrain(ctx, dsn, w, rep, bl)
		if err != nil {
			return err
		}
		keep(0, r)
		for ci, dc := range drainClients {
			r, err := b.pgDaemonDrain(ctx, conn, dsn, db, w, rep, ci, dc, bl)
			if err != nil {
				return err
			}
			keep(1+ci, r)
		}
	}
	for _, r := range best {
		b.throughput = append(b.throughput, *r)
	}
	return nil
}

// pgRecvDrain drains repetition rep's slot with pg_recvlogical: the
// physical limit of decoding this backlog with pgoutput and shipping it to
// a client that only writes it away.
func (b *bench) pgRecvDrain(ctx context.Context, dsn string, w pgWorkload, rep int, bl pgBacklog) (throughputRow, error) {
	recvArgs := []string{"-d", dsn, "--slot", pgRepSlot(pgRecvSlot, rep), "--start", "--endpos", bl.endLSN, "--no-loop",
		"-f", os.DevNull, "-F", "0",
		"-o", "proto_version=2", "-o", "publication_names=" + pgPublication, "-o", "streaming=on"}
	recvTime, cpu, err := b.runBaseline(ctx, "pg_recvlogical", recvArgs)
	if err != nil {
		return throughputRow{}, err
	}
	b.logf("  pg_recvlogical drained in %s", recvTime.Round(time.Millisecond))
	return throughputRow{DB: "PostgreSQL", Workload: w.name, Consumer: "pg_recvlogical", Rows: bl.rows, Tx: bl.tx,
		Drain: recvTime, CPU: cpu, Baseline: true, Extra: bl.extra}, nil
}

// pgDaemonDrain drains repetition rep's slot of drain client ci with
// tagstream: the same backlog through reader → rules → hub → one SSE
// client, done when that client has received the marker's invalidation.
func (b *bench) pgDaemonDrain(ctx context.Context, conn *pgx.Conn, dsn, db string, w pgWorkload, rep, ci int, dc drainClient, bl pgBacklog) (throughputRow, error) {
	slotName := pgRepSlot(fmt.Sprintf("%s_%d", pgDaemonSlot, ci), rep)
	res, err := b.drainDaemon(ctx, fmt.Sprintf("pg-%s-%d-%d", db, rep, ci), dc, strconv.FormatUint(parseLSN(bl.startLSN), 10),
		"--db", dsn, "--rules", b.rulesPath, "--slot", slotName, "--publication", pgPublication)
	if err != nil {
		return throughputRow{}, err
	}
	var flushed string
	_ = conn.QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slotName).Scan(&flushed)
	b.noteResets(res)
	b.logf("  %s drained in %s (%s); slot confirmed_flush_lsn %s, marker event id %s", dc.label, res.drain.Round(time.Millisecond), res.describe(), flushed, res.markerID)
	return throughputRow{DB: "PostgreSQL", Workload: w.name, Consumer: dc.label, Rows: bl.rows, Tx: bl.tx,
		Drain: res.drain, CPU: res.cpu, Extra: res.describe()}, nil
}

// pgbench runs pgbench with the given scripts (name[@weight] → text), `per`
// transactions per client.
func (b *bench) pgbench(ctx context.Context, dsn string, per int, scripts map[string]string) error {
	args := []string{"-n", "-c", strconv.Itoa(b.cfg.clients), "-j", strconv.Itoa(min(b.cfg.clients, 2)), "-t", strconv.Itoa(per)}
	names := make([]string, 0, len(scripts))
	for n := range scripts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		file, weight, _ := strings.Cut(n, "@")
		path := filepath.Join(b.tmp, file)
		if err := os.WriteFile(path, []byte(scripts[n]), 0o644); err != nil {
			return err
		}
		if weight != "" {
			path += "@" + weight
		}
		args = append(args, "-f", path)
	}
	args = append(args, dsn)
	b.record("pgbench", args...)
	for _, n := range names {
		file, _, _ := strings.Cut(n, "@")
		b.record("# "+file+":", strings.ReplaceAll(strings.TrimSpace(scripts[n]), "\n", " "))
	}
	out, err := exec.CommandContext(ctx, "pgbench", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		if strings.HasPrefix(line, "tps") || strings.Contains(line, "actually processed") || strings.Contains(line, "failed") {
			b.logf("  pgbench: %s", strings.TrimSpace(line))
		}
	}
	return nil
}

// runBaseline drains a backlog with a database's own client tool within
// -drain-timeout and returns the tool's wall-clock and CPU time.
func (b *bench) runBaseline(ctx context.Context, tool string, args []string) (took, cpu time.Duration, err error) {
	b.record(tool, args...)
	dctx, cancel := context.WithTimeout(ctx, b.cfg.drainLimit)
	defer cancel()
	cmd := exec.CommandContext(dctx, tool, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	t1 := time.Now()
	err = cmd.Run()
	took = time.Since(t1)
	cancel()
	if err != nil {
		return took, 0, fmt.Errorf("%s: %w: %s", tool, err, strings.TrimSpace(stderr.String()))
	}
	return took, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
}

// pgWith runs fn on a connection of its own and closes it.
func pgWith(ctx context.Context, dsn string, fn func(context.Context, *pgx.Conn) error) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return fn(ctx, conn)
}

// pgRowCount sums the rows inserted, updated and deleted in the database's
// user tables. Writers flush their statistics when their session ends, a
// moment after they disconnect: the count is read until it holds still for
// half a second.
func pgRowCount(ctx context.Context, conn *pgx.Conn) (int64, error) {
	last, stable := int64(-1), 0
	for range 40 {
		var n int64
		// A fresh snapshot each time: stats_fetch_consistency caches per transaction.
		if _, err := conn.Exec(ctx, "SELECT pg_stat_clear_snapshot()"); err != nil {
			return 0, err
		}
		if err := conn.QueryRow(ctx, `SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint FROM pg_stat_user_tables`).Scan(&n); err != nil {
			return 0, err
		}
		if n == last {
			if stable++; stable == 5 {
				return n, nil
			}
		} else {
			last, stable = n, 0
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return last, nil
}

// parseLSN turns "16/B374D848" into its integer form (the SSE event id).
func parseLSN(s string) uint64 {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0
	}
	return h<<32 | l
}

// pgBin finds a server binary: PATH first, then the newest
// /usr/lib/postgresql/*/bin.
func pgBin(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name)
	sort.Strings(dirs)
	if len(dirs) > 0 {
		return dirs[len(dirs)-1]
	}
	return name
}
