package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/cdc/cdctest"
	"github.com/tagstream/tagstream/rules"
)

// countingLog counts the warnings logged through it.
type countingLog struct {
	mu    sync.Mutex
	warns []string
}

func (l *countingLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *countingLog) Handle(_ context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn {
		var b strings.Builder
		b.WriteString(r.Message)
		r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
		l.mu.Lock()
		l.warns = append(l.warns, b.String())
		l.mu.Unlock()
	}
	return nil
}
func (l *countingLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *countingLog) WithGroup(string) slog.Handler      { return l }

// TestSchemaChangesWhileStreaming: ADD, DROP, RENAME COLUMN and ALTER TYPE
// while another session keeps inserting. A column a rule reads that is
// missing yields `*` with one warning per table layout (not per row); a
// column added later produces values; no change is lost and no restart is
// needed.
func TestSchemaChangesWhileStreaming(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`CREATE TABLE t (id int PRIMARY KEY, a text, b int)`)
	logs := &countingLog{}
	rec := newRecorder(t)
	rec.Render = tagRenderer(t, "rules:\n  - name: cols\n    table: t\n    tags: [\"id:{id}\", \"a:{a}\", \"b:{b}\", \"c:{c}\"]\n",
		rules.Options{Logger: slog.New(logs)})
	f.startStreaming(f.config(), rec)

	// The writer inserts rows that only name id, through every DDL.
	ctx, stop := context.WithCancel(context.Background())
	writer, err := pgx.Connect(context.Background(), f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close(context.Background())
	written := make(chan int, 1)
	var mu sync.Mutex
	progress := sync.NewCond(&mu)
	count := 0
	go func() {
		n := 0
		for ctx.Err() == nil {
			if _, err := writer.Exec(context.Background(), `INSERT INTO t (id) VALUES ($1)`, 1000+n); err != nil {
				t.Errorf("writer: %v", err)
				mu.Lock()
				count = 1 << 30 // release writes()
				progress.Broadcast()
				mu.Unlock()
				break
			}
			n++
			mu.Lock()
			count = n
			progress.Broadcast()
			mu.Unlock()
		}
		written <- n
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
		{[]string{`INSERT INTO t VALUES (1, 'x', 5)`}, "a:x b:5 c:* id:1"},
		{[]string{`ALTER TABLE t ADD COLUMN c text`, `INSERT INTO t VALUES (2, 'y', 6, 'z')`}, "a:y b:6 c:z id:2"},
		{[]string{`ALTER TABLE t DROP COLUMN b`, `INSERT INTO t VALUES (3, 'w', 'v')`}, "a:w b:* c:v id:3"},
		{[]string{`ALTER TABLE t RENAME COLUMN a TO a2`, `INSERT INTO t VALUES (4, 'u', 't')`}, "a:* b:* c:t id:4"},
		{[]string{`ALTER TABLE t ALTER COLUMN c TYPE int USING length(c)`, `INSERT INTO t VALUES (5, 's', 42)`}, "a:* b:* c:42 id:5"},
		{[]string{`BEGIN`, `ALTER TABLE t RENAME COLUMN a2 TO a`, `ALTER TABLE t ADD COLUMN b bigint DEFAULT 7`, `COMMIT`,
			`INSERT INTO t (id, a) VALUES (6, 'r')`}, "a:r b:7 id:6"},
	}
	for _, st := range steps {
		f.exec(st.sql...)
		writes(20)
	}
	stop()
	n := <-written
	f.exec(`INSERT INTO t (id, a, b, c) VALUES (7, 'q', 8, 9)`) // after
	rec.WaitFor(t, "every row", func(s *cdctest.State) bool {
		rows := 0
		for _, c := range s.Commits {
			rows += len(c.Lines)
		}
		return rows == len(steps)+1+n
	})

	seen := map[string]bool{}
	ids := map[string]bool{}
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
	// Every writer row arrived, each with its id and `*` for the columns the
	// layout of its moment lacked (NULLs yield no tag).
	for i := 0; i < n; i++ {
		if !ids[fmt.Sprintf("id:%d", 1000+i)] {
			t.Errorf("writer row %d lost", 1000+i)
		}
	}
	// One warning per layout that lacks a column the rule reads: before ADD
	// c, after DROP b, after RENAME a (ALTER TYPE keeps the column names,
	// and so the layout).
	logs.mu.Lock()
	defer logs.mu.Unlock()
	if len(logs.warns) != 3 {
		t.Errorf("%d warnings for %d rows, want 3 (one per layout lacking a column):\n%s", len(logs.warns), n+len(steps)+1, strings.Join(logs.warns, "\n"))
	}
	t.Logf("%d rows written concurrently with the DDL", n)
}
