package mysql_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"go.uber.org/goleak"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/cdc/cdctest"
	"github.com/tagstream/tagstream/cdc/mysql"
	"github.com/tagstream/tagstream/testcontainers"
)

func TestMain(m *testing.M) { testcontainers.Main(m) }

// newRecorder is the shared recording handler (cdc/cdctest), keeping the
// non-empty commits of one schema (the binlog carries the whole server),
// rendered by renderChange.
func newRecorder(t testing.TB, schema string) *cdctest.Recorder {
	r := cdctest.New(t)
	r.Schema, r.SkipEmpty, r.Render = schema, true, renderChange
	return r
}

func renderChange(c *cdc.Change) string {
	s := c.Op.String() + " " + c.Table.Name
	if c.Old != nil {
		s += " old=" + renderImage(c.Table, c.Old)
	}
	if c.New != nil {
		s += " new=" + renderImage(c.Table, c.New)
	}
	return s
}

func renderImage(t *cdc.Table, vals []cdc.Value) string {
	parts := make([]string, len(vals))
	for i, v := range vals {
		var s string
		switch v.Kind {
		case cdc.Null:
			s = "NULL"
		case cdc.Absent:
			s = "?"
		case cdc.Unchanged:
			s = "<unchanged>"
		default:
			s = string(v.Text)
			if strings.ContainsAny(s, " \"\\") || strconv.Quote(s) != `"`+s+`"` {
				s = strconv.Quote(s)
			}
		}
		parts[i] = t.Columns[i] + "=" + s
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// env is one test's database and reader settings.
type env struct {
	t      testing.TB
	dsn    string
	schema string
	conn   *client.Conn
	cfg    mysql.Config
}

func setup(t testing.TB) *env {
	t.Helper()
	// Registered first, so it runs last: after the readers stopped.
	var before goleak.Option
	t.Cleanup(func() {
		if before != nil {
			goleak.VerifyNone(t, before)
		}
	})
	dsn := testcontainers.MySQL(t)
	before = goleak.IgnoreCurrent()
	e := &env{t: t, dsn: dsn}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	e.schema = strings.TrimPrefix(u.Path, "/")
	e.conn = e.connect()
	e.cfg = mysql.Config{
		DSN:         dsn,
		StateDir:    t.TempDir(),
		Heartbeat:   200 * time.Millisecond,
		ReadTimeout: 3 * time.Second,
		BackoffMin:  20 * time.Millisecond,
		BackoffMax:  200 * time.Millisecond,
		Logger:      slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	return e
}

func (e *env) connect() *client.Conn {
	e.t.Helper()
	d, err := mysql.ParseDSN(e.dsn)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := client.Connect(d.Addr(), d.User, d.Password, d.Database)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

func (e *env) exec(stmts ...string) {
	e.t.Helper()
	execOn(e.t, e.conn, stmts...)
}

func execOn(t testing.TB, c *client.Conn, stmts ...string) {
	t.Helper()
	for _, q := range stmts {
		if _, err := c.Execute(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// running is a Reader running in the background until stop.
type running struct {
	r    *mysql.Reader
	rec  *cdctest.Recorder
	stop func() error
}

func newReader(e *env) (*mysql.Reader, error) { return mysql.New(e.cfg) }

// start runs a reader and waits until it streams.
func (e *env) start(rec *cdctest.Recorder) *running {
	e.t.Helper()
	r, err := newReader(e)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	var runErr error
	go func() {
		runErr = r.Run(ctx, rec)
		close(finished)
		rec.Signal()
	}()
	stop := func() error {
		cancel()
		<-finished
		return runErr
	}
	e.t.Cleanup(func() { _ = stop() })
	n := len(rec.Snapshot().Resumed)
	rec.WaitFor(e.t, "Resumed", func(s *cdctest.State) bool {
		select {
		case <-finished:
			e.t.Errorf("Run returned before streaming: %v", runErr)
			return true
		default:
		}
		return len(s.Resumed) > n
	})
	if e.t.Failed() {
		e.t.FailNow()
	}
	if !r.Ready() {
		e.t.Fatal("Ready() is false while streaming")
	}
	return &running{r: r, rec: rec, stop: stop}
}

func TestRowChanges(t *testing.T) {
	e := setup(t)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY, n VARCHAR(20), u INT)")
	rec := newRecorder(t, e.schema)
	e.start(rec)
	e.exec(
		"INSERT INTO t VALUES (1, 'a', 7)",
		"UPDATE t SET n = 'b', u = 9 WHERE id = 1",
		"DELETE FROM t WHERE id = 1",
		"INSERT INTO t VALUES (2, 'x', 1), (3, 'y', NULL)",
		"UPDATE t SET u = 5",
		"BEGIN",
		"INSERT INTO t VALUES (4, 'z', 4)",
		"UPDATE t SET n = 'w' WHERE id = 2",
		"DELETE FROM t WHERE id = 3",
		"COMMIT",
		"BEGIN",
		"INSERT INTO t VALUES (5, 'gone', 5)",
		"ROLLBACK",
		"INSERT INTO t VALUES (6, 'sentinel', NULL)",
	)
	got := rec.Lines(t, 7)
	want := []string{
		"insert t new=[id=1 n=a u=7]",
		"update t old=[id=1 n=a u=7] new=[id=1 n=b u=9]",
		"delete t old=[id=1 n=b u=9]",
		"insert t new=[id=2 n=x u=1] | insert t new=[id=3 n=y u=NULL]",
		"update t old=[id=2 n=x u=1] new=[id=2 n=x u=5] | update t old=[id=3 n=y u=NULL] new=[id=3 n=y u=5]",
		"insert t new=[id=4 n=z u=4] | update t old=[id=2 n=x u=5] new=[id=2 n=w u=5] | delete t old=[id=3 n=y u=5]",
		"insert t new=[id=6 n=sentinel u=NULL]",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("commits:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Idle: heartbeats report the binlog head, at or past the last commit.
	last := rec.Positions()[len(got)-1]
	rec.WaitFor(t, "Progress past the last commit", func(s *cdctest.State) bool { return s.Progress >= last })
}

func TestMinimalImageColumnsAreAbsent(t *testing.T) {
	e := setup(t)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY, n VARCHAR(20), u INT)", "INSERT INTO t VALUES (1, 'a', 7)")
	rec := newRecorder(t, e.schema)
	e.start(rec)
	e.exec(
		"SET SESSION binlog_row_image = 'MINIMAL'",
		"UPDATE t SET n = 'b' WHERE id = 1",
		"DELETE FROM t WHERE id = 1",
	)
	got := rec.Lines(t, 2)
	want := []string{
		"update t old=[id=1 n=? u=?] new=[id=? n=b u=?]",
		"delete t old=[id=1 n=? u=?]",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("commits:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestDDL(t *testing.T) {
	e := setup(t)
	e.exec(
		"CREATE TABLE a (id INT PRIMARY KEY)", "CREATE TABLE b (id INT PRIMARY KEY)",
		"CREATE TABLE c (id INT PRIMARY KEY)", "CREATE TABLE d (id INT PRIMARY KEY)",
		"CREATE TABLE e (id INT PRIMARY KEY)",
	)
	rec := newRecorder(t, e.schema)
	e.start(rec)
	e.exec(
		"INSERT INTO a VALUES (1)",
		"TRUNCATE TABLE a",
		"DROP TABLE b",
		"RENAME TABLE c TO c2, d TO d2",
		"ALTER TABLE e RENAME TO e2",
		"ALTER TABLE a ADD COLUMN note VARCHAR(10)",
		"INSERT INTO a VALUES (2, 'hi')",
		"DROP TABLE IF EXISTS c2, `"+e.schema+"`.d2",
	)
	got := rec.Lines(t, 7)
	want := []string{
		"insert a new=[id=1]",
		"truncate a",
		"truncate b",
		"truncate c | truncate d",
		"truncate e",
		"insert a new=[id=2 note=hi]",
		"truncate c2 | truncate d2",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("commits:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestAlterTableNewLayoutNewTable(t *testing.T) {
	e := setup(t)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY)")
	rec := newRecorder(t, e.schema)
	e.start(rec)
	e.exec("INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)")
	rec.Lines(t, 2)
	first := rec.Table("t")
	e.exec("INSERT INTO t VALUES (3)")
	rec.Lines(t, 3)
	same := rec.Table("t")
	if same != first {
		t.Fatal("an unchanged layout got a new *cdc.Table")
	}
	e.exec("ALTER TABLE t ADD COLUMN label VARCHAR(5) DEFAULT 'x'", "INSERT INTO t (id) VALUES (4)")
	got := rec.Lines(t, 4)
	if got[3] != "insert t new=[id=4 label=x]" {
		t.Fatalf("after ALTER TABLE: %q", got[3])
	}
	changed := rec.Table("t")
	if changed == first || !slices.Equal(first.Columns, []string{"id"}) {
		t.Fatalf("ALTER TABLE: old table %v, new table %v", first, changed)
	}
}

func TestTypes(t *testing.T) {
	e := setup(t)
	e.exec(`CREATE TABLE v (
		id INT PRIMARY KEY,
		d DECIMAL(38,19), neg DECIMAL(10,2), ub BIGINT UNSIGNED, sb BIGINT, ti TINYINT(1), si SMALLINT UNSIGNED,
		dt DATETIME(6), dt0 DATETIME, ts TIMESTAMP(3) NULL, dd DATE, tm TIME, y YEAR,
		js JSON, en ENUM('small','large'), st SET('r','g','b'), bt BIT(5),
		vb VARBINARY(8), bl BLOB, ch CHAR(4), fl FLOAT, db DOUBLE, nul VARCHAR(3)
	)`)
	rec := newRecorder(t, e.schema)
	e.start(rec)
	e.exec(
		"SET time_zone = '+05:00'",
		`INSERT INTO v VALUES (1,
		1234567890123456789.1234567890123456789, -0.50, 18446744073709551615, -9223372036854775808, 1, 65535,
		'2024-02-29 23:59:58.123456', '2024-01-02 03:04:05', '2024-01-02 10:00:00.250', '2024-12-31', '-12:30:01', 2024,
		'{"a": [1, "x,y"], "b": null}', 'large', 'r,b', b'10101',
		x'00ff41', 'blob\ndata', 'ab', 1.5, 0.1, NULL)`,
	)
	got := rec.Lines(t, 1)
	want := "insert v new=[id=1" +
		" d=1234567890123456789.1234567890123456789 neg=-0.50 ub=18446744073709551615 sb=-9223372036854775808 ti=1 si=65535" +
		` dt="2024-02-29 23:59:58.123456" dt0="2024-01-02 03:04:05" ts="2024-01-02 05:00:00.250" dd=2024-12-31 tm=-12:30:01 y=2024` +
		` js="{\"a\": [1, \"x,y\"], \"b\": null}" en=large st=r,b bt=21` +
		` vb="\x00\xffA" bl="blob\ndata" ch=ab fl=1.5 db=0.1 nul=NULL]`
	if got[0] != want {
		t.Fatalf("got  %s\nwant %s", got[0], want)
	}
}

// TestTemporalAndIntegerEdges covers the values decoded outside go-mysql's
// defaults: datetimes arrive as time.Time (except zero dates and years
// before 1970), integers as signed whatever the column's signedness.
func TestTemporalAndIntegerEdges(t *testing.T) {
	e := setup(t)
	e.exec(`CREATE TABLE v (
		id INT PRIMARY KEY,
		dt3 DATETIME(3), dt1 DATETIME(1), ts TIMESTAMP NULL, ts6 TIMESTAMP(6) NULL, dt DATETIME,
		ut TINYINT UNSIGNED, us SMALLINT UNSIGNED, um MEDIUMINT UNSIGNED, ui INT UNSIGNED, ub BIGINT UNSIGNED,
		st TINYINT, sm MEDIUMINT, si INT
	)`)
	rec := newRecorder(t, e.schema)
	e.start(rec)
	e.exec(
		"SET time_zone = '-03:30', sql_mode = ''",
		`INSERT INTO v VALUES (1, '2024-02-29 23:59:58.123', '1969-12-31 23:59:59.9', '2001-02-03 04:05:06', '2038-01-18 23:44:07.000001', '0000-00-00 00:00:00',
		255, 65535, 16777215, 4294967295, 18446744073709551615, -128, -8388608, -2147483648)`,
		`INSERT INTO v VALUES (2, '0000-00-00 00:00:00.000', '1000-01-01 00:00:00.5', '0000-00-00 00:00:00', '1970-01-01 03:30:01.5', '9999-12-31 23:59:59',
		0, 1, 2, 3, 4, 127, 8388607, 2147483647)`,
	)
	got := rec.Lines(t, 2)
	want := []string{
		`insert v new=[id=1 dt3="2024-02-29 23:59:58.123" dt1="1969-12-31 23:59:59.9" ts="2001-02-03 07:35:06" ts6="2038-01-19 03:14:07.000001" dt="0000-00-00 00:00:00"` +
			` ut=255 us=65535 um=16777215 ui=4294967295 ub=18446744073709551615 st=-128 sm=-8388608 si=-2147483648]`,
		`insert v new=[id=2 dt3="0000-00-00 00:00:00.000" dt1="1000-01-01 00:00:00.5" ts="0000-00-00 00:00:00" ts6="1970-01-01 07:00:01.500000" dt="9999-12-31 23:59:59"` +
			` ut=0 us=1 um=2 ui=3 ub=4 st=127 sm=8388607 si=2147483647]`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestRestartFromCheckpoint(t *testing.T) {
	e := setup(t)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY)")
	rec := newRecorder(t, e.schema)
	run := e.start(rec)
	e.exec("INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)")
	rec.Lines(t, 2)
	run.r.Ack(rec.Snapshot().Commits[0].Pos) // the hub accepted only the first
	if err := run.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	e.exec("INSERT INTO t VALUES (3)") // while stopped

	rec2 := newRecorder(t, e.schema)
	run2 := e.start(rec2)
	if rec2.Snapshot().Resumed[0] != rec.Snapshot().Commits[0].Pos {
		t.Fatalf("Resumed(%d), want the acked position %d", rec2.Snapshot().Resumed[0], rec.Snapshot().Commits[0].Pos)
	}
	e.exec("INSERT INTO t VALUES (4)")
	got := rec2.Lines(t, 3)
	want := []string{"insert t new=[id=2]", "insert t new=[id=3]", "insert t new=[id=4]"}
	if !slices.Equal(got, want) {
		t.Fatalf("after restart:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if rec2.Snapshot().Commits[0].Pos != rec.Snapshot().Commits[1].Pos {
		t.Fatalf("re-delivered at %d, first delivered at %d", rec2.Snapshot().Commits[0].Pos, rec.Snapshot().Commits[1].Pos)
	}
	// Everything acked: the next start delivers nothing old.
	last := rec2.Snapshot().Commits[2].Pos
	run2.r.Ack(last)
	if err := run2.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	rec3 := newRecorder(t, e.schema)
	e.start(rec3)
	e.exec("INSERT INTO t VALUES (5)")
	if got := rec3.Lines(t, 1); !slices.Equal(got, []string{"insert t new=[id=5]"}) {
		t.Fatalf("third start: %q", got)
	}
	if rec3.Snapshot().Resumed[0] != last {
		t.Fatalf("Resumed(%d), want %d", rec3.Snapshot().Resumed[0], last)
	}
}

// killDumps kills the server's binlog dump threads (the reader's
// replication connection).
func (e *env) killDumps() {
	e.t.Helper()
	admin := e.connect()
	killed := 0
	r, err := admin.Execute("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'")
	if err != nil {
		e.t.Fatal(err)
	}
	for i := range r.RowNumber() {
		id, _ := r.GetInt(i, 0)
		if _, err := admin.Execute(fmt.Sprintf("KILL %d", id)); err == nil {
			killed++
		}
	}
	if killed == 0 {
		e.t.Fatal("no binlog dump thread to kill")
	}
}

func TestReconnectAfterKill(t *testing.T) {
	e := setup(t)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY)")
	rec := newRecorder(t, e.schema)
	e.start(rec)
	e.exec("INSERT INTO t VALUES (1)")
	rec.Lines(t, 1)

	e.killDumps()
	e.exec("INSERT INTO t VALUES (2)", "BEGIN", "INSERT INTO t VALUES (3)", "INSERT INTO t VALUES (4)", "COMMIT")
	got := rec.Lines(t, 3)
	want := []string{"insert t new=[id=1]", "insert t new=[id=2]", "insert t new=[id=3] | insert t new=[id=4]"}
	if !slices.Equal(got, want) {
		t.Fatalf("after KILL:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if s := rec.Snapshot(); len(s.Resumed) != 1 || len(s.Lost) != 0 {
		t.Fatalf("a reconnect is not a restart: resumed %v, lost %v", s.Resumed, s.Lost)
	}
}

func TestPurgedBinlogIsContinuityLoss(t *testing.T) {
	e := setup(t)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY)")
	rec := newRecorder(t, e.schema)
	rec2 := newRecorder(t, e.schema)
	run := e.start(rec)
	e.exec("INSERT INTO t VALUES (1)")
	rec.Lines(t, 1)
	run.r.Ack(rec.Snapshot().Commits[0].Pos)
	if err := run.stop(); err != nil {
		t.Fatal(err)
	}
	// While stopped: a change, then its binlog is purged.
	e.exec("INSERT INTO t VALUES (2)", "FLUSH BINARY LOGS")
	r, err := e.conn.Execute("SHOW MASTER STATUS")
	if err != nil {
		t.Fatal(err)
	}
	file, _ := r.GetString(0, 0)
	file = strings.Clone(file)
	purgeTo(t, e.conn, file)

	e.start(rec2)
	rec2.WaitFor(t, "Lost", func(s *cdctest.State) bool { return len(s.Lost) > 0 })
	s2 := rec2.Snapshot()
	lost, resumed := s2.Lost, s2.Resumed
	if len(lost) != 1 || !strings.Contains(lost[0], "continuity lost") {
		t.Fatalf("lost = %q, want one continuity loss", lost)
	}
	// Resumed once from the checkpoint (before the error) or once at the
	// head; the last Resumed is at the head, past the purged binlog.
	if last := resumed[len(resumed)-1]; last <= rec.Snapshot().Commits[0].Pos || uint64(last)>>32 != fileSeqOf(file) {
		t.Fatalf("resumed %v, want the head of %s", resumed, file)
	}
	e.exec("INSERT INTO t VALUES (3)")
	if got := rec2.Lines(t, 1); !slices.Equal(got, []string{"insert t new=[id=3]"}) {
		t.Fatalf("after the loss: %q", got)
	}
}

// purgeTo purges the binlogs before file. The server keeps a file until
// its binlog checkpoint passes and no dump thread reads it, so this polls.
func purgeTo(t testing.TB, c *client.Conn, file string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		execOn(t, c, "PURGE BINARY LOGS TO '"+file+"'")
		r, err := c.Execute("SHOW BINARY LOGS")
		if err != nil {
			t.Fatal(err)
		}
		first, _ := r.GetString(0, 0)
		if first == file {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("binlogs before %s not purged (oldest %s)", file, first)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func fileSeqOf(name string) uint64 {
	n, _ := strconv.ParseUint(name[strings.LastIndexByte(name, '.')+1:], 10, 64)
	return n
}

func TestStartupCheckNamesTheFix(t *testing.T) {
	e := setup(t)
	e.exec("SET GLOBAL binlog_format = 'STATEMENT'")
	t.Cleanup(func() { execOn(t, e.connect(), "SET GLOBAL binlog_format = 'ROW'") })
	r, err := mysql.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = r.Run(ctx, newRecorder(t, e.schema))
	if !errors.Is(err, mysql.ErrConfig) || !strings.Contains(err.Error(), "SET GLOBAL binlog_format = 'ROW'") {
		t.Fatalf("Run = %v, want ErrConfig naming SET GLOBAL binlog_format = 'ROW'", err)
	}
}

func TestCheck(t *testing.T) {
	e := setup(t)
	e.exec("CREATE TABLE todos (id INT PRIMARY KEY, user_id INT, title TEXT)")
	ctx := context.Background()
	reqs := []cdc.Requirement{
		{Rule: "ok", Schema: e.schema, Table: "todos", Columns: []string{"id", "user_id"}, NeedsOld: true},
		{Rule: "wild", Schema: e.schema, Table: "tod*", Columns: []string{"id"}},
		{Rule: "no-table", Schema: e.schema, Table: "nope", Columns: []string{"id"}},
		{Rule: "no-col", Schema: e.schema, Table: "todos", Columns: []string{"id", "owner"}},
	}
	fs, err := mysql.Check(ctx, e.cfg, reqs)
	if err != nil {
		t.Fatal(err)
	}
	want := []cdc.Finding{
		{Severity: cdc.Error, Rule: "no-table", Message: "no table matches " + e.schema + ".nope"},
		{Severity: cdc.Error, Rule: "no-col", Message: `table ` + e.schema + `.todos has no column "owner"`},
	}
	if !slices.Equal(fs, want) {
		t.Fatalf("findings:\n%v\nwant:\n%v", fs, want)
	}

	e.exec("SET GLOBAL binlog_row_image = 'MINIMAL'")
	t.Cleanup(func() { execOn(t, e.connect(), "SET GLOBAL binlog_row_image = 'FULL'") })
	fs, err = mysql.Check(ctx, e.cfg, reqs[:1])
	if err != nil {
		t.Fatal(err)
	}
	fix := "SET GLOBAL binlog_row_image = 'FULL'; and in my.cnf [mysqld]: binlog_row_image = FULL"
	want = []cdc.Finding{
		{Severity: cdc.Error, Message: "binlog_row_image is MINIMAL, but tagstream needs FULL row images", Fix: fix},
		{Severity: cdc.Warning, Rule: "ok", Message: fs[len(fs)-1].Message, Fix: fix},
	}
	if !slices.Equal(fs, want) || !strings.Contains(fs[1].Message, "binlog_row_image is MINIMAL") {
		t.Fatalf("with MINIMAL row images:\n%v\nwant:\n%v", fs, want)
	}
	// And the reader refuses to start, naming the fix.
	r, err := mysql.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(ctx, newRecorder(t, e.schema)); !errors.Is(err, mysql.ErrConfig) || !strings.Contains(err.Error(), fix) {
		t.Fatalf("Run with MINIMAL row images = %v, want ErrConfig naming %q", err, fix)
	}
}

func TestDropDatabaseInvalidatesItsTables(t *testing.T) {
	e := setup(t)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY)", "CREATE TABLE u (id INT PRIMARY KEY)")
	rec := newRecorder(t, e.schema)
	e.start(rec)
	e.exec("INSERT INTO t VALUES (1)", "INSERT INTO u VALUES (1)")
	rec.Lines(t, 2)
	e.exec("DROP DATABASE `" + e.schema + "`")
	got := rec.Lines(t, 3)
	want := []string{"insert t new=[id=1]", "insert u new=[id=1]", "truncate t | truncate u"}
	if !slices.Equal(got, want) {
		t.Fatalf("commits:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestLeastPrivilegeUser(t *testing.T) {
	e := setup(t)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY)")
	user := fmt.Sprintf("ts_%d", time.Now().UnixNano()%1e9)
	e.exec(
		"CREATE USER '"+user+"'@'127.0.0.1' IDENTIFIED BY 'pw'",
		"GRANT SELECT ON `"+e.schema+"`.* TO '"+user+"'@'127.0.0.1'",
	)
	t.Cleanup(func() { execOn(t, e.connect(), "DROP USER '"+user+"'@'127.0.0.1'") })
	d, err := mysql.ParseDSN(e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	e.cfg.DSN = fmt.Sprintf("mysql://%s:pw@%s/%s", user, d.Addr(), d.Database)

	r, err := mysql.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = r.Run(ctx, newRecorder(t, e.schema))
	fix := "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '" + user + "'@'127.0.0.1';"
	if !errors.Is(err, mysql.ErrConfig) || !strings.Contains(err.Error(), fix) {
		t.Fatalf("Run = %v\nwant ErrConfig naming %s", err, fix)
	}

	e.exec("GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '" + user + "'@'127.0.0.1'")
	rec := newRecorder(t, e.schema)
	e.start(rec)
	e.exec("INSERT INTO t VALUES (1)")
	if got := rec.Lines(t, 1); !slices.Equal(got, []string{"insert t new=[id=1]"}) {
		t.Fatalf("with the grants: %q", got)
	}
}

func TestReadTimeoutReconnects(t *testing.T) {
	e := setup(t)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY)")
	d, err := mysql.ParseDSN(e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	proxy := testcontainers.NewProxy(t, d.Addr())
	e.cfg.DSN = fmt.Sprintf("mysql://%s@%s/%s", d.User, proxy.Addr(), d.Database)
	e.cfg.ReadTimeout = time.Second
	rec := newRecorder(t, e.schema)
	e.start(rec)
	e.exec("INSERT INTO t VALUES (1)")
	rec.Lines(t, 1)

	proxy.Stall(testcontainers.ToClient) // the binlog connection goes silent, heartbeats included
	e.exec("INSERT INTO t VALUES (2)")
	got := rec.Lines(t, 2)
	if want := []string{"insert t new=[id=1]", "insert t new=[id=2]"}; !slices.Equal(got, want) {
		t.Fatalf("after the stall: %q, want %q", got, want)
	}
}

// TestRetainedBytes: the binlog after the checkpoint grows while nothing is
// acknowledged and shrinks back once everything is.
func TestRetainedBytes(t *testing.T) {
	e := setup(t)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY, pad MEDIUMTEXT)")
	e.cfg.RetentionInterval = 50 * time.Millisecond
	rec := newRecorder(t, e.schema)
	run := e.start(rec)
	values := make([]string, 20)
	for i := range values {
		values[i] = fmt.Sprintf("(%d, REPEAT('x', 100000))", i+1)
	}
	e.exec("INSERT INTO t VALUES " + strings.Join(values, ", "))
	rec.Lines(t, 1)
	waitRetained := func(what string, ok func(int64) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			n, known := run.r.RetainedBytes()
			if known && ok(n) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("RetainedBytes() = %d, %v; want %s", n, known, what)
			}
			time.Sleep(20 * time.Millisecond) // polling the server's state; there is no signal to wait on
		}
	}
	waitRetained("at least the 2 MB written", func(n int64) bool { return n >= 2_000_000 })
	run.r.Ack(rec.Snapshot().Commits[0].Pos)
	waitRetained("almost nothing once acknowledged", func(n int64) bool { return n < 10_000 })
}

// TestStreamingOnAQuietServer: on a server with no commits, the reader
// streams (Ready, Resumed) once the dump's preamble is followed by
// silence, not at the first heartbeat — which here would be a minute away
// (WaitTimeout, well under it, bounds the wait). A reconnect streams the
// same way.
func TestStreamingOnAQuietServer(t *testing.T) {
	e := setup(t)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY)")
	e.cfg.Heartbeat, e.cfg.ReadTimeout = time.Minute, 3*time.Minute
	rec := newRecorder(t, e.schema)
	run := e.start(rec) // fails unless Resumed and Ready
	e.killDumps()
	for deadline := time.Now().Add(cdctest.WaitTimeout); run.r.Reconnects() < 1 || !run.r.Ready(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not streaming again within %s of the kill (reconnects %d)", cdctest.WaitTimeout, run.r.Reconnects())
		}
	}
	e.exec("INSERT INTO t VALUES (1)")
	if got := rec.Lines(t, 1); !slices.Equal(got, []string{"insert t new=[id=1]"}) {
		t.Fatalf("after the reconnect: %q", got)
	}
	if s := rec.Snapshot(); len(s.Resumed) != 1 || len(s.Lost) != 0 {
		t.Fatalf("resumed %v, lost %v: want one Resumed", s.Resumed, s.Lost)
	}
}
