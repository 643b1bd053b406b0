package mysql_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/cdc/cdctest"
)

// TestConformance runs the scenarios every reader passes (cdc/cdctest).
func TestConformance(t *testing.T) {
	cdctest.Exercise(t, myHarness{})
}

type myHarness struct{}

func (myHarness) Setup(t *testing.T) cdctest.DB { return myDB{setup(t)} }

// myDB is an env seen by the conformance scenarios.
type myDB struct{ e *env }

func (d myDB) Schema() string { return d.e.schema }

func (d myDB) Exec(_ testing.TB, stmts ...string) { d.e.exec(stmts...) }

func (d myDB) Session(testing.TB) cdctest.Session { return mySession{d.e.connect()} }

// mySession is another connection to an env's database.
type mySession struct{ conn *client.Conn }

func (s mySession) Exec(t testing.TB, stmts ...string) { t.Helper(); execOn(t, s.conn, stmts...) }

// InsertSeries numbers rows by crossing a table of the ten digits with
// itself once per decimal digit of n (no recursion limit to meet).
func (myDB) InsertSeries(table string, first, n int) string {
	digits, expr, from := 0, "", ""
	for w := 1; w < n || digits == 0; w *= 10 {
		if digits > 0 {
			expr += " + "
			from += ", "
		}
		expr += fmt.Sprintf("%d * d%d.i", w, digits)
		from += fmt.Sprintf("d d%d", digits)
		digits++
	}
	return fmt.Sprintf("INSERT INTO %s (id, v) WITH d (i) AS (SELECT 0 UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4"+
		" UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)"+
		" SELECT %d + %s, 'big' FROM %s WHERE %s < %d", table, first, expr, from, expr, n)
}

func (d myDB) NewReader(t testing.TB) cdc.Source {
	t.Helper()
	r, err := newReader(d.e)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// LoseContinuity stops the reader, writes a change and purges the binlog
// holding it: the next reader finds its resume point gone (error 1236).
// Without the change, the purge would lose nothing the reader needs.
func (d myDB) LoseContinuity(t testing.TB, stop func()) {
	t.Helper()
	stop()
	d.e.exec("CREATE TABLE lost_rows (id INT PRIMARY KEY)", "INSERT INTO lost_rows VALUES (1)", "FLUSH BINARY LOGS")
	r, err := d.e.conn.Execute("SHOW MASTER STATUS")
	if err != nil {
		t.Fatal(err)
	}
	file, _ := r.GetString(0, 0)
	purgeTo(t, d.e.conn, strings.Clone(file))
}
