package main

import (
	"strconv"
	"strings"
	"testing"

	"github.com/tagstream/tagstream/testcontainers"
)

// TestOperabilityMetrics: /metrics of the real binary has the per-rule fire
// counts, the source's reconnects and the replication lag gauges, under
// these exact names and types.
func TestOperabilityMetrics(t *testing.T) {
	dsn, db, rulesFile := setupPG(t)
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "opsmetrics", "--publication", "opsmetrics")
	c := subscribe(t, d.base, "tags=todos,marker:*", "")
	c.expect(t, `ready {"resumed":false}`)

	execSQL(t, db, `INSERT INTO todos (id, user_id) VALUES (42, 7)`)
	c.expect(t, "invalidate todos")
	// The columns filter holds this update back: rule todo does not fire.
	execSQL(t, db, `UPDATE todos SET updated_at = now() + interval '1 hour' WHERE id = 42`, `INSERT INTO markers VALUES (1)`)
	c.expect(t, "invalidate marker:1")

	body := metricsBody(t, d)
	for _, want := range []string{
		"# TYPE tagstream_rule_fires_total counter",
		`tagstream_rule_fires_total{rule="marker"} 1`,
		`tagstream_rule_fires_total{rule="todo"} 1`,
		"# TYPE tagstream_source_reconnects_total counter",
		`tagstream_source_reconnects_total{source="postgres"} 0`,
		"# TYPE tagstream_replication_lag_bytes gauge",
		"# TYPE tagstream_replication_lag_seconds gauge",
		"# TYPE tagstream_publish_delay_seconds histogram",
	} {
		if !strings.Contains("\n"+body, "\n"+want+"\n") {
			t.Errorf("/metrics lacks the line %q", want)
		}
	}
	if typed := checkMetricTypes(t, body); typed < 20 {
		t.Errorf("/metrics: %d tagstream_ TYPE lines", typed)
	}
	for _, name := range []string{"tagstream_replication_lag_bytes", "tagstream_replication_lag_seconds"} {
		if v := d.metric(t, name); v < 0 {
			t.Errorf("%s = %v", name, v)
		}
	}

	// The server ends the replication connection: the reader connects
	// again, and says so.
	execSQL(t, db, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'opsmetrics'`)
	d.waitMetric(t, `tagstream_source_reconnects_total{source="postgres"}`, func(v float64) bool { return v >= 1 })
	execSQL(t, db, `INSERT INTO markers VALUES (2)`)
	d.waitMetric(t, `tagstream_rule_fires_total{rule="marker"}`, func(v float64) bool { return v == 2 })
	d.stop(t)
}

// TestReconnectsMetricMySQL: the binlog reader counts its reconnects under
// source="mysql" (MariaDB too).
func TestReconnectsMetricMySQL(t *testing.T) {
	dsn := testcontainers.MySQL(t)
	db := mysqlConn(t, dsn)
	execMySQL(t, db, `CREATE TABLE markers (id int PRIMARY KEY)`)
	rulesFile := writeFile(t, "rules.yaml", "rules:\n  - name: marker\n    table: markers\n    tags: [\"marker:{id}\"]\n")
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--state-dir", t.TempDir(), "--server-id", "4343")
	c := subscribe(t, d.base, "tags=marker:*", "")
	c.expect(t, `ready {"resumed":false}`)
	if v := d.metric(t, `tagstream_source_reconnects_total{source="mysql"}`); v != 0 {
		t.Fatalf("reconnects %v before any", v)
	}
	// End the server side of the binlog connection of server_id 4343.
	r, err := db.Execute(`SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'`)
	if err != nil {
		t.Fatal(err)
	}
	killed := 0
	for i := 0; i < r.RowNumber(); i++ {
		id, _ := r.GetInt(i, 0)
		if _, err := db.Execute("KILL " + strconv.FormatInt(id, 10)); err == nil {
			killed++
		}
	}
	if killed == 0 {
		t.Fatal("no binlog dump thread to end")
	}
	d.waitMetric(t, `tagstream_source_reconnects_total{source="mysql"}`, func(v float64) bool { return v >= 1 })
	execMySQL(t, db, `INSERT INTO markers VALUES (1)`)
	c.expect(t, "invalidate marker:1")
	d.stop(t)
}

// checkMetricTypes applies Part B "Metrics" to a /metrics body: counters
// end in _total and are typed counter, and nothing else ends in _total. It
// returns how many tagstream_ TYPE lines it saw.
func checkMetricTypes(t *testing.T, body string) int {
	t.Helper()
	typed := 0
	for _, line := range strings.Split(body, "\n") {
		f := strings.Fields(line)
		if len(f) != 4 || f[1] != "TYPE" || !strings.HasPrefix(f[2], "tagstream_") {
			continue
		}
		typed++
		if (f[3] == "counter") != strings.HasSuffix(f[2], "_total") {
			t.Errorf("/metrics: %s is typed %s", f[2], f[3])
		}
	}
	return typed
}

// TestLongTagIsWidened: an expansion over 256 bytes (the Next.js limit) is
// replaced by its template's wildcard form, which reaches every subscriber
// it could match, and counted in tagstream_rules_long_tags_total; the
// transaction's other tags stay exact.
func TestLongTagIsWidened(t *testing.T) {
	dsn, db := testcontainers.PostgresDB(t, todoSchema)
	rulesFile := writeFile(t, "rules.yaml", "rules:\n  - name: title\n    table: todos\n    tags: [\"title:{title}\", \"todo:{id}\"]\n")
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "longtag", "--publication", "longtag")
	title := subscribe(t, d.base, "tags=title:short", "")
	todo2 := subscribe(t, d.base, "tags=todo:2,title:short", "")
	for _, c := range []*sseClient{title, todo2} {
		c.expect(t, `ready {"resumed":false}`)
	}
	execSQL(t, db, `INSERT INTO todos (id, user_id, title) VALUES (1, 7, repeat('x', 300))`)
	title.expect(t, "invalidate title:short")
	todo2.expect(t, "invalidate title:short")
	execSQL(t, db, `INSERT INTO todos (id, user_id, title) VALUES (2, 7, 'other')`)
	todo2.expect(t, "invalidate todo:2")
	if v := d.metric(t, "tagstream_rules_long_tags_total"); v != 1 {
		t.Fatalf("tagstream_rules_long_tags_total %v, want 1", v)
	}
	d.stop(t)
}
