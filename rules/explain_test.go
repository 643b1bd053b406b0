package rules

import (
	"slices"
	"testing"

	"github.com/tagstream/tagstream/cdc"
)

func TestDisplayNameAndMention(t *testing.T) {
	for _, tc := range []struct {
		r             Rule
		display, ment string
	}{
		{Rule{Name: "todo-item", Index: 1}, "todo-item", "rule todo-item"},
		{Rule{Index: 2}, "rule 2", "rule 2"},
		{Rule{Name: "rules", Index: 3}, "rules", "rule rules"},
		{Rule{Name: "rule x", Index: 4}, "rule x", "rule rule x"},
	} {
		if got := tc.r.DisplayName(); got != tc.display {
			t.Errorf("DisplayName %q, want %q", got, tc.display)
		}
		if got := Mention(tc.r.DisplayName()); got != tc.ment {
			t.Errorf("Mention %q, want %q", got, tc.ment)
		}
	}
}

func TestEvalByRule(t *testing.T) {
	set, err := Parse([]byte(`rules:
  - name: todo
    table: todos
    columns: [done]
    tags: [todos, "todo:{id}"]
  - table: other
    tags: [other]
  - table: todos
    on: [delete]
    tags: ["gone:{id}", "owner:{owner}"]
`), "r.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e := Compile(set, Options{DefaultSchema: "public"})
	tbl := &cdc.Table{Schema: "public", Name: "todos", Columns: []string{"id", "done", "owner"}}
	txt := func(s string) cdc.Value { return cdc.Value{Kind: cdc.Text, Text: []byte(s)} }
	null := cdc.Value{Kind: cdc.Null}

	got := e.EvalByRule(&cdc.Change{Table: tbl, Op: cdc.Delete, Old: []cdc.Value{txt("3"), txt("t"), null}})
	want := []RuleTags{
		{Rule: set.Rules[0], Fired: true, Tags: []string{"todo:3", "todos"}},
		{Rule: set.Rules[2], Fired: true, Tags: []string{"gone:3"}},
	}
	if !slices.EqualFunc(got, want, eqRuleTags) {
		t.Fatalf("delete: got %+v, want %+v", got, want)
	}
	// An update the columns filter ignores; the delete-only rule does not fire.
	got = e.EvalByRule(&cdc.Change{Table: tbl, Op: cdc.Update, Old: []cdc.Value{txt("3"), txt("t"), txt("a")}, New: []cdc.Value{txt("3"), txt("t"), txt("b")}})
	want = []RuleTags{{Rule: set.Rules[0]}, {Rule: set.Rules[2]}}
	if !slices.EqualFunc(got, want, eqRuleTags) {
		t.Fatalf("update: got %+v, want %+v", got, want)
	}
	if got := e.EvalByRule(&cdc.Change{Table: &cdc.Table{Schema: "public", Name: "nope"}, Op: cdc.Truncate}); len(got) != 0 {
		t.Fatalf("unknown table: %+v", got)
	}
}

func eqRuleTags(a, b RuleTags) bool {
	return a.Rule == b.Rule && a.Fired == b.Fired && slices.Equal(a.Tags, b.Tags)
}

// TestFireCounts: each change that fires a rule counts once for that rule
// (by display name); Engines compiled with the same FireCounts (a reload)
// add to the same counts; counting allocates nothing.
func TestFireCounts(t *testing.T) {
	fires := &FireCounts{}
	const yaml = `
  - name: todo
    table: todos
    columns: [done]
    tags: [todos]
  - table: todos
    on: [delete]
    tags: ["gone:{id}"]
`
	e := mustCompile(t, yaml, Options{DefaultSchema: "public", Fires: fires})
	tbl := &cdc.Table{Schema: "public", Name: "todos", Columns: []string{"id", "done"}}
	ins := &cdc.Change{Table: tbl, Op: cdc.Insert, New: row(txt("1"), txt("f"))}
	filtered := &cdc.Change{Table: tbl, Op: cdc.Update, Old: row(txt("1"), txt("f")), New: row(txt("1"), txt("f"))}
	del := &cdc.Change{Table: tbl, Op: cdc.Delete, Old: row(txt("1"), txt("f"))}
	tx := e.NewTx()
	for _, c := range []*cdc.Change{ins, ins, filtered, del} {
		tx.Add(c)
	}
	// A reload: the same names go on counting.
	e2 := mustCompile(t, yaml, Options{DefaultSchema: "public", Fires: fires})
	e2.Eval(nil, del)
	type count struct {
		rule  string
		fires uint64
	}
	var got []count
	fires.Each(func(rule string, n uint64) { got = append(got, count{rule, n}) })
	want := []count{{"rule 2", 2}, {"todo", 4}}
	if !slices.Equal(got, want) {
		t.Fatalf("fires %v, want %v", got, want)
	}
	if e2.Fires() != fires || mustCompile(t, yaml, Options{}).Fires() == nil {
		t.Fatal("Engine.Fires")
	}
	var dst [][]byte
	if allocs := testing.AllocsPerRun(100, func() { dst = e.Eval(dst[:0], del) }); allocs != 0 {
		t.Fatalf("Eval with fire counts: %v allocs", allocs)
	}
}
