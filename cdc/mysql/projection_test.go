package mysql_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/cdc/mysql"
	"github.com/tagstream/tagstream/rules"
)

// moreValueCases: values beyond mysqlValueCases whose text must be the
// server's, chosen for the decoder's edges: fractional digits the column
// declares but the value does not use, zero parts of dates, DECIMAL group
// boundaries, and each length-prefix size of variable-size values.
var moreValueCases = []valueCase{
	{name: "time3_whole", typ: "TIME(3)", literal: "'12:00:00'", want: "12:00:00.000"},
	{name: "time6_zero", typ: "TIME(6)", literal: "'00:00:00'", want: "00:00:00.000000"},
	{name: "time2_neg", typ: "TIME(2)", literal: "'-00:00:00.01'", want: "-00:00:00.01"},
	{name: "time4_neg", typ: "TIME(4)", literal: "'-01:00:00.5'", want: "-01:00:00.5000"},
	{name: "time1_max", typ: "TIME(1)", literal: "'838:59:59'", want: "838:59:59.0"},
	{name: "datetime2_whole", typ: "DATETIME(2)", literal: "'2024-01-01 00:00:00'", want: "2024-01-01 00:00:00.00"},
	{name: "datetime_zero_month", typ: "DATETIME", literal: "'2024-00-10 10:00:00'", want: "2024-00-10 10:00:00"},
	{name: "date_zero_day", typ: "DATE", literal: "'2024-02-00'", want: "2024-02-00"},
	{name: "timestamp4", typ: "TIMESTAMP(4) NULL", literal: "'2000-02-29 12:00:00.1234'", want: "2000-02-29 07:00:00.1234"},
	{name: "decimal_30_10", typ: "DECIMAL(30,10)", literal: "-12345678901234567890.0123456789", want: "-12345678901234567890.0123456789"},
	{name: "decimal_9_9", typ: "DECIMAL(9,9)", literal: "0.000000001", want: "0.000000001"},
	{name: "decimal_18_0", typ: "DECIMAL(18,0)", literal: "100000000000000000", want: "100000000000000000"},
	{name: "varchar_300", typ: "VARCHAR(300)", literal: "REPEAT('x', 290)", want: strings.Repeat("x", 290)},
	{name: "char_100_utf8mb4", typ: "CHAR(100) CHARACTER SET utf8mb4", literal: "'ab'", want: "ab"},
	{name: "mediumblob", typ: "MEDIUMBLOB", literal: "x'6162'", want: "ab", serverExpr: "c_mediumblob"},
	{name: "longtext", typ: "LONGTEXT", literal: "'long'", want: "long"},
	{name: "enum_300", typ: "ENUM(" + enumLabels(300) + ")", literal: "'v299'", want: "v299"},
	{name: "bit17", typ: "BIT(17)", literal: "b'10000000000000001'", want: "65537", serverExpr: "CAST(c_bit17+0 AS CHAR)"},
	{name: "year_2155", typ: "YEAR", literal: "2155", want: "2155"},
	{name: "int_null", typ: "INT", literal: "NULL", want: "NULL"},
}

func enumLabels(n int) string {
	labels := make([]string, n)
	for i := range labels {
		labels[i] = fmt.Sprintf("'v%d'", i)
	}
	return strings.Join(labels, ",")
}

