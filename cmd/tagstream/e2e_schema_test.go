package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/testcontainers"
)

// setupDefaultIdentity returns a database with table d under REPLICA
// IDENTITY DEFAULT and a rules file reading a non-key column of it.
func setupDefaultIdentity(t *testing.T) (dsn string, db *pgx.Conn, rulesFile string) {
	t.Helper()
	dsn, db = testcontainers.PostgresDB(t, `CREATE TABLE d (id int PRIMARY KEY, user_id int, title text)`)
	return dsn, db, writeFile(t, "rules.yaml", "rules:\n  - name: d\n    table: d\n    tags: [\"d:{id}\", \"user:{user_id}:d\"]\n")
}

func metricsBody(t *testing.T, d *daemon) string {
	t.Helper()
	resp, err := http.Get(d.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestOldImagesDefaultIdentity: moving a row from user 7 to user 9 on a
// table that sends no old row invalidates user 9 and, since user 7 is not
// known, every user (`user:*:d`). At startup, run logs the finding with the
// SQL that makes it precise, and /metrics counts the findings.
func TestOldImagesDefaultIdentity(t *testing.T) {
	dsn, db, rulesFile := setupDefaultIdentity(t)
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "oldimg", "--publication", "oldimg")
	waitFor(t, func() bool { return strings.Contains(d.Log().String(), "database check done") })
	logs := d.Log().String()
	for _, want := range []string{
		`old_images=wildcard`,
		`level=WARN msg="database check: the rule reads old values of user_id but table public.d sends only its key in old rows (REPLICA IDENTITY DEFAULT): unknown old values become wildcards" fix="ALTER TABLE \"public\".\"d\" REPLICA IDENTITY FULL;" rule=d`,
		`level=WARN msg="database check: max_slot_wal_keep_size is -1 (unlimited)`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("startup log lacks %s\n%s", want, logs)
		}
	}

	seven := subscribe(t, d.base, "tags=user:7:d", "")
	all := subscribe(t, d.base, "tags=user:*:d,d:*", "")
	seven.expect(t, `ready {"resumed":false}`)
	all.expect(t, `ready {"resumed":false}`)
	execSQL(t, db, `INSERT INTO d VALUES (1, 7, 'a')`)
	seven.expect(t, "invalidate user:7:d")
	all.expect(t, "invalidate d:1 user:7:d")
	execSQL(t, db, `UPDATE d SET user_id = 9 WHERE id = 1`)
	seven.expect(t, "invalidate user:7:d")
	all.expect(t, "invalidate d:1 user:*:d user:9:d")
	// The key changed: Postgres sends the old key, the old user stays unknown.
	execSQL(t, db, `UPDATE d SET id = 2 WHERE id = 1`)
	seven.expect(t, "invalidate user:7:d")
	all.expect(t, "invalidate d:1 d:2 user:*:d user:9:d")

	body := metricsBody(t, d)
	for _, want := range []string{
		"\ntagstream_check_findings{severity=\"error\"} 0\n",
		"\ntagstream_check_findings{severity=\"warning\"} 2\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", strings.TrimSpace(want), body)
		}
	}
	if !regexp.MustCompile(`\ntagstream_source_retained_bytes [0-9]+\n`).MatchString(body) {
		t.Errorf("/metrics lacks tagstream_source_retained_bytes:\n%s", body)
	}
	d.stop(t)
}

