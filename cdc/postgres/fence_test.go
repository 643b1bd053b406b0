package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/cdc"
)

func TestParseSnapshot(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want pgSnapshot
		err  bool
	}{
		{in: "10:20:", want: pgSnapshot{xmin: 10, xmax: 20}},
		{in: "10:20:15,12", want: pgSnapshot{xmin: 10, xmax: 20, xip: []uint64{12, 15}}},
		{in: "21474836480:21474836490:21474836485", want: pgSnapshot{xmin: 5 << 32, xmax: 5<<32 | 10, xip: []uint64{5<<32 | 5}}},
		{in: "10:20", err: true},
		{in: "20:10:", err: true},
		{in: "a:20:", err: true},
		{in: "10:20:x", err: true},
		{in: "10:20:1,,2", err: true},
	} {
		got, err := parseSnapshot(tc.in)
		if (err != nil) != tc.err {
			t.Errorf("parseSnapshot(%q) error = %v, want error %v", tc.in, err, tc.err)
			continue
		}
		if err == nil && (got.xmin != tc.want.xmin || got.xmax != tc.want.xmax || !slices.Equal(got.xip, tc.want.xip)) {
			t.Errorf("parseSnapshot(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

// TestSnapshotVisibility: a 32-bit xid from the replication stream is
// extended with the snapshot's epoch, across wraparound, and checked
// against xmin, xmax and the in-progress list.
func TestSnapshotVisibility(t *testing.T) {
	const epoch5 = uint64(5) << 32
	for _, tc := range []struct {
		name string
		snap pgSnapshot
		xid  uint32
		full uint64 // 0: not assigned before the snapshot
		want bool
	}{
		{"below xmin", pgSnapshot{xmin: 100, xmax: 200}, 50, 50, true},
		{"between, not in progress", pgSnapshot{xmin: 100, xmax: 200, xip: []uint64{150}}, 120, 120, true},
		{"in progress", pgSnapshot{xmin: 100, xmax: 200, xip: []uint64{120, 150}}, 150, 150, false},
		{"not yet assigned, epoch 0", pgSnapshot{xmin: 100, xmax: 200}, 200, 0, false},
		{"epoch 5", pgSnapshot{xmin: epoch5 | 100, xmax: epoch5 | 200}, 150, epoch5 | 150, true},
		{"epoch 5 in progress", pgSnapshot{xmin: epoch5 | 100, xmax: epoch5 | 200, xip: []uint64{epoch5 | 150}}, 150, epoch5 | 150, false},
		// xmax wrapped to epoch 5; the xid was assigned late in epoch 4.
		{"wraparound, previous epoch", pgSnapshot{xmin: epoch5 - 100, xmax: epoch5 | 10}, 0xFFFF_FFF0, epoch5 - 16, true},
		{"wraparound, previous epoch in progress", pgSnapshot{xmin: epoch5 - 100, xmax: epoch5 | 10, xip: []uint64{epoch5 - 16}}, 0xFFFF_FFF0, epoch5 - 16, false},
		// The same low 32 bits in epoch 5 would be at or above xmax.
		{"wraparound, current epoch", pgSnapshot{xmin: epoch5 - 100, xmax: epoch5 | 10}, 5, epoch5 | 5, true},
		{"xid equal to xmax's low bits is an epoch old", pgSnapshot{xmin: epoch5 | 5, xmax: epoch5 | 10}, 10, epoch5 - 1<<32 | 10, true},
	} {
		full, ok := tc.snap.fullXid(tc.xid)
		if tc.full == 0 {
			if ok {
				t.Errorf("%s: fullXid(%d) = %d, want not assigned", tc.name, tc.xid, full)
			}
		} else if !ok || full != tc.full {
			t.Errorf("%s: fullXid(%d) = %d, %v; want %d", tc.name, tc.xid, full, ok, tc.full)
		}
		if got := tc.snap.visible(tc.xid); got != tc.want {
			t.Errorf("%s: visible(%d) = %v, want %v", tc.name, tc.xid, got, tc.want)
		}
	}
	snap := pgSnapshot{xmin: 100, xmax: 200, xip: []uint64{120, 150}}
	if n := snap.countInvisible([]uint32{50, 120, 130, 150, 210}); n != 3 {
		t.Errorf("countInvisible = %d, want 3 (two in progress, one not assigned)", n)
	}
}

// fenceReader is a Reader whose fence is open (as while Run runs) against
// the fixture's database.
func (f *fixture) fenceReader(timeout time.Duration) *Reader {
	f.t.Helper()
	cfg := f.config()
	cfg.FenceTimeout = timeout
	r, err := New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	r.fence.open()
	f.t.Cleanup(r.fence.close)
	return r
}

// openXact begins a transaction on its own connection and returns its
// assigned xid (32 bits, as the replication stream carries it) and the
// connection, still in the transaction.
func (f *fixture) openXact() (uint32, *pgx.Conn) {
	f.t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.dsn)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, `BEGIN`); err != nil {
		f.t.Fatal(err)
	}
	var full string
	if err := conn.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&full); err != nil {
		f.t.Fatal(err)
	}
	x, err := strconv.ParseUint(full, 10, 64)
	if err != nil {
		f.t.Fatal(err)
	}
	return uint32(x), conn
}