// TestProjectedValues: a transaction that reads some columns gets exactly
// those (the others Absent), each with the text of a full decode; every
// other column is skipped by its size, so each type's size is exercised
// (columns alternate between read and skipped, then the other way round),
// in insert, update (both images) and delete row images.
func TestProjectedValues(t *testing.T) {
	e := setup(t)
	cases := append(slices.Clone(mysqlValueCases), moreValueCases...)
	cols := make([]string, len(cases))
	lits := make([]string, len(cases))
	for i, c := range cases {
		cols[i] = "c_" + c.name + " " + c.typ
		lits[i] = c.literal
	}
	e.exec("SET NAMES utf8mb4")
	e.exec("CREATE TABLE vals (id INT PRIMARY KEY, " + strings.Join(cols, ", ") + ") DEFAULT CHARSET utf8mb4")
	rec := newRecorder(t, e.schema)
	var mu sync.Mutex
	parity := 0
	var images [][]cdc.Value // every image delivered, copied
	rec.Reads = func(tbl *cdc.Table, _ cdc.Op) []bool {
		mu.Lock()
		defer mu.Unlock()
		reads := make([]bool, len(tbl.Columns))
		for i := range reads {
			reads[i] = i%2 == parity
		}
		return reads
	}
	rec.Render = func(c *cdc.Change) string {
		for _, img := range [][]cdc.Value{c.Old, c.New} {
			if img == nil {
				continue
			}
			cp := make([]cdc.Value, len(img))
			for i, v := range img {
				cp[i] = cdc.Value{Kind: v.Kind, Text: []byte(string(v.Text))}
			}
			mu.Lock()
			images = append(images, cp)
			mu.Unlock()
		}
		return c.Op.String()
	}
	e.start(rec)
	commits := 0
	for p := range 2 {
		mu.Lock()
		parity, images = p, nil
		mu.Unlock()
		e.exec("SET time_zone = '+05:00', sql_mode = ''",
			"INSERT INTO vals VALUES (1, "+strings.Join(lits, ", ")+")")
		commits++
		rec.Lines(t, commits)
		compareWithServer(t, e, moreValueCases, images[0][1+len(mysqlValueCases):], 1+len(mysqlValueCases), p)
		e.exec("UPDATE vals SET id = 2", "DELETE FROM vals")
		commits += 2
		rec.Lines(t, commits)
		mu.Lock()
		got := images
		mu.Unlock()
		if len(got) != 4 { // insert new, update old and new, delete old
			t.Fatalf("parity %d: %d images, want 4", p, len(got))
		}
		for k, img := range got {
			id := []string{"1", "1", "2", "2"}[k]
			for i, v := range img {
				want, kind := id, cdc.Text
				if i > 0 {
					want = cases[i-1].want
				}
				switch {
				case i%2 != p:
					want, kind = "", cdc.Absent
				case want == "NULL":
					want, kind = "", cdc.Null
				}
				if v.Kind != kind || string(v.Text) != want {
					t.Errorf("parity %d, image %d, column %s: %q (kind %d), want %q (kind %d)",
						p, k, rec.Table("vals").Columns[i], v.Text, v.Kind, want, kind)
				}
			}
		}
	}
}

// compareWithServer checks values (the columns of cases, from table column
// first on) against the server's own text of each column of vals, where
// the column was read (its table column index has the parity).
func compareWithServer(t *testing.T, e *env, cases []valueCase, values []cdc.Value, first, parity int) {
	t.Helper()
	e.exec("SET time_zone = '+00:00'")
	for i, c := range cases {
		if c.want == "NULL" || (first+i)%2 != parity {
			continue
		}
		expr := c.serverExpr
		if expr == "" {
			expr = "CAST(c_" + c.name + " AS CHAR)"
		}
		r, err := e.conn.Execute("SELECT " + expr + " FROM vals")
		if err != nil {
			t.Fatal(err)
		}
		s, _ := r.GetString(0, 0)
		r.Close()
		if s != string(values[i].Text) || s != c.want {
			t.Errorf("%s %s: the server prints %q, the reader delivered %q, the case wants %q", c.typ, c.literal, s, values[i].Text, c.want)
		}
	}
}

// tagRecorder is a cdc.Handler that records each commit's tags.
type tagRecorder struct {
	begin   func() cdc.Tx
	mu      sync.Mutex
	tags    []string // one line per commit with tags
	resumed chan struct{}
	once    sync.Once
	changed chan struct{}
}

func newTagRecorder(begin func() cdc.Tx) *tagRecorder {
	return &tagRecorder{begin: begin, resumed: make(chan struct{}), changed: make(chan struct{}, 1)}
}

