package rules

import (
	"testing"

	"github.com/tagstream/tagstream/cdc"
)

// BenchmarkEval: a 3-template rule on a 6-column row.
func BenchmarkEval(b *testing.B) {
	e := mustCompile(b, `
  - name: todo-item
    table: todos
    tags: [todos, "todo:{id}", "user:{user_id}:todos"]
  - name: other
    table: posts
    tags: ["post:{id}"]
`, Options{DefaultSchema: "public"})
	tbl := &cdc.Table{Schema: "public", Name: "todos", Columns: []string{"id", "user_id", "title", "done", "created_at", "notes"}}
	newRow := row(txt("123456"), txt("42"), txt("buy oat milk"), txt("f"), txt("2024-05-01 10:11:12.123456"), txt("two words"))
	oldRow := row(txt("123456"), txt("41"), txt("buy milk"), txt("f"), txt("2024-05-01 10:11:12.123456"), txt("two words"))
	for _, bc := range []struct {
		name string
		c    *cdc.Change
	}{
		{"insert", &cdc.Change{Table: tbl, Op: cdc.Insert, New: newRow}},
		{"update", &cdc.Change{Table: tbl, Op: cdc.Update, Old: oldRow, New: newRow}},
		{"delete", &cdc.Change{Table: tbl, Op: cdc.Delete, Old: oldRow}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			dst := e.Eval(nil, bc.c)
			b.ReportAllocs()
			for b.Loop() {
				dst = e.Eval(dst[:0], bc.c)
			}
		})
	}
	// Through a transaction: Eval plus de-duplication into the tag set.
	b.Run("tx-add", func(b *testing.B) {
		c := &cdc.Change{Table: tbl, Op: cdc.Update, Old: oldRow, New: newRow}
		tx := e.NewTx()
		tx.Add(c)
		b.ReportAllocs()
		for b.Loop() {
			tx.Add(c)
		}
	})
}
