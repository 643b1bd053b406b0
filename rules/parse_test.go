package rules

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tagstream/tagstream/cdc"
)

func TestParseValid(t *testing.T) {
	src := `# a comment
rules:
  - name: todo-item
    table: todos
    on: [insert, update, delete]
    columns: [title, done, user_id]
    tags:
      - todos
      - todo:{id}
      - user:{user_id}:todos
  - table: app.*
    tags: ["{{literal}}", 'x:{new.id}:{old.id}', 42]
`
	s, err := Parse([]byte(src), "rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Rules) != 2 {
		t.Fatalf("got %d rules", len(s.Rules))
	}
	r := s.Rules[0]
	if r.Name != "todo-item" || r.Index != 1 || r.Schema != "" || r.Table != "todos" || r.Line != 3 || r.Column != 5 {
		t.Errorf("rule 1 = %+v", r)
	}
	if !slices.Equal(r.On, []cdc.Op{cdc.Insert, cdc.Update, cdc.Delete}) {
		t.Errorf("on = %v", r.On)
	}
	if !slices.Equal(r.Columns, []string{"title", "done", "user_id"}) {
		t.Errorf("columns = %q", r.Columns)
	}
	if !slices.Equal(r.Tags, []string{"todos", "todo:{id}", "user:{user_id}:todos"}) {
		t.Errorf("tags = %q", r.Tags)
	}
	if r.Label() != `"todo-item"` {
		t.Errorf("label = %s", r.Label())
	}
	r = s.Rules[1]
	if r.Name != "" || r.Index != 2 || r.Schema != "app" || r.Table != "*" || r.Label() != "rule 2" {
		t.Errorf("rule 2 = %+v, label %s", r, r.Label())
	}
	if !slices.Equal(r.On, []cdc.Op{cdc.Insert, cdc.Update, cdc.Delete, cdc.Truncate}) {
		t.Errorf("default on = %v", r.On)
	}
	if r.Columns != nil {
		t.Errorf("columns = %q, want nil", r.Columns)
	}
	if !slices.Equal(r.Tags, []string{"{{literal}}", "x:{new.id}:{old.id}", "42"}) {
		t.Errorf("tags = %q", r.Tags)
	}
}

