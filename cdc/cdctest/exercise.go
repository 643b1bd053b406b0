package cdctest

import (
	"context"
	"strconv"
	"testing"

	"github.com/tagstream/tagstream/cdc"
)

// Harness gives Exercise private databases of one kind and readers on them.
type Harness interface {
	// Setup returns a fresh, private database for one scenario; everything
	// it starts is stopped by t's cleanup.
	Setup(t *testing.T) DB
}

// Session is one connection to a scenario's database.
type Session interface {
	// Exec runs statements one after the other on the connection, so that
	// BEGIN … COMMIT spans them.
	Exec(t testing.TB, stmts ...string)
}

// DB is one scenario's database; as a Session, its main connection.
type DB interface {
	Session
	// Schema is the schema (MySQL: database) unqualified tables live in.
	Schema() string
	// Session opens another connection, closed by t's cleanup.
	Session(t testing.TB) Session
	// InsertSeries is one statement inserting the rows (i, 'big') into
	// table (id, v), for i from first to first+n-1.
	InsertSeries(table string, first, n int) string
	// NewReader returns a reader on the database that resumes where the
	// previous one acknowledged (same slot, same checkpoint).
	NewReader(t testing.TB) cdc.Source
	// LoseContinuity makes changes after the running reader's acknowledged
	// position unrecoverable (Postgres: its slot dropped; MySQL: a change
	// written while no reader runs, then its binlog purged). It may call
	// stop, which stops the running reader, when the loss can only be
	// caused or seen across a restart. Changes it writes itself must be in
	// tables other than t, and are never delivered.
	LoseContinuity(t testing.TB, stop func())
}

// Exercise runs the scenarios every cdc reader must pass against h, one
// after the other (a MySQL server takes one replica per server_id).
func Exercise(t *testing.T, h Harness) {
	t.Run("Operations", func(t *testing.T) { operations(t, h.Setup(t)) })
	t.Run("Rollback", func(t *testing.T) { rollback(t, h.Setup(t)) })
	t.Run("CommitOrder", func(t *testing.T) { commitOrder(t, h.Setup(t)) })
	t.Run("LargeTransaction", func(t *testing.T) { largeTransaction(t, h.Setup(t)) })
	t.Run("RestartResume", func(t *testing.T) { restartResume(t, h.Setup(t)) })
	t.Run("Lost", func(t *testing.T) { lost(t, h.Setup(t)) })
}

const createTable = "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))"

// key renders a change the same way for every reader: op, table, the id
// (new row, else old row) and the new v. Old images differ between readers
// (Postgres REPLICA IDENTITY DEFAULT sends keys only) and are left out.
func key(c *cdc.Change) string {
	s := c.Op.String() + " " + c.Table.Name
	img := c.New
	if img == nil {
		img = c.Old
	}
	for i, col := range c.Table.Columns {
		if col == "id" && i < len(img) && img[i].Kind == cdc.Text {
			s += " id=" + string(img[i].Text)
		}
	}
	for i, col := range c.Table.Columns {
		if col == "v" && i < len(c.New) && c.New[i].Kind == cdc.Text {
			s += " v=" + string(c.New[i].Text)
		}
	}
	return s
}

func newRecorder(t testing.TB, db DB) *Recorder {
	r := New(t)
	r.Render, r.Schema, r.SkipEmpty = key, db.Schema(), true
	return r
}

// Running is a reader running in the background.
type Running struct {
	Source cdc.Source
	cancel context.CancelFunc
	done   chan error
}

// Start runs a new reader of db into rec (acknowledging through rec.Ack,
// which it sets to the reader's Ack) and waits until it streams.
func Start(t testing.TB, db DB, rec *Recorder) *Running {
	t.Helper()
	src := db.NewReader(t)
	rec.Ack = src.Ack
	before := len(rec.Snapshot().Resumed)
	ctx, cancel := context.WithCancel(context.Background())
	run := &Running{Source: src, cancel: cancel, done: make(chan error, 1)}
	go func() {
		run.done <- src.Run(ctx, rec)
		rec.signal()
	}()
	t.Cleanup(func() { run.Stop(t) })
	var early error
	rec.WaitFor(t, "Resumed", func(s *State) bool {
		select {
		case early = <-run.done:
			run.cancel = nil
			return true
		default:
		}
		return len(s.Resumed) > before
	})
	if run.cancel == nil {
		t.Fatalf("Run returned before streaming: %v", early)
	}
	if !src.Ready() {
		t.Fatal("Ready() = false while streaming")
	}
	return run
}

// Stop cancels the reader and checks that Run returned nil and that the
// reader no longer reports ready.
func (run *Running) Stop(t testing.TB) {
	t.Helper()
	if run.cancel == nil {
		return
	}
	run.cancel()
	run.cancel = nil
	if err := <-run.done; err != nil {
		t.Errorf("Run returned %v, want nil after cancel", err)
	}
	if run.Source.Ready() {
		t.Error("Ready() = true after Run returned")
	}
}

func operations(t *testing.T, db DB) {
	db.Exec(t, createTable)
	rec := newRecorder(t, db)
	Start(t, db, rec)
	db.Exec(t,
		"INSERT INTO t VALUES (1, 'a')",
		"UPDATE t SET v = 'b' WHERE id = 1",
		"DELETE FROM t WHERE id = 1",
		"BEGIN",
		"INSERT INTO t VALUES (2, 'c')",
		"INSERT INTO t VALUES (3, 'd')",
		"UPDATE t SET v = 'e' WHERE id = 2",
		"DELETE FROM t WHERE id = 3",
		"COMMIT",
		"TRUNCATE TABLE t",
		"INSERT INTO t VALUES (4, 'f')",
	)
	AssertCommits(t, rec.WaitCommits(t, 6),
		"insert t id=1 v=a",
		"update t id=1 v=b",
		"delete t id=1",
		"insert t id=2 v=c | insert t id=3 v=d | update t id=2 v=e | delete t id=3",
		"truncate t",
		"insert t id=4 v=f",
	)
}

