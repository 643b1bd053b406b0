package postgres

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/cdc/cdctest"
)

// TestConformance runs the scenarios every reader passes (cdc/cdctest).
func TestConformance(t *testing.T) {
	t.Parallel()
	cdctest.Exercise(t, pgHarness{})
}

type pgHarness struct{}

func (pgHarness) Setup(t *testing.T) cdctest.DB { return pgDB{setup(t)} }

// pgDB is a fixture seen by the conformance scenarios.
type pgDB struct{ f *fixture }

func (pgDB) Schema() string { return "public" }

func (d pgDB) Exec(_ testing.TB, stmts ...string) { d.f.exec(stmts...) }

func (d pgDB) Session(t testing.TB) cdctest.Session {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), d.f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return pgSession{conn}
}

// pgSession is another connection to a fixture's database.
type pgSession struct{ conn *pgx.Conn }

func (s pgSession) Exec(t testing.TB, stmts ...string) {
	t.Helper()
	for _, q := range stmts {
		if _, err := s.conn.Exec(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

func (pgDB) InsertSeries(table string, first, n int) string {
	return fmt.Sprintf("INSERT INTO %s SELECT g, 'big' FROM generate_series(%d, %d) g", table, first, first+n-1)
}

func (d pgDB) NewReader(t testing.TB) cdc.Source {
	t.Helper()
	rd, err := New(d.f.config())
	if err != nil {
		t.Fatal(err)
	}
	return rd
}

// LoseContinuity drops the slot under the running reader. The reader
// reconnects quickly: terminate its walsender and drop until the drop wins.
func (d pgDB) LoseContinuity(t testing.TB, _ func()) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		_, _ = d.f.conn.Exec(context.Background(), `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1`, d.f.slot)
		_, err := d.f.conn.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, d.f.slot)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("could not drop the slot: %v", err)
		}
	}
}