// TestFenceWaitsForCommit: WaitVisible for a transaction that is still in
// progress blocks, polling, until it commits; a batch of visible commits
// costs one query.
func TestFenceWaitsForCommit(t *testing.T) {
	t.Parallel()
	f := setup(t)
	r := f.fenceReader(time.Minute)
	ctx := context.Background()

	// Committed transactions: one query for the whole batch.
	var batch []cdc.Commit
	for range 5 {
		x, conn := f.openXact()
		if _, err := conn.Exec(ctx, `COMMIT`); err != nil {
			t.Fatal(err)
		}
		batch = append(batch, cdc.Commit{Xid: uint64(x)})
	}
	batch = append(batch, cdc.Commit{}) // no xid: nothing to prove
	if err := r.WaitVisible(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if q := r.fence.queries.Load(); q != 1 {
		t.Errorf("a visible batch took %d snapshot queries, want 1", q)
	}

	x, conn := f.openXact()
	done := make(chan error, 1)
	go func() { done <- r.WaitVisible(ctx, append(batch, cdc.Commit{Xid: uint64(x)})) }()
	// Several polls have seen it in progress and WaitVisible has not
	// returned: it waits.
	deadline := time.After(waitTimeout)
	for r.fence.queries.Load() < 5 {
		select {
		case err := <-done:
			t.Fatalf("WaitVisible returned %v while the transaction was open", err)
		case <-deadline:
			t.Fatal("the fence did not poll")
		case <-time.After(time.Millisecond):
		}
	}
	select {
	case err := <-done:
		t.Fatalf("WaitVisible returned %v while the transaction was open", err)
	default:
	}
	if _, err := conn.Exec(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitVisible after commit = %v, want nil", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("WaitVisible did not return after the commit")
	}
}

// TestFenceTimeout: a transaction that stays in progress makes WaitVisible
// give up after the fence timeout with ErrNotVisible; a cancelled context
// returns its error.
func TestFenceTimeout(t *testing.T) {
	t.Parallel()
	f := setup(t)
	r := f.fenceReader(100 * time.Millisecond)
	x, _ := f.openXact()
	start := time.Now()
	err := r.WaitVisible(context.Background(), []cdc.Commit{{Xid: uint64(x)}})
	if !errors.Is(err, cdc.ErrNotVisible) {
		t.Fatalf("WaitVisible = %v, want ErrNotVisible", err)
	}
	if el := time.Since(start); el < 100*time.Millisecond {
		t.Errorf("gave up after %s, before the timeout", el)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.WaitVisible(ctx, []cdc.Commit{{Xid: uint64(x)}}); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitVisible with a cancelled context = %v, want context.Canceled", err)
	}
	// Stopped: no connection, at once.
	r.fence.close()
	if err := r.WaitVisible(context.Background(), []cdc.Commit{{Xid: 1}}); !errors.Is(err, cdc.ErrNotVisible) {
		t.Errorf("WaitVisible after Run ended = %v, want ErrNotVisible", err)
	}
}

// TestFenceReconnects: a fence connection killed on the server is
// replaced on the next call.
func TestFenceReconnects(t *testing.T) {
	t.Parallel()
	f := setup(t)
	r := f.fenceReader(10 * time.Second)
	ctx := context.Background()
	x, conn := f.openXact()
	if _, err := conn.Exec(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	if err := r.WaitVisible(ctx, []cdc.Commit{{Xid: uint64(x)}}); err != nil {
		t.Fatal(err)
	}
	pid := r.fence.conn.PgConn().PID()
	f.exec(`SELECT pg_terminate_backend(` + strconv.Itoa(int(pid)) + `)`)
	if err := r.WaitVisible(ctx, []cdc.Commit{{Xid: uint64(x)}}); err != nil {
		t.Fatalf("WaitVisible after the fence connection was killed = %v", err)
	}
	if r.fence.conn.PgConn().PID() == pid {
		t.Error("the killed connection is still in use")
	}
}

// TestCommitCarriesXid: Begin and Stream Start give the commit its xid.
func TestCommitCarriesXid(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`CREATE TABLE t (id int PRIMARY KEY, v text)`)
	rec := newRecorder(t)
	f.startStreaming(f.config(), rec)

	xidOf := func(sql string) uint64 {
		t.Helper()
		ctx := context.Background()
		tx, err := f.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
		var full uint64
		if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text::bigint`).Scan(&full); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		return uint64(uint32(full))
	}
	want := []uint64{xidOf(`INSERT INTO t VALUES (1, 'small')`)}
	if f.serverVersion() >= 140000 {
		// Large enough to be streamed while in progress.
		want = append(want, xidOf(`INSERT INTO t SELECT g, 'streamed' FROM generate_series(10, 20009) g`))
	}
	var got []uint64
	for _, c := range rec.WaitCommits(t, len(want)) {
		got = append(got, c.Xid)
	}
	if !slices.Equal(got, want) {
		t.Errorf("commit xids = %v, want %v", got, want)
	}
}

// TestFenceNeedsNoPrivilege: a role with LOGIN and nothing else can prove
// visibility (pg_current_snapshot is executable by PUBLIC).
func TestFenceNeedsNoPrivilege(t *testing.T) {
	t.Parallel()
	f := setup(t)
	role := "fence_" + strings.TrimPrefix(f.queryString(`SELECT current_database()`), "t_")
	if len(role) > 63 {
		role = role[:63]
	}
	f.exec(fmt.Sprintf(`CREATE ROLE %s LOGIN`, quoteIdent(role)))
	t.Cleanup(func() {
		_, _ = f.conn.Exec(context.Background(), fmt.Sprintf(`DROP ROLE IF EXISTS %s`, quoteIdent(role)))
	})
	cfg := f.config()
	cfg.DSN = strings.Replace(f.dsn, "postgres://postgres@", "postgres://"+role+"@", 1)
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.fence.open()
	defer r.fence.close()
	x, conn := f.openXact()
	if _, err := conn.Exec(context.Background(), `COMMIT`); err != nil {
		t.Fatal(err)
	}
	if err := r.WaitVisible(context.Background(), []cdc.Commit{{Xid: uint64(x)}}); err != nil {
		t.Fatalf("WaitVisible as a role without privileges = %v", err)
	}
	if user := r.fence.conn.Config().User; user != role {
		t.Errorf("fence connected as %q, want %q", user, role)
	}

	// Revoked from PUBLIC: WaitVisible gives up at once, not after its
	// timeout, and keeps doing so.
	f.exec(`REVOKE EXECUTE ON FUNCTION pg_current_snapshot() FROM PUBLIC`,
		`REVOKE EXECUTE ON FUNCTION txid_current_snapshot() FROM PUBLIC`)
	r.fence.close()
	r.cfg.FenceTimeout = time.Minute
	r.fence.open()
	for range 2 {
		start := time.Now()
		err := r.WaitVisible(context.Background(), []cdc.Commit{{Xid: uint64(x)}})
		if !errors.Is(err, cdc.ErrNotVisible) {
			t.Fatalf("WaitVisible without EXECUTE = %v, want ErrNotVisible", err)
		}
		if el := time.Since(start); el > 10*time.Second {
			t.Errorf("took %s: it waited instead of giving up", el)
		}
	}
}