// TestOldImagesNewOnly: --old-images=new-only (or TAGSTREAM_OLD_IMAGES)
// skips the old side when the database sends no old row, and says so at
// startup.
func TestOldImagesNewOnly(t *testing.T) {
	dsn, db, rulesFile := setupDefaultIdentity(t)
	t.Setenv("TAGSTREAM_OLD_IMAGES", "new-only")
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "newonly", "--publication", "newonly")
	if !strings.Contains(d.Log().String(), "old_images=new-only") {
		t.Errorf("the start line does not name the mode:\n%s", d.Log())
	}
	all := subscribe(t, d.base, "tags=user:*:d,d:*", "")
	all.expect(t, `ready {"resumed":false}`)
	execSQL(t, db, `INSERT INTO d VALUES (1, 7, 'a')`, `UPDATE d SET user_id = 9 WHERE id = 1`)
	all.expect(t, "invalidate d:1 user:7:d")
	all.expect(t, "invalidate d:1 user:9:d")
	d.stop(t)

	code, _, stderr := runBinary(t, nil, "run", "--db", dsn, "--rules", rulesFile, "--old-images", "old-only")
	if code != 2 || strings.TrimSpace(stderr) != `tagstream: run: --old-images: "old-only" is not wildcard or new-only` {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

// TestCheckApply: check --db --apply prints each fix it runs, runs only the
// table and publication fixes, and reports what is left.
func TestCheckApply(t *testing.T) {
	dsn, db, rulesFile := setupDefaultIdentity(t)
	execSQL(t, db, `CREATE TABLE other (id int PRIMARY KEY)`, `CREATE PUBLICATION tagstream FOR TABLE other`)
	code, stdout, stderr := runBinary(t, nil, "check", "--rules", rulesFile, "--db", dsn, "--apply")
	keep := `warning: max_slot_wal_keep_size is -1 (unlimited): while tagstream is stopped or stuck, its slot keeps WAL until the disk is full
  fix: ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf(); -- size it to what the disk can spare; if the slot loses WAL, tagstream resets its clients and continues
`
	want := `error: rule d: publication "tagstream" does not include table public.d
  fix: ALTER PUBLICATION "tagstream" ADD TABLE "public"."d";
` + keep + `warning: rule d: the rule reads old values of user_id but table public.d sends only its key in old rows (REPLICA IDENTITY DEFAULT): unknown old values become wildcards
  fix: ALTER TABLE "public"."d" REPLICA IDENTITY FULL;
apply: ALTER PUBLICATION "tagstream" ADD TABLE "public"."d";
apply: ALTER TABLE "public"."d" REPLICA IDENTITY FULL;
after applying:
` + keep + rulesFile + `: 1 rule(s) OK against ` + dsn + ` (1 warning(s))
`
	if code != 0 || stdout != want {
		t.Fatalf("exit %d\nstdout:\n%s\nwant:\n%s\nstderr: %s", code, stdout, want, stderr)
	}
	var ident string
	var published bool
	if err := db.QueryRow(context.Background(), `SELECT relreplident::text, EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = 'tagstream' AND tablename = 'd')
		FROM pg_class WHERE relname = 'd'`).Scan(&ident, &published); err != nil {
		t.Fatal(err)
	}
	if ident != "f" || !published {
		t.Errorf("after --apply: replica identity %q, published %v", ident, published)
	}

	code, stdout, _ = runBinary(t, nil, "check", "--rules", rulesFile, "--apply")
	if code != 2 {
		t.Errorf("--apply without --db: exit %d, stdout %s", code, stdout)
	}
}

// TestPartitionedTableEndToEnd: a rule naming a partitioned table fires for
// rows written to its partitions, nested ones included, and a rule naming
// one partition fires for it.
func TestPartitionedTableEndToEnd(t *testing.T) {
	dsn := testcontainers.Postgres(t)
	ctx := context.Background()
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	execSQL(t, db, `CREATE TABLE m (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)`,
		`CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (100)`,
		`CREATE TABLE m2 PARTITION OF m FOR VALUES FROM (100) TO (200) PARTITION BY RANGE (id)`,
		`CREATE TABLE m2a PARTITION OF m2 FOR VALUES FROM (100) TO (200)`)
	rulesFile := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rulesFile, []byte("rules:\n  - table: m\n    tags: [\"m:{id}\"]\n  - table: m2a\n    tags: [m2a]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "parts", "--publication", "parts")
	c := subscribe(t, d.base, "tags=m:*,m2a", "")
	c.expect(t, `ready {"resumed":false}`)
	execSQL(t, db, `INSERT INTO m VALUES (1, 'a')`)
	c.expect(t, "invalidate m:1")
	execSQL(t, db, `INSERT INTO m2a VALUES (150, 'b')`)
	c.expect(t, "invalidate m2a m:150")
	d.stop(t)
}
