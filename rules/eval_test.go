package rules

import (
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/tagstream/tagstream/cdc"
)

// Row-image shorthands.
func txt(s string) cdc.Value { return cdc.Value{Kind: cdc.Text, Text: []byte(s)} }

var (
	null   = cdc.Value{Kind: cdc.Null}
	absent = cdc.Value{Kind: cdc.Absent}
	toast  = cdc.Value{Kind: cdc.Unchanged}
)

func row(vs ...cdc.Value) []cdc.Value { return vs }

// todos is public.todos(id, user_id, title, done); todosKeyed is the same
// table as a Postgres reader describes it: id is the replica identity key.
var (
	todos      = &cdc.Table{Schema: "public", Name: "todos", Columns: []string{"id", "user_id", "title", "done"}}
	todosKeyed = &cdc.Table{Schema: "public", Name: "todos", Columns: todos.Columns, Key: []bool{true, false, false, false}}
)

// mustCompile parses the rules (the text after "rules:") and compiles them.
func mustCompile(t testing.TB, rulesYAML string, opts Options) *Engine {
	t.Helper()
	s, err := Parse([]byte("rules:\n"+rulesYAML), "test.yaml")
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return Compile(s, opts)
}

// evalSorted returns Eval's tags sorted and de-duplicated, after checking
// that a Tx given the same change agrees.
func evalSorted(t *testing.T, e *Engine, c *cdc.Change) []string {
	t.Helper()
	var got []string
	for _, b := range e.Eval(nil, c) {
		got = append(got, string(b))
	}
	slices.Sort(got)
	got = slices.Compact(got)
	tx := e.NewTx()
	tx.Add(c)
	if txTags := tx.Tags(); !slices.Equal(txTags, got) && !(len(got) == 0 && len(txTags) == 0) {
		t.Errorf("Tx.Tags() = %q, Eval = %q", txTags, got)
	}
	// A reader that honours cdc.Projection (the other columns Absent)
	// produces the same tags.
	stats := e.Stats()
	defer e.longTags.Store(stats.LongTags) // counted once, by the evaluations above
	proj := e.NewTx()
	pc := project(c, proj.Reads(c.Table, c.Op))
	proj.Add(pc)
	if pTags := proj.Tags(); !slices.Equal(pTags, got) && !(len(got) == 0 && len(pTags) == 0) {
		t.Errorf("projected change: tags %q, want %q", pTags, got)
	}
	return got
}

// project returns a copy of c whose columns outside reads are Absent, as a
// reader honouring cdc.Projection passes them.
func project(c *cdc.Change, reads []bool) *cdc.Change {
	p := *c
	img := func(vals []cdc.Value) []cdc.Value {
		if vals == nil || reads == nil {
			return vals
		}
		out := slices.Clone(vals)
		for i := range out {
			if i < len(reads) && !reads[i] {
				out[i] = absent
			}
		}
		return out
	}
	p.Old, p.New = img(c.Old), img(c.New)
	return &p
}