func (r *tagRecorder) Begin() cdc.Tx { return r.begin() }
func (r *tagRecorder) Commit(_ context.Context, tx cdc.Tx, _ cdc.Commit) error {
	if tags := tx.Tags(); len(tags) > 0 {
		r.mu.Lock()
		r.tags = append(r.tags, strings.Join(tags, " "))
		r.mu.Unlock()
		select {
		case r.changed <- struct{}{}:
		default:
		}
	}
	return nil
}
func (r *tagRecorder) Resumed(cdc.Position)               { r.once.Do(func() { close(r.resumed) }) }
func (r *tagRecorder) Progress(cdc.Position)              {}
func (r *tagRecorder) Lost(context.Context, string) error { return nil }
func (r *tagRecorder) Drain(context.Context)              {}

// until waits until the last commit's tags contain tag.
func (r *tagRecorder) until(t *testing.T, tag string) []string {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		r.mu.Lock()
		n := len(r.tags)
		done := n > 0 && slices.Contains(strings.Fields(r.tags[n-1]), tag)
		got := slices.Clone(r.tags)
		r.mu.Unlock()
		if done {
			return got
		}
		select {
		case <-r.changed:
		case <-deadline:
			t.Fatalf("timed out waiting for %s; tags so far:\n%s", tag, strings.Join(got, "\n"))
		}
	}
}

// opaqueTx hides a rules.Tx's cdc.Projection: the reader decodes every column.
type opaqueTx struct{ cdc.Tx }