// Each malformed file yields exactly these errors, positioned.
func TestParseErrors(t *testing.T) {
	long := strings.Repeat("x", 257)
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{
			name: "unknown key in a rule",
			src:  "rules:\n  - table: todos\n    tag: [todos]\n",
			want: []string{
				`r.yaml:2:5: rule 1: tags: missing`,
				`r.yaml:3:5: rule 1: unknown key "tag" (want name, table, on, columns or tags)`,
			},
		},
		{
			name: "unknown top-level key",
			src:  "version: 2\nrules:\n  - table: todos\n    tags: [todos]\n",
			want: []string{`r.yaml:1:1: unknown key "version" (want "rules")`},
		},
		{
			name: "tags of the wrong type",
			src:  "rules:\n  - name: todo-item\n    table: todos\n    tags: {a: b}\n",
			want: []string{`r.yaml:4:11: rule 1 "todo-item": tags: must be a list, got a mapping`},
		},
		{
			name: "table of the wrong type",
			src:  "rules:\n  - table: [todos]\n    tags: [todos]\n",
			want: []string{`r.yaml:2:12: rule 1: table: must be a string, got a list`},
		},
		{
			name: "tag of the wrong type",
			src:  "rules:\n  - table: todos\n    tags:\n      - todos\n      - {todo: id}\n",
			want: []string{`r.yaml:5:9: rule 1: tags[1]: must be a string, got a mapping`},
		},
		{
			name: "empty tags",
			src:  "rules:\n  - name: todo-item\n    table: todos\n    tags: []\n",
			want: []string{`r.yaml:4:11: rule 1 "todo-item": tags: must not be empty`},
		},
		{
			name: "null tags",
			src:  "rules:\n  - table: todos\n    tags:\n",
			want: []string{`r.yaml:3:10: rule 1: tags: must not be empty`},
		},
		{
			name: "empty tag",
			src:  "rules:\n  - table: todos\n    tags: [todos, \"\"]\n",
			want: []string{`r.yaml:3:19: rule 1: tags[1]: must not be empty`},
		},
		{
			name: "unbalanced opening brace",
			src:  "rules:\n  - table: todos\n    tags:\n      - todo:{id\n",
			want: []string{`r.yaml:4:9: rule 1: tags[0] "todo:{id": unbalanced "{" at byte 6 (write "{{" for a literal brace)`},
		},
		{
			name: "unbalanced closing brace",
			src:  "rules:\n  - table: todos\n    tags: [todos, \"todo:id}\"]\n",
			want: []string{`r.yaml:3:19: rule 1: tags[1] "todo:id}": unbalanced "}" at byte 8 (write "}}" for a literal brace)`},
		},
		{
			name: "nested braces",
			src:  "rules:\n  - table: todos\n    tags: [\"a:{b{c}}\"]\n",
			want: []string{`r.yaml:3:12: rule 1: tags[0] "a:{b{c}}": unbalanced "{" at byte 3 (write "{{" for a literal brace)`},
		},
		{
			name: "bad placeholder image",
			src:  "rules:\n  - table: todos\n    tags: [\"todo:{row.id}\"]\n",
			want: []string{`r.yaml:3:12: rule 1: tags[0] "todo:{row.id}": bad placeholder "{row.id}": want {column}, {new.column} or {old.column}`},
		},
		{
			name: "bad placeholder column",
			src:  "rules:\n  - table: todos\n    tags: [\"todo:{user id}\"]\n",
			want: []string{`r.yaml:3:12: rule 1: tags[0] "todo:{user id}": bad placeholder "{user id}": a column name may contain letters, digits, "_" and "$"`},
		},
		{
			name: "placeholder without column",
			src:  "rules:\n  - table: todos\n    tags: [\"todo:{old.}\"]\n",
			want: []string{`r.yaml:3:12: rule 1: tags[0] "todo:{old.}": bad placeholder "{old.}": missing column name`},
		},
		{
			name: "empty placeholder",
			src:  "rules:\n  - table: todos\n    tags: [\"todo:{}\"]\n",
			want: []string{`r.yaml:3:12: rule 1: tags[0] "todo:{}": empty placeholder "{}" (write "{{}}" for literal braces)`},
		},
		{
			name: "comma in a tag",
			src:  "rules:\n  - table: todos\n    tags: [\"a,b\"]\n",
			want: []string{`r.yaml:3:12: rule 1: tags[0] "a,b": "," is not allowed in a tag (it separates tags)`},
		},
		{
			name: "whitespace in a tag",
			src:  "rules:\n  - table: todos\n    tags:\n      - todo list\n",
			want: []string{`r.yaml:4:9: rule 1: tags[0] "todo list": ' ' at byte 5: whitespace and control characters are not allowed in a tag`},
		},
		{
			name: "bad on value",
			src:  "rules:\n  - name: x\n    table: todos\n    on: [insert, upsert]\n    tags: [todos]\n",
			want: []string{`r.yaml:4:18: rule 1 "x": on[1]: unknown operation "upsert" (want insert, update, delete or truncate)`},
		},
		{
			name: "on is not a list",
			src:  "rules:\n  - table: todos\n    on: insert\n    tags: [todos]\n",
			want: []string{`r.yaml:3:9: rule 1: on: must be a list, got a string`},
		},
		{
			name: "empty on",
			src:  "rules:\n  - table: todos\n    on: []\n    tags: [todos]\n",
			want: []string{`r.yaml:3:9: rule 1: on: must not be empty`},
		},
		{
			name: "empty columns",
			src:  "rules:\n  - table: todos\n    columns: []\n    tags: [todos]\n",
			want: []string{`r.yaml:3:14: rule 1: columns: must not be empty`},
		},
		{
			name: "duplicate rule names",
			src: "rules:\n  - name: todo\n    table: todos\n    tags: [a]\n" +
				"  - name: todo\n    table: todos\n    tags: [b]\n",
			want: []string{`r.yaml:5:11: rule 2 "todo": name: duplicate name "todo" (also rule 1 at line 2)`},
		},
		{
			name: "empty name",
			src:  "rules:\n  - name: \"\"\n    table: todos\n    tags: [a]\n",
			want: []string{`r.yaml:2:11: rule 1: name: must not be empty`},
		},
		{
			name: "empty table",
			src:  "rules:\n  - table: \"\"\n    tags: [todos]\n",
			want: []string{`r.yaml:2:12: rule 1: table: must not be empty`},
		},
		{
			name: "missing table",
			src:  "rules:\n  - name: x\n    tags: [todos]\n",
			want: []string{`r.yaml:2:5: rule 1 "x": table: missing`},
		},
		{
			name: "table pattern with three parts",
			src:  "rules:\n  - table: db.public.todos\n    tags: [todos]\n",
			want: []string{`r.yaml:2:12: rule 1: table: bad pattern "db.public.todos": want [schema.]table`},
		},
		{
			name: "table pattern with an empty part",
			src:  "rules:\n  - table: public.\n    tags: [todos]\n",
			want: []string{`r.yaml:2:12: rule 1: table: bad pattern "public.": want [schema.]table`},
		},
		{
			name: "table pattern with a space",
			src:  "rules:\n  - table: my todos\n    tags: [todos]\n",
			want: []string{`r.yaml:2:12: rule 1: table: bad pattern "my todos": a name may contain letters, digits, "_", "$", "-" and "*"`},
		},
		{
			name: "static part over 256 bytes",
			src:  "rules:\n  - table: todos\n    tags: [\"" + long + ":{id}\"]\n",
			want: []string{`r.yaml:3:12: rule 1: tags[0] "` + long + `:{id}": static text is 258 bytes, over the 256-byte tag limit`},
		},
		{
			name: "wildcard form over 256 bytes",
			src:  "rules:\n  - table: todos\n    tags: [\"" + long[:250] + "{a}{b}{c}{d}{e}{f}{g}\"]\n",
			want: []string{`r.yaml:3:12: rule 1: tags[0] "` + long[:250] + `{a}{b}{c}{d}{e}{f}{g}": wildcard form is 257 bytes, over the 256-byte tag limit`},
		},
		{
			name: "top level is not a mapping",
			src:  "- table: todos\n  tags: [todos]\n",
			want: []string{`r.yaml:1:1: the top level must be a mapping with a "rules:" list, got a list`},
		},
		{
			name: "rules missing",
			src:  "rule:\n  - table: todos\n",
			want: []string{
				`r.yaml:1:1: unknown key "rule" (want "rules")`,
				`r.yaml:1:1: rules: missing (want a top-level "rules:" list)`,
			},
		},
		{
			name: "empty file",
			src:  "# nothing here\n",
			want: []string{`r.yaml:1:1: rules: missing (the file is empty; want a top-level "rules:" list)`},
		},
		{
			name: "rules is not a list",
			src:  "rules:\n  table: todos\n",
			want: []string{`r.yaml:2:3: rules: must be a list, got a mapping`},
		},
		{
			name: "no rules",
			src:  "rules: []\n",
			want: []string{`r.yaml:1:8: rules: must contain at least one rule`},
		},
		{
			name: "rule is not a mapping",
			src:  "rules:\n  - todos\n",
			want: []string{`r.yaml:2:5: rule 1: must be a mapping with table and tags, got a string`},
		},
		{
			name: "duplicate key",
			src:  "rules:\n  - table: todos\n    tags: [a]\n    table: posts\n",
			want: []string{`r.yaml:4:5: rule 1: duplicate key "table"`},
		},
		{
			name: "YAML syntax error",
			src:  "rules:\n  - table: todos\n    tags: [a\n",
			want: []string{`r.yaml:2: invalid YAML: did not find expected ',' or ']'`},
		},
		{
			name: "two documents",
			src:  "rules:\n  - table: todos\n    tags: [a]\n---\nrules: []\n",
			want: []string{`r.yaml:4:1: only one YAML document is allowed`},
		},
		{
			name: "every problem is reported, in file order",
			src: "rules:\n" +
				"  - name: a\n    table: todos\n    tags: [\"{x\"]\n" +
				"  - table: posts\n    on: [upsert]\n    tags: []\n" +
				"  - name: ok\n    table: users\n    tags: [user]\n",
			want: []string{
				`r.yaml:4:12: rule 1 "a": tags[0] "{x": unbalanced "{" at byte 1 (write "{{" for a literal brace)`,
				`r.yaml:6:10: rule 2: on[0]: unknown operation "upsert" (want insert, update, delete or truncate)`,
				`r.yaml:7:11: rule 2: tags: must not be empty`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse([]byte(tt.src), "r.yaml")
			if s != nil {
				t.Errorf("got a Set with %d rules; a file is loaded whole or not at all", len(s.Rules))
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("err = %v (%T), want rules.Errors", err, err)
			}
			var got []string
			for _, e := range errs {
				got = append(got, e.Error())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("errors:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
			}
			if err.Error() != strings.Join(tt.want, "\n") {
				t.Errorf("Error() = %q", err.Error())
			}
			var first *Error
			if !errors.As(err, &first) || first != errs[0] {
				t.Errorf("errors.As(*Error) did not find the first error")
			}
		})
	}
}

