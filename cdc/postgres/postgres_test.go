package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/cdc/cdctest"
	"github.com/tagstream/tagstream/testcontainers"
)

func TestMain(m *testing.M) { testcontainers.Main(m) }

const waitTimeout = 30 * time.Second

// newRecorder is the shared recording handler (cdc/cdctest); start makes
// it acknowledge every commit through the reader it runs.
func newRecorder(t testing.TB) *cdctest.Recorder { return cdctest.New(t) }

// fixture is a fresh database with a connection for the test's SQL.
type fixture struct {
	t    *testing.T
	dsn  string
	slot string // slots are server-wide: one per test database
	conn *pgx.Conn
}

func setup(t *testing.T) *fixture {
	t.Helper()
	dsn := testcontainers.Postgres(t) + "&timezone=UTC"
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	f := &fixture{t: t, dsn: dsn, conn: conn}
	f.slot = f.queryString(`SELECT current_database()`)
	return f
}

func (f *fixture) exec(sqls ...string) {
	f.t.Helper()
	for _, s := range sqls {
		if _, err := f.conn.Exec(context.Background(), s); err != nil {
			f.t.Fatalf("%s: %v", s, err)
		}
	}
}

func (f *fixture) queryString(sql string, args ...any) string {
	f.t.Helper()
	var s string
	if err := f.conn.QueryRow(context.Background(), sql, args...).Scan(&s); err != nil {
		f.t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// currentLSN is the end of the WAL written so far, as a position.
func (f *fixture) currentLSN() cdc.Position {
	f.t.Helper()
	var lsn uint64
	if err := f.conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn() - '0/0'`).Scan(&lsn); err != nil {
		f.t.Fatal(err)
	}
	return cdc.Position(lsn)
}

func (f *fixture) config() Config {
	return Config{
		DSN:            f.dsn,
		Slot:           f.slot,
		StatusInterval: 200 * time.Millisecond,
		BackoffMin:     20 * time.Millisecond,
		BackoffMax:     200 * time.Millisecond,
	}
}

// running is a Reader running in the background.
type running struct {
	reader *Reader
	cancel context.CancelFunc
	done   chan error
}

// start runs a reader with cfg into rec and waits until it streams (the
// slot exists, so later writes are captured).
func (f *fixture) start(cfg Config, rec *cdctest.Recorder) *running {
	f.t.Helper()
	rd, err := New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	rec.Ack = rd.Ack
	ctx, cancel := context.WithCancel(context.Background())
	run := &running{reader: rd, cancel: cancel, done: make(chan error, 1)}
	go func() { run.done <- rd.Run(ctx, rec) }()
	f.t.Cleanup(func() { run.stop(f.t) })
	return run
}

func (f *fixture) startStreaming(cfg Config, rec *cdctest.Recorder) *running {
	f.t.Helper()
	run := f.start(cfg, rec)
	rec.WaitResumed(f.t, 1)
	return run
}

// stop cancels the reader and checks that Run returned nil.
func (run *running) stop(t *testing.T) {
	t.Helper()
	if run.cancel == nil {
		return
	}
	run.cancel()
	run.cancel = nil
	select {
	case err := <-run.done:
		if err != nil {
			t.Errorf("Run returned %v, want nil after cancel", err)
		}
	case <-time.After(waitTimeout):
		t.Errorf("Run did not return after cancel")
	}
}

func linesOf(cs []cdctest.Committed) [][]string {
	out := make([][]string, len(cs))
	for i, c := range cs {
		out[i] = c.Lines
	}
	return out
}

func assertLines(t *testing.T, got []cdctest.Committed, want ...[]string) {
	t.Helper()
	g := linesOf(got)
	if len(g) != len(want) {
		t.Fatalf("got %d commits, want %d:\n got %q\nwant %q", len(g), len(want), g, want)
	}
	for i := range want {
		if !slices.Equal(g[i], want[i]) {
			t.Errorf("commit %d:\n got %q\nwant %q", i, g[i], want[i])
		}
	}
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no dsn", Config{}},
		{"bad slot", Config{DSN: "postgres://localhost/db", Slot: "Tag-Stream"}},
		{"long publication", Config{DSN: "postgres://localhost/db", Publication: strings.Repeat("a", 64)}},
		{"empty table list", Config{DSN: "postgres://localhost/db", PublicationTables: []string{}}},
		{"bad table", Config{DSN: "postgres://localhost/db", PublicationTables: []string{"a.b.c"}}},
		{"pattern table", Config{DSN: "postgres://localhost/db", PublicationTables: []string{"public.*"}}},
		{"negative interval", Config{DSN: "postgres://localhost/db", StatusInterval: -time.Second}},
		{"bad dsn", Config{DSN: "postgres://user:secret@[::1"}},
	} {
		_, err := New(tc.cfg)
		if !errors.Is(err, ErrConfig) {
			t.Errorf("%s: err = %v, want ErrConfig", tc.name, err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error leaks the password: %v", tc.name, err)
		}
	}
	r, err := New(Config{DSN: "postgres://localhost/db"})
	if err != nil {
		t.Fatal(err)
	}
	if r.cfg.Slot != "tagstream" || r.cfg.Publication != "tagstream" || r.cfg.StatusInterval != 10*time.Second || r.Ready() {
		t.Fatalf("defaults: %+v ready=%v", r.cfg, r.Ready())
	}
}

func TestTypesAndOperations(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`CREATE TYPE mood AS ENUM ('sad', 'happy')`,
		`CREATE TABLE items (id int PRIMARY KEY, big bigint, u uuid, name text, price numeric(12,6), ok bool,
			at timestamptz, doc jsonb, nums int[], tags text[], m mood, empty text)`,
		`CREATE TABLE other (id int PRIMARY KEY)`)
	rec := newRecorder(t)
	run := f.startStreaming(f.config(), rec)

	f.exec(`INSERT INTO items VALUES (1, 9007199254740993, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'héllo, "w" ok',
		12345.6789, true, '2024-01-02 03:04:05.123456+02', '{"b": 2, "a": [1, 2]}', '{1,2,3}', '{a,"b c"}', 'happy', NULL)`)
	f.exec(`UPDATE items SET name = 'x', ok = false WHERE id = 1`)
	f.exec(`BEGIN`, `INSERT INTO other VALUES (7)`, `DELETE FROM items WHERE id = 1`, `COMMIT`)
	f.exec(`INSERT INTO items (id) VALUES (2)`, `INSERT INTO other VALUES (8)`)
	f.exec(`TRUNCATE items, other`)

	got := rec.WaitCommits(t, 6)
	assertLines(t, got,
		[]string{`insert public.items new=[id=1 big=9007199254740993 u=a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 name=héllo, "w" ok price=12345.678900 ok=true at=2024-01-02 01:04:05.123456+00 doc={"a": [1, 2], "b": 2} nums={1,2,3} tags={a,"b c"} m=happy empty=NULL]`},
		[]string{`update public.items new=[id=1 big=9007199254740993 u=a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 name=x price=12345.678900 ok=false at=2024-01-02 01:04:05.123456+00 doc={"a": [1, 2], "b": 2} nums={1,2,3} tags={a,"b c"} m=happy empty=NULL]`},
		[]string{`insert public.other new=[id=7]`, `delete public.items old=[id=1 big=<absent> u=<absent> name=<absent> price=<absent> ok=<absent> at=<absent> doc=<absent> nums=<absent> tags=<absent> m=<absent> empty=<absent>]`},
		[]string{`insert public.items new=[id=2 big=NULL u=NULL name=NULL price=NULL ok=NULL at=NULL doc=NULL nums=NULL tags=NULL m=NULL empty=NULL]`},
		[]string{`insert public.other new=[id=8]`},
		[]string{`truncate public.items`, `truncate public.other`},
	)
	if !run.reader.Ready() {
		t.Error("Ready() = false while streaming")
	}
	// Positions are commit end LSNs: below the WAL end now.
	if last := got[len(got)-1].Pos; last > f.currentLSN() || last == 0 {
		t.Errorf("last position %d, WAL end %d", last, f.currentLSN())
	}
}

func TestReplicaIdentityOldImages(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`CREATE TABLE d (id int, k int, v text, PRIMARY KEY (id, k))`,
		`CREATE TABLE f (id int PRIMARY KEY, v text, w text)`,
		`ALTER TABLE f REPLICA IDENTITY FULL`,
		`INSERT INTO d VALUES (1, 1, 'a')`, `INSERT INTO f VALUES (1, 'a', NULL)`)
	rec := newRecorder(t)
	f.startStreaming(f.config(), rec)

	f.exec(`UPDATE d SET v = 'b' WHERE id = 1`, // key unchanged: no old image
		`UPDATE d SET k = 2 WHERE id = 1`, // key changed: old key
		`DELETE FROM d WHERE id = 1`,
		`UPDATE f SET v = 'b' WHERE id = 1`,
		`DELETE FROM f WHERE id = 1`)
	assertLines(t, rec.WaitCommits(t, 5),
		[]string{`update public.d new=[id=1 k=1 v=b]`},
		[]string{`update public.d old=[id=1 k=1 v=<absent>] new=[id=1 k=2 v=b]`},
		[]string{`delete public.d old=[id=1 k=2 v=<absent>]`},
		[]string{`update public.f old=[id=1 v=a w=NULL] new=[id=1 v=b w=NULL]`},
		[]string{`delete public.f old=[id=1 v=b w=NULL]`},
	)
}

func TestUnchangedToast(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`CREATE TABLE docs (id int PRIMARY KEY, body text, n int)`,
		`ALTER TABLE docs ALTER body SET STORAGE EXTERNAL`, // out of line, uncompressed
		`INSERT INTO docs SELECT 1, string_agg(md5(i::text), ''), 1 FROM generate_series(1, 200) i`)
	rec := newRecorder(t)
	f.startStreaming(f.config(), rec)
	f.exec(`UPDATE docs SET n = 2 WHERE id = 1`,
		`UPDATE docs SET body = 'short' WHERE id = 1`)
	assertLines(t, rec.WaitCommits(t, 2),
		[]string{`update public.docs new=[id=1 body=<unchanged> n=2]`},
		[]string{`update public.docs new=[id=1 body=short n=2]`},
	)
}

// streamTxns reads how many transactions the slot streamed (PostgreSQL 14+).
func (f *fixture) streamTxns(slot string) int64 {
	f.t.Helper()
	var n int64
	if err := f.conn.QueryRow(context.Background(), `SELECT coalesce((SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = $1), 0)`, slot).Scan(&n); err != nil {
		f.t.Fatal(err)
	}
	return n
}

func (f *fixture) serverVersion() int {
	f.t.Helper()
	var v int
	if err := f.conn.QueryRow(context.Background(), `SELECT current_setting('server_version_num')::int`).Scan(&v); err != nil {
		f.t.Fatal(err)
	}
	return v
}

func TestStreamedLargeTransaction(t *testing.T) {
	t.Parallel()
	f := setup(t)
	if f.serverVersion() < 140000 {
		t.Skip("streaming of in-progress transactions needs PostgreSQL 14")
	}
	f.exec(`CREATE TABLE big (id int PRIMARY KEY, v text)`)
	rec := newRecorder(t)
	// One key per op and table: the Tx holds counts, nothing per row.
	rec.Render = func(c *cdc.Change) string { return c.Op.String() + " " + c.Table.Name }
	f.startStreaming(f.config(), rec)
	t0 := time.Now()
	f.exec(`INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 200000) g`)
	t1 := time.Now()
	assertLines(t, rec.WaitCommits(t, 1), []string{"insert big x200000"})
	t.Logf("insert took %s, delivery %s after", t1.Sub(t0), time.Since(t1))
	if n := rec.Snapshot().Begins; n != 1 {
		t.Errorf("Begin called %d times, want 1 (no subtransactions)", n)
	}
	f.exec(`SELECT pg_stat_force_next_flush()`)
	if n := f.streamTxns(f.slot); n < 1 {
		t.Errorf("stream_txns = %d: the transaction was not streamed", n)
	}
}

func TestRollbackYieldsNothing(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`CREATE TABLE t (id int PRIMARY KEY, label text)`)
	rec := newRecorder(t)
	f.startStreaming(f.config(), rec)
	f.exec(`BEGIN`, `INSERT INTO t VALUES (1, 'rolled back')`, `ROLLBACK`)
	// Large enough to be streamed before it is aborted.
	f.exec(`BEGIN`, `INSERT INTO t SELECT g, 'streamed, rolled back' FROM generate_series(10, 5009) g`, `ROLLBACK`)
	f.exec(`INSERT INTO t VALUES (2, 'kept')`)
	assertLines(t, rec.WaitCommits(t, 1), []string{`insert public.t new=[id=2 label=kept]`})
}

func TestStreamedSavepointRollback(t *testing.T) {
	t.Parallel()
	f := setup(t)
	if f.serverVersion() < 140000 {
		t.Skip("streaming needs PostgreSQL 14")
	}
	f.exec(`CREATE TABLE t (id int PRIMARY KEY, label text)`)
	rec := newRecorder(t)
	rec.Render = func(c *cdc.Change) string {
		return c.Op.String() + " " + string(c.New[1].Text)
	}
	f.startStreaming(f.config(), rec)
	f.exec(`BEGIN`,
		`INSERT INTO t SELECT g, 'kept' FROM generate_series(1, 2000) g`,
		`SAVEPOINT a`,
		`INSERT INTO t SELECT g, 'aborted a' FROM generate_series(10001, 12000) g`,
		`SAVEPOINT b`,
		`INSERT INTO t SELECT g, 'aborted b' FROM generate_series(20001, 22000) g`,
		`ROLLBACK TO SAVEPOINT a`,
		`SAVEPOINT c`,
		`INSERT INTO t SELECT g, 'released c' FROM generate_series(30001, 32000) g`,
		`RELEASE SAVEPOINT c`,
		`INSERT INTO t VALUES (40000, 'after')`,
		`COMMIT`)
	// Subtransactions are merged into the top transaction at commit, so the
	// order of changes across them is not kept (a Tx is a set of tags).
	got := linesOf(rec.WaitCommits(t, 1))
	if len(got) != 1 || !slices.Equal(slices.Sorted(slices.Values(got[0])), []string{"insert after", "insert kept x2000", "insert released c x2000"}) {
		t.Fatalf("got %q, want the kept, released and after rows only", got)
	}
	f.exec(`SELECT pg_stat_force_next_flush()`)
	if n := f.streamTxns(f.slot); n < 1 {
		t.Errorf("stream_txns = %d: the transaction was not streamed", n)
	}
}

func TestInterleavedStreamedTransactions(t *testing.T) {
	t.Parallel()
	f := setup(t)
	if f.serverVersion() < 140000 {
		t.Skip("streaming needs PostgreSQL 14")
	}
	f.exec(`CREATE TABLE t (id int PRIMARY KEY, label text)`)
	rec := newRecorder(t)
	rec.Render = func(c *cdc.Change) string { return c.Op.String() + " " + string(c.New[1].Text) }
	f.startStreaming(f.config(), rec)

	ctx := context.Background()
	other, err := pgx.Connect(ctx, f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	txA, err := f.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	txB, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		if _, err := txA.Exec(ctx, `INSERT INTO t SELECT g, 'a' FROM generate_series($1::int, $1::int + 999) g`, i*1000); err != nil {
			t.Fatal(err)
		}
		if _, err := txB.Exec(ctx, `INSERT INTO t SELECT g, 'b' FROM generate_series($1::int, $1::int + 999) g`, 100000+i*1000); err != nil {
			t.Fatal(err)
		}
	}
	if err := txB.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := txA.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	assertLines(t, rec.WaitCommits(t, 2), []string{"insert b x4000"}, []string{"insert a x4000"})
	f.exec(`SELECT pg_stat_force_next_flush()`)
	if n := f.streamTxns(f.slot); n < 2 {
		t.Errorf("stream_txns = %d, want both transactions streamed", n)
	}
}

func TestRestartResumesAfterAck(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`CREATE TABLE t (id int PRIMARY KEY)`)
	rec1 := newRecorder(t)
	run1 := f.startStreaming(f.config(), rec1)
	f.exec(`INSERT INTO t VALUES (1)`)
	first := rec1.WaitCommits(t, 1)[0]
	rec1.SetAckMax(first.Pos) // the second transaction is delivered but never acknowledged
	f.exec(`INSERT INTO t VALUES (2)`)
	rec1.WaitCommits(t, 2)
	run1.stop(t)
	if run1.reader.Ready() {
		t.Error("Ready() after Run returned")
	}
	// The slot confirms at least the acknowledged transaction and less than
	// the unacknowledged one (a keepalive between the two may have moved it
	// past the first's end: that is safe, the second commits later).
	var confirmed cdc.Position
	if err := f.conn.QueryRow(context.Background(), `SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = $1`, f.slot).Scan(&confirmed); err != nil {
		t.Fatal(err)
	}
	second := rec1.Snapshot().Commits[1].Pos
	if confirmed < first.Pos || confirmed >= second {
		t.Errorf("confirmed_flush_lsn = %s, want in [%s, %s)", lsnText(confirmed), lsnText(first.Pos), lsnText(second))
	}
	f.exec(`INSERT INTO t VALUES (3)`)

	rec2 := newRecorder(t)
	f.start(f.config(), rec2)
	assertLines(t, rec2.WaitCommits(t, 2), []string{`insert public.t new=[id=2]`}, []string{`insert public.t new=[id=3]`})
	if r := rec2.WaitResumed(t, 1); r[0] != confirmed {
		t.Errorf("resumed from %d, want the slot's confirmed position %d", r[0], confirmed)
	}
}

func lsnText(p cdc.Position) string { return fmt.Sprintf("%X/%X", uint64(p)>>32, uint32(p)) }

func TestReconnectAfterWalsenderKilled(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`CREATE TABLE t (id int PRIMARY KEY)`)
	rec := newRecorder(t)
	f.startStreaming(f.config(), rec)
	f.exec(`INSERT INTO t VALUES (1)`)
	rec.WaitCommits(t, 1)
	f.exec(`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '` + f.slot + `'`)
	f.exec(`INSERT INTO t VALUES (2)`, `INSERT INTO t VALUES (3)`)
	got := rec.WaitCommits(t, 3)
	assertLines(t, got,
		[]string{`insert public.t new=[id=1]`}, []string{`insert public.t new=[id=2]`}, []string{`insert public.t new=[id=3]`})
	if r := rec.WaitResumed(t, 2); r[1] < got[0].Pos {
		t.Errorf("resumed at %d after reconnect, before the acknowledged %d", r[1], got[0].Pos)
	}
	if lost := rec.Snapshot().Lost; len(lost) != 0 {
		t.Errorf("Lost called: %v", lost)
	}
}

// logSignal is a slog handler that signals when a record's message
// contains a substring.
type logSignal struct {
	substr string
	hit    chan struct{}
	once   *sync.Once
}

func (l logSignal) Enabled(context.Context, slog.Level) bool { return true }
func (l logSignal) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, l.substr) {
		l.once.Do(func() { close(l.hit) })
	}
	return nil
}
func (l logSignal) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l logSignal) WithGroup(string) slog.Handler      { return l }

func TestSecondReaderWaitsForSlot(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`CREATE TABLE t (id int PRIMARY KEY)`)
	rec1 := newRecorder(t)
	run1 := f.startStreaming(f.config(), rec1)

	waiting := logSignal{substr: "in use by another process", hit: make(chan struct{}), once: &sync.Once{}}
	cfg2 := f.config()
	cfg2.Logger = slog.New(waiting)
	rec2 := newRecorder(t)
	run2 := f.start(cfg2, rec2)
	select {
	case <-waiting.hit:
	case <-time.After(waitTimeout):
		t.Fatal("the second reader never reported the slot in use")
	}
	if run2.reader.Ready() {
		t.Error("the second reader is ready while the first holds the slot")
	}
	f.exec(`INSERT INTO t VALUES (1)`)
	rec1.WaitCommits(t, 1)
	run1.stop(t)
	f.exec(`INSERT INTO t VALUES (2)`)
	assertLines(t, rec2.WaitCommits(t, 1), []string{`insert public.t new=[id=2]`})
	s1, s2 := rec1.Snapshot(), rec2.Snapshot()
	if len(s2.Resumed) != 1 || s2.Resumed[0] < s1.Commits[0].Pos || s2.Resumed[0] >= s2.Commits[0].Pos {
		t.Errorf("second reader resumed at %v, want one position in [%d, %d)", s2.Resumed, s1.Commits[0].Pos, s2.Commits[0].Pos)
	}
}

func TestAddColumnMidStream(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`CREATE TABLE t (id int PRIMARY KEY, a text)`)
	rec := newRecorder(t)
	var tables []*cdc.Table
	var mu sync.Mutex
	rec.Render = func(c *cdc.Change) string {
		mu.Lock()
		tables = append(tables, c.Table)
		mu.Unlock()
		return cdctest.Render(c)
	}
	f.startStreaming(f.config(), rec)
	f.exec(`INSERT INTO t VALUES (1, 'x')`, `INSERT INTO t VALUES (2, 'y')`,
		`ALTER TABLE t ADD COLUMN b int DEFAULT 5`,
		`INSERT INTO t VALUES (3, 'z', 6)`, `UPDATE t SET a = 'w' WHERE id = 1`,
		`BEGIN`, `ALTER TABLE t ADD COLUMN c text`, `INSERT INTO t VALUES (4, 'v', 7, 'c')`, `COMMIT`)
	assertLines(t, rec.WaitCommits(t, 5),
		[]string{`insert public.t new=[id=1 a=x]`},
		[]string{`insert public.t new=[id=2 a=y]`},
		[]string{`insert public.t new=[id=3 a=z b=6]`},
		[]string{`update public.t new=[id=1 a=w b=5]`},
		[]string{`insert public.t new=[id=4 a=v b=7 c=c]`},
	)
	mu.Lock()
	defer mu.Unlock()
	if len(tables) != 5 || tables[0] != tables[1] || tables[1] == tables[2] || tables[2] != tables[3] || tables[3] == tables[4] {
		t.Errorf("table pointers: want one per column layout, got %p", tables)
	}
}

func TestSlotDroppedWhileStreaming(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`CREATE TABLE t (id int PRIMARY KEY)`)
	rec := newRecorder(t)
	f.startStreaming(f.config(), rec)
	f.exec(`INSERT INTO t VALUES (1)`)
	rec.WaitCommits(t, 1)
	// The reader reconnects quickly: terminate and drop until the drop wins.
	deadline := time.Now().Add(waitTimeout)
	for {
		_, _ = f.conn.Exec(context.Background(), `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '`+f.slot+`'`)
		_, err := f.conn.Exec(context.Background(), `SELECT pg_drop_replication_slot('`+f.slot+`')`)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("could not drop the slot: %v", err)
		}
	}
	// Terminating the walsender may make the reader resume more than once.
	rec.WaitFor(t, "Lost, then Resumed", (*cdctest.State).ResumedAfterLost)
	f.exec(`INSERT INTO t VALUES (2)`)
	assertLines(t, rec.WaitCommits(t, 2), []string{`insert public.t new=[id=1]`}, []string{`insert public.t new=[id=2]`})
	if lost := rec.Snapshot().Lost; len(lost) != 1 || !strings.Contains(lost[0], `replication slot "`+f.slot+`" was dropped`) {
		t.Errorf("lost = %q", lost)
	}
}

// TestSlotInvalidated makes the server invalidate the slot (wal_status
// lost) while the reader is stopped: the next Run reports Lost, recreates
// the slot and streams on. Not parallel: it shrinks max_slot_wal_keep_size
// for the whole server, and sequential tests finish before parallel ones
// start.
func TestSlotInvalidated(t *testing.T) {
	f := setup(t)
	if f.serverVersion() < 130000 {
		t.Skip("max_slot_wal_keep_size needs PostgreSQL 13")
	}
	f.exec(`CREATE TABLE t (id int PRIMARY KEY, pad text)`)
	rec1 := newRecorder(t)
	run1 := f.startStreaming(f.config(), rec1)
	f.exec(`INSERT INTO t VALUES (1, '')`)
	rec1.WaitCommits(t, 1)
	run1.stop(t)

	f.exec(`ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'`, `SELECT pg_reload_conf()`)
	t.Cleanup(func() {
		_, _ = f.conn.Exec(context.Background(), `ALTER SYSTEM RESET max_slot_wal_keep_size`)
		_, _ = f.conn.Exec(context.Background(), `SELECT pg_reload_conf()`)
	})
	for i := 0; i < 50; i++ {
		f.exec(fmt.Sprintf(`INSERT INTO t VALUES (%d, repeat('x', 1000))`, 100+i), `SELECT pg_switch_wal()`)
		if i%5 == 4 {
			f.exec(`CHECKPOINT`)
			if f.queryString(`SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = '`+f.slot+`'`) == "lost" {
				break
			}
		}
	}
	if s := f.queryString(`SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = '` + f.slot + `'`); s != "lost" {
		t.Fatalf("wal_status = %q, could not invalidate the slot", s)
	}
	f.exec(`ALTER SYSTEM RESET max_slot_wal_keep_size`, `SELECT pg_reload_conf()`)

	rec2 := newRecorder(t)
	f.startStreaming(f.config(), rec2)
	lost := rec2.Snapshot().Lost
	if len(lost) != 1 || !strings.Contains(lost[0], `replication slot "`+f.slot+`" was invalidated (wal_status "lost"`) {
		t.Fatalf("lost = %q", lost)
	}
	f.exec(`INSERT INTO t VALUES (2, 'after')`)
	assertLines(t, rec2.WaitCommits(t, 1), []string{`insert public.t new=[id=2 pad=after]`})
}

func TestHeartbeatAdvancesQuietSlot(t *testing.T) {
	t.Parallel()
	f := setup(t)
	cfg := f.config()
	cfg.HeartbeatInterval = 50 * time.Millisecond
	rec := newRecorder(t)
	f.startStreaming(cfg, rec)
	start := f.queryString(`SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '` + f.slot + `'`)
	deadline := time.Now().Add(waitTimeout)
	for {
		var advanced bool
		if err := f.conn.QueryRow(context.Background(), `SELECT confirmed_flush_lsn > $1::pg_lsn FROM pg_replication_slots WHERE slot_name = '`+f.slot+`'`, start).Scan(&advanced); err != nil {
			t.Fatal(err)
		}
		if advanced {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the slot did not advance on a quiet database with heartbeats on")
		}
		time.Sleep(50 * time.Millisecond) // polling the server's state; there is no signal to wait on
	}
	if rec.Snapshot().Progress == 0 {
		t.Error("Progress was never reported")
	}
}

func TestPublicationTables(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`CREATE SCHEMA app`, `CREATE TABLE app.a (id int PRIMARY KEY)`, `CREATE TABLE b (id int PRIMARY KEY)`, `CREATE TABLE c (id int PRIMARY KEY)`)
	cfg := f.config()
	cfg.PublicationTables = []string{"app.a", "b"}
	rec := newRecorder(t)
	run := f.startStreaming(cfg, rec)
	f.exec(`INSERT INTO c VALUES (1)`, `INSERT INTO app.a VALUES (1)`, `INSERT INTO b VALUES (1)`)
	assertLines(t, rec.WaitCommits(t, 2), []string{`insert app.a new=[id=1]`}, []string{`insert public.b new=[id=1]`})
	run.stop(t)
	// A later run that needs c adds it to the existing publication.
	cfg.PublicationTables = []string{"app.a", "b", "public.c"}
	rec2 := newRecorder(t)
	f.startStreaming(cfg, rec2)
	f.exec(`INSERT INTO c VALUES (2)`)
	assertLines(t, rec2.WaitCommits(t, 1), []string{`insert public.c new=[id=2]`})
}

