package rules

import (
	"slices"
	"strconv"
	"testing"

	"github.com/tagstream/tagstream/cdc"
)

// TestReads: the columns a Tx says it reads (cdc.Projection), per op, before
// and after the transaction collapses.
func TestReads(t *testing.T) {
	tbl := &cdc.Table{Schema: "public", Name: "todos", Columns: []string{"id", "user_id", "title", "done", "notes"}}
	tests := []struct {
		name  string
		rules string
		op    cdc.Op
		want  []bool // id, user_id, title, done, notes
	}{
		{"placeholders", `
  - table: todos
    tags: [todos, "todo:{id}", "user:{user_id}:todos"]
`, cdc.Insert, []bool{true, true, false, false, false}},
		{"pinned images read the column too", `
  - table: todos
    tags: ["a:{new.title}", "b:{old.done}"]
`, cdc.Update, []bool{false, false, true, true, false}},
		{"the columns filter is read on updates", `
  - table: todos
    columns: [title, notes]
    tags: ["todo:{id}"]
`, cdc.Update, []bool{true, false, true, false, true}},
		{"the columns filter is not read on inserts", `
  - table: todos
    columns: [title, notes]
    tags: ["todo:{id}"]
`, cdc.Insert, []bool{true, false, false, false, false}},
		{"a rule not on the op reads nothing", `
  - table: todos
    on: [insert]
    tags: ["todo:{id}"]
`, cdc.Delete, []bool{false, false, false, false, false}},
		{"truncate reads nothing", `
  - table: todos
    tags: ["todo:{id}"]
`, cdc.Truncate, []bool{false, false, false, false, false}},
		{"a rule of another table reads nothing", `
  - table: posts
    tags: ["post:{id}"]
`, cdc.Insert, []bool{false, false, false, false, false}},
		{"a column the table lacks", `
  - table: todos
    tags: ["x:{nope}", "todo:{id}"]
`, cdc.Insert, []bool{true, false, false, false, false}},
		{"rules combine; a wildcard table pattern", `
  - table: todos
    tags: ["todo:{id}"]
  - table: "*"
    tags: ["any:{notes}"]
`, cdc.Delete, []bool{true, false, false, false, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := mustCompile(t, tt.rules, Options{DefaultSchema: "public"})
			if got := e.NewTx().Reads(tbl, tt.op); !slices.Equal(got, tt.want) {
				t.Errorf("Reads(%s) = %v, want %v", tt.op, got, tt.want)
			}
		})
	}
	t.Run("an unknown op reads every column", func(t *testing.T) {
		e := mustCompile(t, "  - table: todos\n    tags: [x]\n", Options{DefaultSchema: "public"})
		if got := e.NewTx().Reads(tbl, cdc.Op(9)); got != nil {
			t.Errorf("Reads(op 9) = %v, want nil", got)
		}
	})
}

// TestReadsAfterCollapse: once a Tx has collapsed to wildcard forms only the
// columns filters decide what it holds, so only they are read; a change
// projected to them gives the same tags as the whole change, both for rules
// that fire and for a filtered rule that must stay out.
func TestReadsAfterCollapse(t *testing.T) {
	e := mustCompile(t, `
  - name: todo
    table: todos
    tags: ["todo:{id}"]
  - name: titled
    table: todos
    on: [update]
    columns: [title]
    tags: ["titled:{id}"]
`, Options{DefaultSchema: "public", MaxTags: 4})
	tbl := &cdc.Table{Schema: "public", Name: "todos", Columns: []string{"id", "user_id", "title"}}
	full, projected := e.NewTx(), e.NewTx()
	for i := range 5 {
		id := txt(strconv.Itoa(i))
		c := &cdc.Change{Table: tbl, Op: cdc.Insert, New: row(id, txt("7"), txt("milk"))}
		full.Add(c)
		projected.Add(project(c, projected.Reads(tbl, c.Op)))
	}
	if !full.Collapsed() || !projected.Collapsed() {
		t.Fatal("the transactions did not collapse")
	}
	for op, want := range map[cdc.Op][]bool{
		cdc.Insert: {false, false, false},
		cdc.Delete: {false, false, false},
		cdc.Update: {false, false, true}, // the filter of "titled"
	} {
		if got := projected.Reads(tbl, op); !slices.Equal(got, want) {
			t.Errorf("after the collapse, Reads(%s) = %v, want %v", op, got, want)
		}
	}
	// An update that leaves the title alone: only rule "todo" fires.
	up := &cdc.Change{Table: tbl, Op: cdc.Update, Old: row(txt("1"), txt("7"), txt("milk")), New: row(txt("1"), txt("9"), txt("milk"))}
	full.Add(up)
	projected.Add(project(up, projected.Reads(tbl, up.Op)))
	want := []string{"todo:*"}
	if got := full.Tags(); !slices.Equal(got, want) {
		t.Fatalf("whole changes: tags %q, want %q", got, want)
	}
	if got := projected.Tags(); !slices.Equal(got, want) {
		t.Errorf("projected changes: tags %q, want %q", got, want)
	}
	// Now one that changes it: "titled" fires too.
	up2 := &cdc.Change{Table: tbl, Op: cdc.Update, Old: row(txt("1"), txt("7"), txt("milk")), New: row(txt("1"), txt("7"), txt("oat milk"))}
	full.Add(up2)
	projected.Add(project(up2, projected.Reads(tbl, up2.Op)))
	want = []string{"titled:*", "todo:*"}
	if got, pgot := full.Tags(), projected.Tags(); !slices.Equal(got, want) || !slices.Equal(pgot, want) {
		t.Errorf("tags: whole %q, projected %q; want %q", got, pgot, want)
	}
}