func TestErrorFields(t *testing.T) {
	_, err := Parse([]byte("rules:\n  - name: todo-item\n    table: todos\n    tags: []\n"), "rules.yaml")
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v", err)
	}
	want := Error{File: "rules.yaml", Line: 4, Column: 11, Rule: `rule 1 "todo-item"`, Msg: "tags: must not be empty"}
	if *e != want {
		t.Errorf("error = %+v, want %+v", *e, want)
	}
}

func TestLoad(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v", err)
	}
	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, []byte("rules:\n  - table: todos\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if want := path + ":2:5: rule 1: tags: missing"; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
}

// The shipped example loads and behaves as its comments say.
func TestExampleFile(t *testing.T) {
	s, err := Load("../rules.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range s.Rules {
		names = append(names, r.Name)
	}
	if want := []string{"todo-item", "post-comments", "post", "auction", "auction-bids", "audit-dashboard"}; !slices.Equal(names, want) {
		t.Errorf("rules = %q, want %q", names, want)
	}
	e := Compile(s, Options{DefaultSchema: "public"})
	check := func(c *cdc.Change, want ...string) {
		t.Helper()
		if got := evalSorted(t, e, c); !slices.Equal(got, want) {
			t.Errorf("%s %s.%s: tags %q, want %q", c.Op, c.Table.Schema, c.Table.Name, got, want)
		}
	}
	todos := &cdc.Table{Schema: "public", Name: "todos", Columns: []string{"id", "user_id", "title"}}
	check(&cdc.Change{Table: todos, Op: cdc.Update, Old: row(txt("1"), txt("7"), txt("a")), New: row(txt("1"), txt("9"), txt("a"))},
		"todo:1", "todos", "user:7:todos", "user:9:todos")
	comments := &cdc.Table{Schema: "public", Name: "comments", Columns: []string{"id", "post_id", "body", "spam_score", "deleted_at"}}
	old := row(txt("5"), txt("3"), txt("hi"), txt("0"), null)
	check(&cdc.Change{Table: comments, Op: cdc.Update, Old: old, New: row(txt("5"), txt("3"), txt("hi"), txt("9"), null)})
	check(&cdc.Change{Table: comments, Op: cdc.Update, Old: old, New: row(txt("5"), txt("3"), txt("hi!"), txt("0"), null)},
		"comment:5", "post:3:comments")
	check(&cdc.Change{Table: comments, Op: cdc.Truncate})
	auctions := &cdc.Table{Schema: "public", Name: "auctions", Columns: []string{"id", "title"}}
	check(&cdc.Change{Table: auctions, Op: cdc.Insert, New: row(txt("123"), txt("Lamp"))}, "Auction:123", "Query.auctions")
	bids := &cdc.Table{Schema: "public", Name: "bids", Columns: []string{"id", "auction_id", "amount"}}
	check(&cdc.Change{Table: bids, Op: cdc.Insert, New: row(txt("9"), txt("123"), txt("10.50"))}, "Auction:123", "Bid:9")
	posts := &cdc.Table{Schema: "public", Name: "posts", Columns: []string{"id", "author_id"}}
	check(&cdc.Change{Table: posts, Op: cdc.Update, Old: row(txt("4"), txt("1")), New: row(txt("4"), txt("2"))},
		"author:1:posts", "author:2:posts", "post:4")
	audit := &cdc.Table{Schema: "audit", Name: "logins", Columns: []string{"id"}}
	check(&cdc.Change{Table: audit, Op: cdc.Truncate}, "admin:audit")
}