func TestRunConfigurationErrors(t *testing.T) {
	t.Parallel()
	f := setup(t)
	role := "norepl_" + strings.TrimPrefix(f.queryString(`SELECT current_database()`), "t_")
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
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	err = r.Run(ctx, newRecorder(t))
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "WITH REPLICATION") {
		t.Fatalf("Run = %v, want ErrConfig naming ALTER ROLE … WITH REPLICATION", err)
	}

	cfg = f.config()
	cfg.DSN = strings.Replace(f.dsn, "/t_", "/nosuchdb_", 1)
	r, _ = New(cfg)
	if err := r.Run(ctx, newRecorder(t)); !errors.Is(err, ErrConfig) {
		t.Fatalf("Run on a missing database = %v, want ErrConfig", err)
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`CREATE TABLE todos (id int PRIMARY KEY, title text, user_id int)`,
		`CREATE TABLE audit (at timestamptz, what text)`, // no key at all
		`CREATE TABLE users (id int PRIMARY KEY, name text, shout text GENERATED ALWAYS AS (upper(name)) STORED)`,
		`ALTER TABLE users REPLICA IDENTITY FULL`,
		`CREATE TABLE user_roles (id int PRIMARY KEY)`,
		// A partitioned table: m1 default identity, m2 full; only m1 published.
		`CREATE TABLE m (id int PRIMARY KEY, user_id int) PARTITION BY RANGE (id)`,
		`CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (100)`,
		`CREATE TABLE m2 PARTITION OF m FOR VALUES FROM (100) TO (200)`,
		`ALTER TABLE m2 REPLICA IDENTITY FULL`,
		`CREATE PUBLICATION tagstream FOR TABLE todos, audit, m1`)
	reqs := []cdc.Requirement{
		{Rule: "todo", Schema: "public", Table: "todos", Columns: []string{"id", "user_id"}, NeedsOld: true},
		{Rule: "todo-key", Schema: "public", Table: "todos", Columns: []string{"id"}, NeedsOld: true}, // the key is in old rows: precise
		{Rule: "users", Schema: "public", Table: "users", Columns: []string{"id", "email", "shout"}, NeedsOld: true},
		{Rule: "audit", Schema: "public", Table: "audit", Columns: []string{"what"}},
		{Rule: "ghost", Schema: "public", Table: "ghosts", Columns: []string{"id"}},
		{Rule: "pattern", Schema: "public", Table: "user_*", Columns: []string{"id"}},
		{Rule: "nomatch", Schema: "other", Table: "*", Columns: []string{"id"}},
		{Rule: "m", Schema: "public", Table: "m", Columns: []string{"id", "user_id"}, NeedsOld: true},
		{Rule: "m1", Schema: "public", Table: "m1", Columns: []string{"id"}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	got, err := Check(ctx, f.config(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	keep := cdc.Finding{Severity: cdc.Warning, Message: `max_slot_wal_keep_size is -1 (unlimited): while tagstream is stopped or stuck, its slot keeps WAL until the disk is full`,
		Fix: `ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf(); -- size it to what the disk can spare; if the slot loses WAL, tagstream resets its clients and continues`}
	unfixable := []cdc.Finding{
		{Severity: cdc.Error, Rule: "users", Message: `column "email" does not exist in table public.users`, Fix: ""},
		{Severity: cdc.Error, Rule: "ghost", Message: `table public.ghosts does not exist`, Fix: ""},
		keep,
		{Severity: cdc.Warning, Rule: "users", Message: "column \"shout\" of table public.users is generated: logical replication does not publish generated columns, so the rule reads it as unknown (`*`)"},
		{Severity: cdc.Warning, Rule: "nomatch", Message: `no table matches other.*`, Fix: ""},
	}
	want := []cdc.Finding{
		unfixable[0],
		{Severity: cdc.Error, Rule: "users", Message: `publication "tagstream" does not include table public.users`, Fix: `ALTER PUBLICATION "tagstream" ADD TABLE "public"."users";`, Apply: true},
		{Severity: cdc.Error, Rule: "audit", Message: `table public.audit has no replica identity: once published, UPDATE and DELETE on it fail`, Fix: `ALTER TABLE "public"."audit" REPLICA IDENTITY FULL;`, Apply: true},
		unfixable[1],
		{Severity: cdc.Error, Rule: "pattern", Message: `publication "tagstream" does not include table public.user_roles`, Fix: `ALTER PUBLICATION "tagstream" ADD TABLE "public"."user_roles";`, Apply: true},
		{Severity: cdc.Error, Rule: "m", Message: `publication "tagstream" does not include partitions public.m2 of table public.m`, Fix: `ALTER PUBLICATION "tagstream" ADD TABLE "public"."m";`, Apply: true},
		keep,
		{Severity: cdc.Warning, Rule: "todo", Message: `the rule reads old values of user_id but table public.todos sends only its key in old rows (REPLICA IDENTITY DEFAULT): unknown old values become wildcards`, Fix: `ALTER TABLE "public"."todos" REPLICA IDENTITY FULL;`, Apply: true},
		unfixable[3],
		unfixable[4],
		// The partitioned table is judged by its leaves: m2 is FULL, m1 not.
		{Severity: cdc.Warning, Rule: "m", Message: `the rule reads old values of user_id but table public.m1 sends only its key in old rows (REPLICA IDENTITY DEFAULT): unknown old values become wildcards`, Fix: `ALTER TABLE "public"."m1" REPLICA IDENTITY FULL;`, Apply: true},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("findings:\n got %+v\nwant %+v", got, want)
	}

	// Applying every fix that may be applied leaves the others.
	for _, fd := range got {
		if fd.Apply {
			if err := ApplyFix(ctx, f.config(), fd.Fix); err != nil {
				t.Fatal(err)
			}
		}
	}
	got, err = Check(ctx, f.config(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []cdc.Finding{unfixable[0], unfixable[1], keep, unfixable[3], unfixable[4]}) {
		t.Errorf("after applying the fixes:\n got %+v", got)
	}
}
