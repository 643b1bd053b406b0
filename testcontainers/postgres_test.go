package testcontainers

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestMain(m *testing.M) { Main(m) }

func TestPostgresFreshDatabase(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, b := Postgres(t), Postgres(t)
	if a == b {
		t.Fatalf("two calls returned the same database %s", a)
	}
	conn, err := pgx.Connect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var walLevel string
	var super, repl bool
	var tables int
	if err := conn.QueryRow(ctx, `SELECT current_setting('wal_level'), rolsuper, rolreplication,
		(SELECT count(*) FROM pg_tables WHERE schemaname = 'public')
		FROM pg_roles WHERE rolname = current_user`).Scan(&walLevel, &super, &repl, &tables); err != nil {
		t.Fatal(err)
	}
	if walLevel != "logical" || !super || !repl || tables != 0 {
		t.Fatalf("wal_level=%s superuser=%v replication=%v tables=%d; want logical true true 0", walLevel, super, repl, tables)
	}
	// A replication connection works (pg_hba allows it).
	rconn, err := pgconn.Connect(ctx, a+"&replication=database")
	if err != nil {
		t.Fatalf("replication connection: %v", err)
	}
	rconn.Close(ctx)
}