func TestEval(t *testing.T) {
	const todoRule = `
  - table: todos
    tags: [todos, "todo:{id}", "user:{user_id}:todos"]
`
	tests := []struct {
		name  string
		rules string
		opts  Options
		c     cdc.Change
		want  []string
	}{
		// {col}: insert reads the new row.
		{
			name: "insert expands the new row", rules: todoRule,
			c:    cdc.Change{Table: todos, Op: cdc.Insert, New: row(txt("1"), txt("7"), txt("milk"), txt("f"))},
			want: []string{"todo:1", "todos", "user:7:todos"},
		},
		// Delete reads the old row.
		{
			name: "delete expands the old row", rules: todoRule,
			c:    cdc.Change{Table: todos, Op: cdc.Delete, Old: row(txt("2"), txt("8"), txt("milk"), txt("f"))},
			want: []string{"todo:2", "todos", "user:8:todos"},
		},
		// Update: new row AND old row, union emitted.
		{
			name: "update emits the union of old and new", rules: todoRule,
			c: cdc.Change{Table: todos, Op: cdc.Update,
				Old: row(txt("1"), txt("7"), txt("milk"), txt("f")),
				New: row(txt("1"), txt("9"), txt("milk"), txt("f"))},
			want: []string{"todo:1", "todos", "user:7:todos", "user:9:todos"},
		},
		{
			name: "update where old equals new", rules: todoRule,
			c: cdc.Change{Table: todos, Op: cdc.Update,
				Old: row(txt("1"), txt("7"), txt("milk"), txt("f")),
				New: row(txt("1"), txt("7"), txt("oat milk"), txt("f"))},
			want: []string{"todo:1", "todos", "user:7:todos"},
		},
		// No old image (REPLICA IDENTITY DEFAULT, key unchanged): the old
		// row's key columns are the new row's, the others unknown.
		{
			name: "update without old image: old key from the new row, other old columns unknown", rules: todoRule,
			c:    cdc.Change{Table: todosKeyed, Op: cdc.Update, New: row(txt("1"), txt("9"), txt("milk"), txt("t"))},
			want: []string{"todo:1", "todos", "user:*:todos", "user:9:todos"},
		},
		{
			name: "update without old image and no key known: every old column unknown", rules: todoRule,
			c:    cdc.Change{Table: todos, Op: cdc.Update, New: row(txt("1"), txt("9"), txt("milk"), txt("t"))},
			want: []string{"todo:*", "todo:1", "todos", "user:*:todos", "user:9:todos"},
		},
		{
			name: "update without old image, new-only: the old side is skipped", rules: todoRule,
			opts: Options{OldImages: OldImagesNewOnly},
			c:    cdc.Change{Table: todosKeyed, Op: cdc.Update, New: row(txt("1"), txt("9"), txt("milk"), txt("t"))},
			want: []string{"todo:1", "todos", "user:9:todos"},
		},
		{
			name:  "update without old image: {old.key} is the new key, {old.col} unknown",
			rules: "  - table: todos\n    tags: [\"was:{old.user_id}:{old.id}\", \"id:{old.id}\"]\n",
			c:     cdc.Change{Table: todosKeyed, Op: cdc.Update, New: row(txt("1"), txt("9"), txt("a"), txt("f"))},
			want:  []string{"id:1", "was:*:1"},
		},
		{
			name:  "update without old image, new-only: {old.col} of a non-key column yields no tag",
			rules: "  - table: todos\n    tags: [\"was:{old.user_id}:{old.id}\", \"id:{old.id}\"]\n",
			opts:  Options{OldImages: OldImagesNewOnly},
			c:     cdc.Change{Table: todosKeyed, Op: cdc.Update, New: row(txt("1"), txt("9"), txt("a"), txt("f"))},
			want:  []string{"id:1"},
		},
		{
			name:  "update without old image: an unchanged TOAST key column is unknown",
			rules: "  - table: todos\n    tags: [\"t:{title}\"]\n",
			c: cdc.Change{Table: &cdc.Table{Schema: "public", Name: "todos", Columns: todos.Columns, Key: []bool{false, false, true, false}},
				Op: cdc.Update, New: row(txt("1"), txt("9"), toast, txt("f"))},
			want: []string{"t:*"},
		},
		{
			name: "an old image that was sent is expanded in new-only mode too", rules: todoRule,
			opts: Options{OldImages: OldImagesNewOnly},
			c: cdc.Change{Table: todosKeyed, Op: cdc.Update,
				Old: row(txt("1"), absent, absent, absent),
				New: row(txt("2"), txt("9"), txt("milk"), txt("t"))},
			want: []string{"todo:1", "todo:2", "todos", "user:*:todos", "user:9:todos"},
		},
		// An old image lacking a column (REPLICA IDENTITY DEFAULT with a key change): unknown → `*`.
		{
			name: "update with a column absent from the old image", rules: todoRule,
			c: cdc.Change{Table: todos, Op: cdc.Update,
				Old: row(txt("1"), absent, absent, absent),
				New: row(txt("2"), txt("9"), txt("milk"), txt("t"))},
			want: []string{"todo:1", "todo:2", "todos", "user:*:todos", "user:9:todos"},
		},
		{
			name: "delete with a column absent from the old image", rules: todoRule,
			c:    cdc.Change{Table: todos, Op: cdc.Delete, Old: row(txt("2"), absent, absent, absent)},
			want: []string{"todo:2", "todos", "user:*:todos"},
		},
		{
			name: "delete without an old image", rules: todoRule,
			c:    cdc.Change{Table: todos, Op: cdc.Delete},
			want: []string{"todo:*", "todos", "user:*:todos"},
		},
		// {new.col} / {old.col} pin one image.
		{
			name:  "pinned images on update",
			rules: "  - table: todos\n    tags: [\"now:{new.user_id}\", \"was:{old.user_id}\"]\n",
			c: cdc.Change{Table: todos, Op: cdc.Update,
				Old: row(txt("1"), txt("7"), txt("a"), txt("f")),
				New: row(txt("1"), txt("9"), txt("a"), txt("f"))},
			want: []string{"now:9", "was:7"},
		},
		{
			name:  "old pin on insert and new pin on delete yield nothing",
			rules: "  - table: todos\n    tags: [\"now:{new.user_id}\", \"was:{old.user_id}\"]\n",
			c:     cdc.Change{Table: todos, Op: cdc.Insert, New: row(txt("1"), txt("9"), txt("a"), txt("f"))},
			want:  []string{"now:9"},
		},
		{
			name:  "new pin on delete yields nothing",
			rules: "  - table: todos\n    tags: [\"now:{new.user_id}\", \"was:{old.user_id}\"]\n",
			c:     cdc.Change{Table: todos, Op: cdc.Delete, Old: row(txt("1"), txt("7"), txt("a"), txt("f"))},
			want:  []string{"was:7"},
		},
		{
			name:  "old pin on update without old image is unknown",
			rules: "  - table: todos\n    tags: [\"now:{new.user_id}\", \"was:{old.user_id}\"]\n",
			c:     cdc.Change{Table: todos, Op: cdc.Update, New: row(txt("1"), txt("9"), txt("a"), txt("f"))},
			want:  []string{"now:9", "was:*"},
		},
		{
			name:  "mixed pinned and unpinned placeholders",
			rules: "  - table: todos\n    tags: [\"move:{old.user_id}:{user_id}:{id}\"]\n",
			c: cdc.Change{Table: todos, Op: cdc.Update,
				Old: row(txt("1"), txt("7"), txt("a"), txt("f")),
				New: row(txt("1"), txt("9"), txt("a"), txt("f"))},
			want: []string{"move:7:7:1", "move:7:9:1"},
		},
		// {{ and }} are literal braces.
		{
			name:  "literal braces",
			rules: "  - table: todos\n    tags: [\"{{x}}:{{{id}}}\", \"}}{{\"]\n",
			c:     cdc.Change{Table: todos, Op: cdc.Insert, New: row(txt("1"), txt("7"), txt("a"), txt("f"))},
			want:  []string{"{x}:{1}", "}{"},
		},
		// NULL: that expansion yields no tag.
		{
			name: "null yields no tag on insert", rules: todoRule,
			c:    cdc.Change{Table: todos, Op: cdc.Insert, New: row(txt("1"), null, txt("a"), txt("f"))},
			want: []string{"todo:1", "todos"},
		},
		{
			name: "null on one side of an update", rules: todoRule,
			c: cdc.Change{Table: todos, Op: cdc.Update,
				Old: row(txt("1"), null, txt("a"), txt("f")),
				New: row(txt("1"), txt("9"), txt("a"), txt("f"))},
			want: []string{"todo:1", "todos", "user:9:todos"},
		},
		{
			name:  "null in one placeholder drops the whole tag",
			rules: "  - table: todos\n    tags: [\"t:{id}:{user_id}\"]\n",
			c:     cdc.Change{Table: todos, Op: cdc.Insert, New: row(txt("1"), null, txt("a"), txt("f"))},
			want:  nil,
		},
		// Unknown → `*`: truncate.
		{
			name: "truncate yields wildcard forms", rules: todoRule,
			c:    cdc.Change{Table: todos, Op: cdc.Truncate},
			want: []string{"todo:*", "todos", "user:*:todos"},
		},
		// Unchanged TOAST: known through the other image, else `*`.
		{
			name:  "unchanged toast without old image",
			rules: "  - table: todos\n    tags: [\"title:{title}\"]\n",
			c:     cdc.Change{Table: todos, Op: cdc.Update, New: row(txt("1"), txt("7"), toast, txt("f"))},
			want:  []string{"title:*"},
		},
		{
			name:  "unchanged toast with old image",
			rules: "  - table: todos\n    tags: [\"title:{title}\", \"n:{new.title}\"]\n",
			c: cdc.Change{Table: todos, Op: cdc.Update,
				Old: row(txt("1"), txt("7"), txt("long"), txt("f")),
				New: row(txt("1"), txt("7"), toast, txt("t"))},
			want: []string{"n:long", "title:long"},
		},
		{
			name:  "unchanged toast with the column absent from the old image",
			rules: "  - table: todos\n    tags: [\"title:{title}\"]\n",
			c: cdc.Change{Table: todos, Op: cdc.Update,
				Old: row(txt("1"), absent, absent, absent),
				New: row(txt("1"), txt("7"), toast, txt("t"))},
			want: []string{"title:*"},
		},
		// A placeholder the table does not have: unknown.
		{
			name:  "placeholder naming a missing column",
			rules: "  - table: todos\n    tags: [\"x:{nope}\", \"todo:{id}\"]\n",
			c:     cdc.Change{Table: todos, Op: cdc.Insert, New: row(txt("1"), txt("7"), txt("a"), txt("f"))},
			want:  []string{"todo:1", "x:*"},
		},
		// A short image (fewer values than columns): unknown.
		{
			name: "short new image", rules: todoRule,
			c:    cdc.Change{Table: todos, Op: cdc.Insert, New: row(txt("1"))},
			want: []string{"todo:1", "todos", "user:*:todos"},
		},
		// An empty value would make an empty tag: never emitted.
		{
			name:  "empty value alone yields no tag",
			rules: "  - table: todos\n    tags: [\"{title}\", \"t:{title}\"]\n",
			c:     cdc.Change{Table: todos, Op: cdc.Insert, New: row(txt("1"), txt("7"), txt(""), txt("f"))},
			want:  []string{"t:"},
		},
		// on: only the listed operations fire.
		{
			name:  "on filters operations",
			rules: "  - table: todos\n    on: [insert, update]\n    tags: [todos]\n",
			c:     cdc.Change{Table: todos, Op: cdc.Delete, Old: row(txt("1"), txt("7"), txt("a"), txt("f"))},
			want:  nil,
		},
		{
			name:  "on truncate only",
			rules: "  - table: todos\n    on: [truncate]\n    tags: [\"todo:{id}\"]\n",
			c:     cdc.Change{Table: todos, Op: cdc.Truncate},
			want:  []string{"todo:*"},
		},
		// Several rules on one table.
		{
			name: "every matching rule fires",
			rules: "  - table: todos\n    tags: [a]\n  - table: public.todos\n    tags: [b]\n" +
				"  - table: other\n    tags: [c]\n",
			c:    cdc.Change{Table: todos, Op: cdc.Insert, New: row(txt("1"), txt("7"), txt("a"), txt("f"))},
			want: []string{"a", "b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			if opts.DefaultSchema == "" {
				opts.DefaultSchema = "public"
			}
			e := mustCompile(t, tt.rules, opts)
			got := evalSorted(t, e, &tt.c)
			if !slices.Equal(got, tt.want) {
				t.Errorf("tags = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestColumnsFilter(t *testing.T) {
	const rule = `
  - table: todos
    columns: [title, done]
    tags: ["todo:{id}"]
`
	e := mustCompile(t, rule, Options{DefaultSchema: "public"})
	base := row(txt("1"), txt("7"), txt("milk"), txt("f"))
	with := func(i int, v cdc.Value) []cdc.Value {
		r := slices.Clone(base)
		r[i] = v
		return r
	}
	tests := []struct {
		name     string
		old, new []cdc.Value
		op       cdc.Op
		fires    bool
	}{
		{"listed column changed", base, with(2, txt("oat milk")), cdc.Update, true},
		{"other listed column changed", base, with(3, txt("t")), cdc.Update, true},
		{"only an unlisted column changed", base, with(1, txt("9")), cdc.Update, false},
		{"nothing changed", base, base, cdc.Update, false},
		{"null to value", with(2, null), base, cdc.Update, true},
		{"value to null", base, with(2, null), cdc.Update, true},
		{"null to null", with(2, null), with(2, null), cdc.Update, false},
		{"listed column absent from the old image counts as changed", with(2, absent), base, cdc.Update, true},
		{"no old image: every listed column counts as changed", nil, base, cdc.Update, true},
		{"unchanged toast is unchanged", with(2, absent), with(2, toast), cdc.Update, false},
		{"unchanged toast without old image, other listed column absent", nil, with(2, toast), cdc.Update, true},
		{"both listed columns unchanged toast / equal", base, with(2, toast), cdc.Update, false},
		{"insert ignores the filter", nil, base, cdc.Insert, true},
		{"delete ignores the filter", base, nil, cdc.Delete, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := evalSorted(t, e, &cdc.Change{Table: todos, Op: tt.op, Old: tt.old, New: tt.new})
			if fired := len(got) > 0; fired != tt.fires {
				t.Errorf("fired = %v (tags %q), want %v", fired, got, tt.fires)
			}
		})
	}

	t.Run("no old image: key columns are unchanged, other columns changed", func(t *testing.T) {
		for _, tc := range []struct {
			columns string
			new     []cdc.Value
			fires   bool
		}{
			{"[id]", base, false},
			{"[id, title]", with(2, toast), false},
			{"[id, title]", base, true},
			{"[user_id]", base, true},
		} {
			e := mustCompile(t, "  - table: todos\n    columns: "+tc.columns+"\n    tags: [x]\n", Options{DefaultSchema: "public"})
			got := evalSorted(t, e, &cdc.Change{Table: todosKeyed, Op: cdc.Update, New: tc.new})
			if fired := len(got) > 0; fired != tc.fires {
				t.Errorf("columns %s: fired = %v, want %v", tc.columns, fired, tc.fires)
			}
		}
	})

	t.Run("a filter column the table lacks counts as changed", func(t *testing.T) {
		e := mustCompile(t, "  - table: todos\n    columns: [nope]\n    tags: [x]\n", Options{DefaultSchema: "public"})
		got := evalSorted(t, e, &cdc.Change{Table: todos, Op: cdc.Update, Old: base, New: base})
		if !slices.Equal(got, []string{"x"}) {
			t.Errorf("tags = %q, want [x]", got)
		}
	})
}

func TestEncoding(t *testing.T) {
	e := mustCompile(t, "  - table: todos\n    tags: [\"t:{title}\"]\n", Options{DefaultSchema: "public"})
	tests := []struct{ value, want string }{
		{"plain-Text_1.2~", "t:plain-Text_1.2~"},
		{"50%", "t:50%25"},
		{"a,b", "t:a%2Cb"},
		{"a*b", "t:a%2Ab"},
		{"a b", "t:a%20b"},
		{"a\tb\nc\rd", "t:a%09b%0Ac%0Dd"},
		{"\x00\x1f\x7f", "t:%00%1F%7F"},
		{"{braces}:and/slashes?&=#\"'", "t:{braces}:and/slashes?&=#\"'"},
		{"héllo wörld", "t:héllo%20wörld"},
		{"日本", "t:日本"},
		{"nb\u00a0sp", "t:nb%C2%A0sp"},
		{"ls\u2028", "t:ls%E2%80%A8"},
		{"c1\u0085", "t:c1%C2%85"},
		{"bad\xffutf8\xc3", "t:bad%FFutf8%C3"},
		{"2024-01-02 03:04:05.123456", "t:2024-01-02%2003:04:05.123456"},
	}
	for _, tt := range tests {
		got := evalSorted(t, e, &cdc.Change{Table: todos, Op: cdc.Insert, New: row(txt("1"), txt("7"), txt(tt.value), txt("f"))})
		if len(got) != 1 || got[0] != tt.want {
			t.Errorf("value %q: tags = %q, want [%q]", tt.value, got, tt.want)
		}
	}
}

func TestLengthLimit(t *testing.T) {
	e := mustCompile(t, "  - table: todos\n    tags: [\"t:{title}:{id}\", \"todo:{id}\"]\n", Options{DefaultSchema: "public"})
	ins := func(title string) []string {
		return evalSorted(t, e, &cdc.Change{Table: todos, Op: cdc.Insert, New: row(txt("1"), txt("7"), txt(title), txt("f"))})
	}
	// "t:" + title + ":1" = 256 bytes exactly: kept.
	title := strings.Repeat("x", 252)
	if got := ins(title); !slices.Equal(got, []string{"t:" + title + ":1", "todo:1"}) {
		t.Errorf("256-byte tag: got %q", got)
	}
	if n := e.Stats().LongTags; n != 0 {
		t.Errorf("LongTags = %d, want 0", n)
	}
	// One byte more: the template's wildcard form, counted (Eval and Tx.Add each count).
	if got := ins(title + "x"); !slices.Equal(got, []string{"t:*:*", "todo:1"}) {
		t.Errorf("257-byte tag: got %q", got)
	}
	if n := e.Stats().LongTags; n != 2 {
		t.Errorf("LongTags = %d, want 2", n)
	}
	// Encoding can push a value over the limit: 85 spaces → 255 bytes.
	if got := ins(strings.Repeat(" ", 85)); !slices.Equal(got, []string{"t:*:*", "todo:1"}) {
		t.Errorf("encoded over-long tag: got %q", got)
	}
	// A huge value does not get copied in full first.
	if got := ins(strings.Repeat("y", 1<<20)); !slices.Equal(got, []string{"t:*:*", "todo:1"}) {
		t.Errorf("1 MiB value: got %q", got)
	}
}

func TestTableMatching(t *testing.T) {
	tbl := func(schema, name string) *cdc.Table {
		return &cdc.Table{Schema: schema, Name: name, Columns: []string{"id"}}
	}
	tests := []struct {
		pattern  string
		defaults string
		table    *cdc.Table
		match    bool
	}{
		{"todos", "public", tbl("public", "todos"), true},
		{"todos", "public", tbl("app", "todos"), false}, // unqualified → default schema
		{"todos", "shop", tbl("shop", "todos"), true},   // MySQL: the DSN's database
		{"todos", "", tbl("any", "todos"), true},        // no default: every schema
		{"app.todos", "public", tbl("app", "todos"), true},
		{"app.todos", "public", tbl("public", "todos"), false},
		{"todos", "public", tbl("public", "todos_archive"), false}, // exact, not prefix
		{"todo*", "public", tbl("public", "todos_archive"), true},
		{"todo*", "public", tbl("public", "todo"), true}, // `*` matches an empty run
		{"*_log", "public", tbl("public", "audit_log"), true},
		{"*_log", "public", tbl("public", "audit_logs"), false},
		{"a*b*c", "public", tbl("public", "aXbYbZc"), true},
		{"*.todos", "public", tbl("tenant_42", "todos"), true},
		{"tenant_*.todos", "public", tbl("tenant_42", "todos"), true},
		{"tenant_*.todos", "public", tbl("public", "todos"), false},
		{"app.*", "public", tbl("app", "anything"), true},
		{"*", "public", tbl("public", "anything"), true},
		{"*", "public", tbl("other", "anything"), false},
		{"*.*", "public", tbl("other", "anything"), true},
		{"Todos", "public", tbl("public", "todos"), false}, // names are case-sensitive
	}
	for _, tt := range tests {
		e := mustCompile(t, "  - table: \""+tt.pattern+"\"\n    tags: [hit]\n", Options{DefaultSchema: tt.defaults})
		got := evalSorted(t, e, &cdc.Change{Table: tt.table, Op: cdc.Insert, New: row(txt("1"))})
		if (len(got) == 1) != tt.match {
			t.Errorf("pattern %q (default %q) on %s.%s: tags %q, want match=%v", tt.pattern, tt.defaults, tt.table.Schema, tt.table.Name, got, tt.match)
		}
	}
}

// Readers hand over a new *cdc.Table when a relation changes: columns are
// resolved again for it.
func TestRelationChange(t *testing.T) {
	e := mustCompile(t, "  - table: todos\n    tags: [\"user:{user_id}\"]\n", Options{DefaultSchema: "public"})
	v1 := &cdc.Table{Schema: "public", Name: "todos", Columns: []string{"id", "user_id"}}
	v2 := &cdc.Table{Schema: "public", Name: "todos", Columns: []string{"user_id", "id"}}
	for range 3 {
		if got := evalSorted(t, e, &cdc.Change{Table: v1, Op: cdc.Insert, New: row(txt("1"), txt("7"))}); !slices.Equal(got, []string{"user:7"}) {
			t.Fatalf("v1: %q", got)
		}
	}
	if got := evalSorted(t, e, &cdc.Change{Table: v2, Op: cdc.Insert, New: row(txt("7"), txt("1"))}); !slices.Equal(got, []string{"user:7"}) {
		t.Fatalf("v2: %q", got)
	}
	if n := e.Stats().Tables; n != 2 {
		t.Errorf("Stats.Tables = %d, want 2", n)
	}
}

// The candidate cache stays bounded however many relations pass by.
func TestCandidateCacheBounded(t *testing.T) {
	e := mustCompile(t, "  - table: \"*\"\n    tags: [\"x:{id}\"]\n", Options{DefaultSchema: "public"})
	for i := range maxCachedTables + 10 {
		tb := &cdc.Table{Schema: "public", Name: "t", Columns: []string{"id"}}
		if got := e.Eval(nil, &cdc.Change{Table: tb, Op: cdc.Insert, New: row(txt("1"))}); len(got) != 1 || string(got[0]) != "x:1" {
			t.Fatalf("change %d: %q", i, got)
		}
	}
	n := 0
	e.cache.Range(func(_, _ any) bool { n++; return true })
	if n > maxCachedTables {
		t.Errorf("cache holds %d tables, over %d", n, maxCachedTables)
	}
}

// Eval appends to dst and reuses the buffers in its spare capacity.
func TestEvalReusesBuffers(t *testing.T) {
	e := mustCompile(t, "  - table: todos\n    tags: [todos, \"todo:{id}\", \"user:{user_id}:todos\"]\n", Options{DefaultSchema: "public"})
	c := &cdc.Change{Table: todos, Op: cdc.Update,
		Old: row(txt("1"), txt("7"), txt("a"), txt("f")),
		New: row(txt("1"), txt("9"), txt("a"), txt("f"))}
	prefix := [][]byte{[]byte("kept")}
	dst := e.Eval(prefix, c)
	if len(dst) != 5 || string(dst[0]) != "kept" {
		t.Fatalf("Eval appended wrongly: %q", dst)
	}
	dst = e.Eval(dst[:0], c)
	allocs := testing.AllocsPerRun(100, func() { dst = e.Eval(dst[:0], c) })
	if allocs != 0 {
		t.Errorf("Eval allocates %v times per change, want 0", allocs)
	}
	if len(dst) != 4 {
		t.Errorf("got %q", dst)
	}
}

// An update without an old image and a partition's change evaluate without
// allocating too.
func TestEvalNoAllocsWithoutOldImage(t *testing.T) {
	e := mustCompile(t, "  - table: m\n    tags: [\"todo:{id}\", \"user:{user_id}:todos\", \"was:{old.title}\"]\n", Options{DefaultSchema: "public"})
	part := &cdc.Table{Schema: "public", Name: "m_2024", Columns: todos.Columns, Key: todosKeyed.Key,
		Ancestors: []cdc.TableName{{Schema: "public", Name: "m"}}}
	c := &cdc.Change{Table: part, Op: cdc.Update, New: row(txt("1"), txt("9"), txt("a"), txt("f"))}
	dst := e.Eval(nil, c)
	if allocs := testing.AllocsPerRun(100, func() { dst = e.Eval(dst[:0], c) }); allocs != 0 {
		t.Errorf("Eval allocates %v times per change, want 0", allocs)
	}
	got := make([]string, len(dst))
	for i, b := range dst {
		got[i] = string(b)
	}
	slices.Sort(got)
	if want := []string{"todo:1", "user:*:todos", "user:9:todos", "was:*"}; !slices.Equal(got, want) {
		t.Errorf("tags = %q, want %q", got, want)
	}
}

// A rule matches a table by its own name, by a partitioned table it is a
// partition of, or (for a partitioned table reported under its own name) by
// one of its partitions.
func TestPartitionNames(t *testing.T) {
	e := mustCompile(t, `
  - name: root
    table: m
    tags: ["root:{id}"]
  - name: mid
    table: m_2
    tags: ["mid:{id}"]
  - name: leaf
    table: m_2a
    tags: ["leaf:{id}"]
  - name: other-schema
    table: other.m
    tags: ["other:{id}"]
`, Options{DefaultSchema: "public"})
	name := func(s string) cdc.TableName { return cdc.TableName{Schema: "public", Name: s} }
	cols := []string{"id"}
	for _, tc := range []struct {
		name  string
		table *cdc.Table
		want  []string
	}{
		{"the partitioned table itself", &cdc.Table{Schema: "public", Name: "m", Columns: cols}, []string{"root:1"}},
		{"a leaf partition names its ancestors", &cdc.Table{Schema: "public", Name: "m_2a", Columns: cols,
			Ancestors: []cdc.TableName{name("m_2"), name("m")}}, []string{"leaf:1", "mid:1", "root:1"}},
		{"a first-level partition", &cdc.Table{Schema: "public", Name: "m_1", Columns: cols,
			Ancestors: []cdc.TableName{name("m")}}, []string{"root:1"}},
		{"published through the root: every partition's rule", &cdc.Table{Schema: "public", Name: "m", Columns: cols,
			Partitions: []cdc.TableName{name("m_1"), name("m_2"), name("m_2a"), name("m_2b")}}, []string{"leaf:1", "mid:1", "root:1"}},
		{"an unrelated table", &cdc.Table{Schema: "public", Name: "m_3", Columns: cols}, nil},
	} {
		got := evalSorted(t, e, &cdc.Change{Table: tc.table, Op: cdc.Insert, New: row(txt("1"))})
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: tags = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// A column that disappears (DROP/RENAME COLUMN) makes its placeholders `*`
// with one warning per rule and table layout, not one per row; a column that
// appears starts producing values.
func TestMissingColumnWarnsOnce(t *testing.T) {
	var logs strings.Builder
	e := mustCompile(t, "  - name: todo\n    table: todos\n    columns: [title]\n    tags: [\"user:{user_id}\", \"todo:{id}\"]\n",
		Options{DefaultSchema: "public", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	dropped := &cdc.Table{Schema: "public", Name: "todos", Columns: []string{"id", "title"}}
	for range 3 {
		got := evalSorted(t, e, &cdc.Change{Table: dropped, Op: cdc.Insert, New: row(txt("1"), txt("a"))})
		if want := []string{"todo:1", "user:*"}; !slices.Equal(got, want) {
			t.Fatalf("after the drop: tags = %q, want %q", got, want)
		}
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 || !strings.Contains(logs.String(), `rule="\"todo\"" table=public.todos columns=user_id`) {
		t.Fatalf("want one warning naming the rule, table and column, got:\n%s", logs.String())
	}
	if s := e.Stats(); s.MissingColumns != 1 {
		t.Errorf("Stats.MissingColumns = %d, want 1", s.MissingColumns)
	}
	added := &cdc.Table{Schema: "public", Name: "todos", Columns: []string{"id", "title", "user_id"}}
	got := evalSorted(t, e, &cdc.Change{Table: added, Op: cdc.Insert, New: row(txt("1"), txt("a"), txt("7"))})
	if want := []string{"todo:1", "user:7"}; !slices.Equal(got, want) {
		t.Fatalf("after the column came back: tags = %q, want %q", got, want)
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Errorf("a layout with every column warned again:\n%s", logs.String())
	}
}
