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