func TestRequirements(t *testing.T) {
	s, err := Parse([]byte(`rules:
  - name: todo-item
    table: todos
    columns: [done, title]
    tags: [todos, "todo:{id}", "user:{user_id}:todos", "x:{id}"]
  - table: app.posts
    on: [insert]
    tags: ["post:{id}"]
  - table: "*.audit_*"
    on: [update]
    tags: ["now:{new.id}", audit]
  - table: items
    on: [insert, update]
    tags: ["was:{old.owner}"]
  - table: items
    on: [delete]
    tags: ["item:{id}"]
  - table: items
    tags: [items]
`), "r.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got := s.Requirements("public")
	want := []cdc.Requirement{
		{Rule: "todo-item", Schema: "public", Table: "todos", Columns: []string{"id", "user_id", "done", "title"}, NeedsOld: true},
		{Rule: "rule 2", Schema: "app", Table: "posts", Columns: []string{"id"}},
		{Rule: "rule 3", Schema: "*", Table: "audit_*", Columns: []string{"id"}},
		{Rule: "rule 4", Schema: "public", Table: "items", Columns: []string{"owner"}, NeedsOld: true},
		{Rule: "rule 5", Schema: "public", Table: "items", Columns: []string{"id"}, NeedsOld: true},
		{Rule: "rule 6", Schema: "public", Table: "items"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d requirements, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Rule != w.Rule || g.Schema != w.Schema || g.Table != w.Table || !slices.Equal(g.Columns, w.Columns) || g.NeedsOld != w.NeedsOld {
			t.Errorf("requirement %d = %+v, want %+v", i+1, g, w)
		}
	}
}

// A Rule built by hand (not from Parse) still compiles; a template that
// does not parse becomes `*`.
func TestHandBuiltRule(t *testing.T) {
	s := &Set{Rules: []*Rule{{Index: 1, Table: "todos", Tags: []string{"todo:{id}", "bad:{"}}}}
	e := Compile(s, Options{DefaultSchema: "public"})
	got := evalSorted(t, e, &cdc.Change{Table: todos, Op: cdc.Insert, New: row(txt("1"))})
	if want := []string{"*", "todo:1"}; !slices.Equal(got, want) {
		t.Errorf("tags = %q, want %q", got, want)
	}
}