// TestProjectionKeepsTags: the same binlog read by two readers into the
// same rules, one decoding only the columns the rules read (rules.Tx is a
// cdc.Projection) and one decoding every column, gives the same tags for
// every transaction: placeholders, a columns filter that must fire and one
// that must not (the changed column is read only for the filter), NULLs,
// {old.}/{new.} pins, deletes, and transactions that collapse at the tag
// cap (only the filters are read then).
func TestProjectionKeepsTags(t *testing.T) {
	e := setup(t)
	e.exec(
		"CREATE TABLE todos (id BIGINT PRIMARY KEY, user_id INT, title VARCHAR(200), done TINYINT(1), updated_at DATETIME(6), note TEXT)",
		"CREATE TABLE comments (id BIGINT PRIMARY KEY, post_id INT, body TEXT, spam_score INT, deleted_at DATETIME(6) NULL)",
		"CREATE TABLE marker (id INT PRIMARY KEY)",
	)
	set, err := rules.Parse([]byte(`rules:
  - table: todos
    tags: [todos, "todo:{id}", "user:{user_id}:todos", "owner:{old.user_id}:{new.user_id}"]
  - table: comments
    columns: [body, post_id, deleted_at]
    tags: ["post:{post_id}:comments", "comment:{id}"]
  - table: marker
    tags: ["marker:{id}"]
`), "rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	engine := rules.Compile(set, rules.Options{DefaultSchema: e.schema, MaxTags: 16})
	projected := newTagRecorder(func() cdc.Tx { return engine.NewTx() })
	whole := newTagRecorder(func() cdc.Tx { return opaqueTx{engine.NewTx()} })
	for i, h := range []*tagRecorder{projected, whole} {
		cfg := e.cfg
		cfg.StateDir = t.TempDir()
		cfg.ServerID = uint32(5000 + i)
		r, err := mysql.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx, h) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
		<-h.resumed
	}
	e.exec(
		"INSERT INTO todos VALUES (1, 7, 'milk', 0, '2024-01-01 00:00:00', NULL), (2, NULL, 'eggs', 1, NOW(6), 'n')",
		"UPDATE todos SET user_id = 9 WHERE id = 1",
		"UPDATE todos SET title = 'oat milk' WHERE id = 1",
		"DELETE FROM todos WHERE id = 2",
		"INSERT INTO comments VALUES (1, 3, 'hi', 0, NULL), (2, 4, 'yo', 0, NULL)",
		"UPDATE comments SET spam_score = 5",                           // filtered out
		"UPDATE comments SET body = 'hey' WHERE id = 1",                // fires
		"UPDATE comments SET deleted_at = NOW(6) WHERE id = 2",         // fires: NULL to a value
		"UPDATE comments SET spam_score = 6, post_id = 8 WHERE id = 2", // fires
		"DELETE FROM comments WHERE id = 1",
		// Over the cap of 16 tags: collapsed to wildcard forms.
		"INSERT INTO todos SELECT seq, seq % 5, 'bulk', 0, NOW(6), NULL FROM seq_10_to_60",
		"BEGIN", "INSERT INTO comments SELECT seq, seq, 'c', 0, NULL FROM seq_10_to_40",
		"UPDATE comments SET spam_score = 1 WHERE id >= 10", "COMMIT",
		"BEGIN", "INSERT INTO todos SELECT seq, 1, 'b', 0, NOW(6), NULL FROM seq_100_to_130",
		"UPDATE comments SET spam_score = 2 WHERE id >= 10", "COMMIT", // the comments rule must not be touched
		"BEGIN", "INSERT INTO todos SELECT seq, 1, 'b', 0, NOW(6), NULL FROM seq_200_to_230",
		"UPDATE comments SET body = 'x' WHERE id = 10", "COMMIT",
		"INSERT INTO marker VALUES (1)",
	)
	want := whole.until(t, "marker:1")
	got := projected.until(t, "marker:1")
	if !slices.Equal(got, want) {
		t.Fatalf("projected tags:\n%s\nwhole rows:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The transactions the filters decide, as they must be.
	for _, line := range []string{
		"comment:1 comment:2 post:3:comments post:4:comments",
		"comment:1 post:3:comments",
		"comment:2 post:4:comments",
		"comment:2 post:4:comments post:8:comments",
		"owner:*:* todo:* todos user:*:todos",
		"owner:*:* todo:* todos user:*:todos comment:* post:*:comments",
	} {
		if !slices.Contains(want, line) && !slices.Contains(want, sortFields(line)) {
			t.Errorf("no commit with tags %q in:\n%s", line, strings.Join(want, "\n"))
		}
	}
	for _, line := range want {
		if strings.Contains(line, "spam") {
			t.Errorf("unexpected %q", line)
		}
	}
}

func sortFields(s string) string {
	f := strings.Fields(s)
	slices.Sort(f)
	return strings.Join(f, " ")
}

// TestCompressedRows: MariaDB's compressed rows events (log_bin_compress)
// are decompressed and decoded like the others.
func TestCompressedRows(t *testing.T) {
	e := setup(t)
	r, err := e.conn.Execute("SELECT @@global.log_bin_compress, @@global.log_bin_compress_min_len")
	if err != nil {
		t.Skipf("not MariaDB (no log_bin_compress): %v", err)
	}
	on, _ := r.GetString(0, 0)
	minLen, _ := r.GetInt(0, 1)
	r.Close()
	t.Cleanup(func() {
		e.exec(fmt.Sprintf("SET GLOBAL log_bin_compress = %s, log_bin_compress_min_len = %d", on, minLen))
	})
	e.exec("CREATE TABLE t (id INT PRIMARY KEY, body TEXT, n INT)")
	rec := newRecorder(t, e.schema)
	e.start(rec)
	e.exec("SET GLOBAL log_bin_compress = ON, log_bin_compress_min_len = 10")
	long := strings.Repeat("compressible ", 40)
	e.exec(
		"INSERT INTO t VALUES (1, '"+long+"', 1), (2, 'b', NULL)",
		"UPDATE t SET n = 5 WHERE id = 1",
		"DELETE FROM t WHERE id = 2",
	)
	got := rec.Lines(t, 3)
	want := []string{
		`insert t new=[id=1 body="` + long + `" n=1] | insert t new=[id=2 body=b n=NULL]`,
		`update t old=[id=1 body="` + long + `" n=1] new=[id=1 body="` + long + `" n=5]`,
		"delete t old=[id=2 body=b n=NULL]",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("commits:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