func rollback(t *testing.T, db DB) {
	db.Exec(t, createTable)
	rec := newRecorder(t, db)
	Start(t, db, rec)
	db.Exec(t, "BEGIN", "INSERT INTO t VALUES (1, 'gone')", "ROLLBACK")
	// Large enough for Postgres to stream it before the abort.
	db.Exec(t, "BEGIN", db.InsertSeries("t", 10, 5000), "ROLLBACK")
	db.Exec(t, "BEGIN", "INSERT INTO t VALUES (2, 'x')", "UPDATE t SET v = 'gone' WHERE id = 2", "ROLLBACK")
	db.Exec(t, "INSERT INTO t VALUES (3, 'kept')")
	AssertCommits(t, rec.WaitCommits(t, 1), "insert t id=3 v=kept")
}

// commitOrder: transactions arrive in commit order, not in the order they
// began or wrote.
func commitOrder(t *testing.T, db DB) {
	db.Exec(t, createTable)
	rec := newRecorder(t, db)
	Start(t, db, rec)
	other := db.Session(t)
	db.Exec(t, "BEGIN", "INSERT INTO t VALUES (1, 'first begun')")
	other.Exec(t, "BEGIN", "INSERT INTO t VALUES (2, 'second begun')")
	db.Exec(t, "INSERT INTO t VALUES (3, 'first again')")
	other.Exec(t, "COMMIT")
	db.Exec(t, "COMMIT")
	AssertCommits(t, rec.WaitCommits(t, 2),
		"insert t id=2 v=second begun",
		"insert t id=1 v=first begun | insert t id=3 v=first again")
}

func largeTransaction(t *testing.T, db DB) {
	const rows = 50000
	db.Exec(t, createTable)
	rec := newRecorder(t, db)
	// One line per op and table: the Tx holds a count, nothing per row.
	rec.Render = func(c *cdc.Change) string { return c.Op.String() + " " + c.Table.Name }
	Start(t, db, rec)
	db.Exec(t, db.InsertSeries("t", 1, rows))
	db.Exec(t, "BEGIN", "UPDATE t SET v = 'u' WHERE id <= 100", "DELETE FROM t WHERE id > 100", "COMMIT")
	AssertCommits(t, rec.WaitCommits(t, 2),
		"insert t x"+strconv.Itoa(rows),
		"update t x100 | delete t x"+strconv.Itoa(rows-100))
}

func restartResume(t *testing.T, db DB) {
	db.Exec(t, createTable)
	rec1 := newRecorder(t, db)
	run1 := Start(t, db, rec1)
	db.Exec(t, "INSERT INTO t VALUES (1, 'a')")
	first := rec1.WaitCommits(t, 1)[0]
	rec1.SetAckMax(first.Pos) // the second is delivered, never acknowledged
	db.Exec(t, "INSERT INTO t VALUES (2, 'b')")
	second := rec1.WaitCommits(t, 2)[1]
	run1.Stop(t)
	if n := rec1.Snapshot().Drains; n < 1 {
		t.Errorf("Drain called %d times when the reader stopped, want at least 1", n)
	}
	db.Exec(t, "INSERT INTO t VALUES (3, 'c')") // while no reader runs

	rec2 := newRecorder(t, db)
	run2 := Start(t, db, rec2)
	if r := rec2.Snapshot().Resumed[0]; r < first.Pos || r >= second.Pos {
		t.Errorf("resumed from %d, want in [%d, %d): the acknowledged position, before the unacknowledged commit", r, first.Pos, second.Pos)
	}
	got := rec2.WaitCommits(t, 2)
	AssertCommits(t, got, "insert t id=2 v=b", "insert t id=3 v=c")
	if got[0].Pos != second.Pos {
		t.Errorf("re-delivered at %d, first delivered at %d", got[0].Pos, second.Pos)
	}
	run2.Stop(t) // everything acknowledged

	rec3 := newRecorder(t, db)
	Start(t, db, rec3)
	if r := rec3.Snapshot().Resumed[0]; r < got[1].Pos {
		t.Errorf("resumed from %d, before the acknowledged %d", r, got[1].Pos)
	}
	db.Exec(t, "INSERT INTO t VALUES (4, 'd')")
	AssertCommits(t, rec3.WaitCommits(t, 1), "insert t id=4 v=d")
}

func lost(t *testing.T, db DB) {
	db.Exec(t, createTable)
	rec := newRecorder(t, db)
	run := Start(t, db, rec)
	db.Exec(t, "INSERT INTO t VALUES (1, 'a')")
	first := rec.WaitCommits(t, 1)[0]
	stopped := false
	db.LoseContinuity(t, func() { run.Stop(t); stopped = true })
	if stopped {
		Start(t, db, rec)
	}
	rec.WaitFor(t, "Lost, then Resumed", (*State).ResumedAfterLost)
	if s := rec.Snapshot(); s.Resumed[len(s.Resumed)-1] <= first.Pos {
		t.Errorf("resumed at %v after the loss, want past the last commit %d", s.Resumed, first.Pos)
	}
	db.Exec(t, "INSERT INTO t VALUES (3, 'c')")
	AssertCommits(t, rec.WaitCommits(t, 2), "insert t id=1 v=a", "insert t id=3 v=c")
	if s := rec.Snapshot(); len(s.Lost) != 1 {
		t.Errorf("Lost called %d times (%q), want once", len(s.Lost), s.Lost)
	}
}
