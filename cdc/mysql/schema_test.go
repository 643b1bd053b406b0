package mysql_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/cdc/cdctest"
	"github.com/tagstream/tagstream/rules"
)

// tagRenderer renders a change as the sorted tags the rules give it.
func tagRenderer(t testing.TB, schema, rulesYAML string, log *slog.Logger) func(*cdc.Change) string {
	t.Helper()
	set, err := rules.Parse([]byte(rulesYAML), "rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e := rules.Compile(set, rules.Options{DefaultSchema: schema, Logger: log})
	return func(c *cdc.Change) string {
		var tags []string
		for _, b := range e.Eval(nil, c) {
			tags = append(tags, string(b))
		}
		slices.Sort(tags)
		return strings.Join(slices.Compact(tags), " ")
	}
}

// TestPartitionedTable: rows of a partitioned table arrive under the
// table's name, whatever partition holds them; partition DDL that removes or
// moves rows without row events invalidates the tables it touches.
func TestPartitionedTable(t *testing.T) {
	e := setup(t)
	e.exec(`CREATE TABLE m (id INT PRIMARY KEY, user_id INT) PARTITION BY RANGE (id) (
			PARTITION p0 VALUES LESS THAN (100), PARTITION p1 VALUES LESS THAN (200), PARTITION pmax VALUES LESS THAN MAXVALUE)`,
		`CREATE TABLE h (id INT, k INT, PRIMARY KEY (id, k)) PARTITION BY RANGE (id) SUBPARTITION BY HASH (k) SUBPARTITIONS 2 (
			PARTITION q0 VALUES LESS THAN (100), PARTITION q1 VALUES LESS THAN MAXVALUE)`,
		`CREATE TABLE swap (id INT PRIMARY KEY, user_id INT)`)
	rec := newRecorder(t, e.schema)
	rec.Render = tagRenderer(t, e.schema, `rules:
  - table: m
    tags: ["m:{id}", "user:{user_id}"]
  - table: h
    tags: ["h:{id}:{k}"]
  - table: swap
    tags: ["swap:{id}"]
`, nil)
	e.start(rec)
	e.exec("INSERT INTO m VALUES (1, 7), (150, 8), (500, 9)",
		"UPDATE m SET id = 101, user_id = 6 WHERE id = 1", // moves p0 -> p1
		"INSERT INTO h VALUES (1, 1), (150, 2)",
		"ALTER TABLE m TRUNCATE PARTITION p1",
		"INSERT INTO swap VALUES (5, 1)",
		"ALTER TABLE m EXCHANGE PARTITION p0 WITH TABLE swap",
		"ALTER TABLE m DROP PARTITION pmax",
		"ALTER TABLE m ADD PARTITION (PARTITION p2 VALUES LESS THAN (300))", // moves nothing
		"INSERT INTO m VALUES (250, 3)")
	got := rec.Lines(t, 8)
	want := []string{
		"m:1 user:7 | m:150 user:8 | m:500 user:9",
		"m:1 m:101 user:6 user:7",
		"h:1:1 | h:150:2",
		"m:* user:*",
		"swap:5",
		"m:* user:* | swap:*",
		"m:* user:*",
		"m:250 user:3",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("commits:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// warnLog collects the warnings logged through it.
type warnLog struct {
	mu    sync.Mutex
	warns []string
}

func (l *warnLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *warnLog) Handle(_ context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn {
		l.mu.Lock()
		l.warns = append(l.warns, r.Message)
		l.mu.Unlock()
	}
	return nil
}
func (l *warnLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *warnLog) WithGroup(string) slog.Handler      { return l }

// TestSchemaChangesWhileStreaming: ADD, DROP, RENAME COLUMN and a type
// change while another session keeps inserting. A column a rule reads that
// is missing yields `*` with one warning per table layout (not per row); a
// column added later produces values; no change is lost and no restart is
// needed.
func TestSchemaChangesWhileStreaming(t *testing.T) {
	e := setup(t)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY, a VARCHAR(10), b INT)")
	logs := &warnLog{}
	rec := newRecorder(t, e.schema)
	rec.Render = tagRenderer(t, e.schema, "rules:\n  - name: cols\n    table: t\n    tags: [\"id:{id}\", \"a:{a}\", \"b:{b}\", \"c:{c}\"]\n", slog.New(logs))
	e.start(rec)

	writer := e.connect()
	var mu sync.Mutex
	progress := sync.NewCond(&mu)
	count, stop := 0, false
	done := make(chan struct{})
	go func() {
		defer close(done)
		for n := 0; ; n++ {
			mu.Lock()
			if stop {
				mu.Unlock()
				return
			}
			mu.Unlock()
			if _, err := writer.Execute(fmt.Sprintf("INSERT INTO t (id) VALUES (%d)", 1000+n)); err != nil {
				t.Errorf("writer: %v", err)
				mu.Lock()
				count = 1 << 30 // release writes()
				progress.Broadcast()
				mu.Unlock()
				return
			}
			mu.Lock()
			count = n + 1
			progress.Broadcast()
			mu.Unlock()
		}
	}()
	// Let the writer commit k more rows (within the current layout).
	writes := func(k int) {
		mu.Lock()
		for target := count + k; count < target; {
			progress.Wait()
		}
		mu.Unlock()
	}

	steps := []struct {
		sql  []string
		want string // the tags of the step's own row
	}{
		{[]string{"INSERT INTO t VALUES (1, 'x', 5)"}, "a:x b:5 c:* id:1"},
		{[]string{"ALTER TABLE t ADD COLUMN c VARCHAR(10)", "INSERT INTO t VALUES (2, 'y', 6, '12')"}, "a:y b:6 c:12 id:2"},
		{[]string{"ALTER TABLE t DROP COLUMN b", "INSERT INTO t VALUES (3, 'w', '34')"}, "a:w b:* c:34 id:3"},
		{[]string{"ALTER TABLE t RENAME COLUMN a TO a2", "INSERT INTO t VALUES (4, 'u', '56')"}, "a:* b:* c:56 id:4"},
		{[]string{"ALTER TABLE t MODIFY c INT", "INSERT INTO t VALUES (5, 's', 42)"}, "a:* b:* c:42 id:5"},
		{[]string{"ALTER TABLE t RENAME COLUMN a2 TO a, ADD COLUMN b BIGINT DEFAULT 7", "INSERT INTO t (id, a) VALUES (6, 'r')"}, "a:r b:7 id:6"},
	}
	for _, st := range steps {
		e.exec(st.sql...)
		writes(20)
	}
	mu.Lock()
	stop = true
	mu.Unlock()
	<-done
	n := count
	e.exec("INSERT INTO t VALUES (7, 'q', 9, 8)") // after
	rec.WaitFor(t, "every row", func(s *cdctest.State) bool {
		rows := 0
		for _, c := range s.Commits {
			rows += len(c.Lines)
		}
		return rows == len(steps)+1+n
	})

	seen, ids := map[string]bool{}, map[string]bool{}
	for _, c := range rec.Snapshot().Commits {
		for _, l := range c.Lines {
			seen[l] = true
			for _, tag := range strings.Fields(l) {
				if strings.HasPrefix(tag, "id:") {
					ids[tag] = true
				}
			}
		}
	}
	for _, st := range steps {
		if !seen[st.want] {
			t.Errorf("no change tagged %q", st.want)
		}
	}
	if !seen["a:q b:8 c:9 id:7"] {
		t.Error("the row written after the DDL is missing")
	}
	for i := range n {
		if !ids[fmt.Sprintf("id:%d", 1000+i)] {
			t.Errorf("writer row %d lost", 1000+i)
		}
	}
	// One warning per layout lacking a column the rule reads: before ADD c,
	// after DROP b, after RENAME a, after the type change (a new layout).
	logs.mu.Lock()
	defer logs.mu.Unlock()
	if len(logs.warns) != 4 {
		t.Errorf("%d warnings for %d rows, want 4 (one per layout lacking a column):\n%s", len(logs.warns), n+len(steps)+1, strings.Join(logs.warns, "\n"))
	}
	t.Logf("%d rows written concurrently with the DDL", n)
}
