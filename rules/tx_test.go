package rules

import (
	"slices"
	"strconv"
	"testing"

	"github.com/tagstream/tagstream/cdc"
)

const txRules = `
  - name: todo
    table: todos
    tags: [todos, "todo:{id}", "user:{user_id}:todos"]
  - name: post
    table: posts
    tags: ["post:{id}"]
  - name: idle
    table: never
    tags: ["never:{id}"]
`

var posts = &cdc.Table{Schema: "public", Name: "posts", Columns: []string{"id"}}

func insertTodo(id, user int) *cdc.Change {
	return &cdc.Change{Table: todos, Op: cdc.Insert,
		New: row(txt(strconv.Itoa(id)), txt(strconv.Itoa(user)), txt("t"), txt("f"))}
}

func TestTxDeduplicatesAndSorts(t *testing.T) {
	e := mustCompile(t, txRules, Options{DefaultSchema: "public"})
	tx := e.NewTx()
	tx.Add(insertTodo(2, 7))
	tx.Add(insertTodo(1, 7))
	tx.Add(insertTodo(2, 7))
	tx.Add(&cdc.Change{Table: posts, Op: cdc.Delete, Old: row(txt("3"))})
	want := []string{"post:3", "todo:1", "todo:2", "todos", "user:7:todos"}
	if got := tx.Tags(); !slices.Equal(got, want) {
		t.Errorf("Tags() = %q, want %q", got, want)
	}
	if tx.Len() != 5 || tx.Collapsed() {
		t.Errorf("Len = %d, Collapsed = %v", tx.Len(), tx.Collapsed())
	}
}

func TestTxEmpty(t *testing.T) {
	e := mustCompile(t, txRules, Options{DefaultSchema: "public"})
	tx := e.NewTx()
	tx.Add(&cdc.Change{Table: &cdc.Table{Schema: "public", Name: "unrelated"}, Op: cdc.Insert})
	tx.Add(nil)
	if got := tx.Tags(); len(got) != 0 {
		t.Errorf("Tags() = %q, want none", got)
	}
}

// Above the cap the transaction collapses to the wildcard forms of the rules
// it touched; those cover every tag it had.
func TestTxCapCollapse(t *testing.T) {
	e := mustCompile(t, txRules, Options{DefaultSchema: "public", MaxTags: 4})
	tx := e.NewTx()
	var before []string
	tx.Add(&cdc.Change{Table: posts, Op: cdc.Insert, New: row(txt("1"))})
	tx.Add(insertTodo(1, 7)) // 4 distinct tags: at the cap, not over it
	before = tx.Tags()
	if tx.Collapsed() || len(before) != 4 {
		t.Fatalf("collapsed early: %q", before)
	}
	tx.Add(insertTodo(2, 7)) // todo:2 is the fifth
	if !tx.Collapsed() {
		t.Fatal("not collapsed above the cap")
	}
	for i := range 1000 {
		tx.Add(insertTodo(i, i))
	}
	if tx.Len() != 0 {
		t.Errorf("collapsed tx holds %d tags", tx.Len())
	}
	want := []string{"post:*", "todo:*", "todos", "user:*:todos"}
	got := tx.Tags()
	if !slices.Equal(got, want) {
		t.Errorf("Tags() = %q, want %q", got, want)
	}
	for _, tag := range append(before, "todo:2", "todo:999", "user:999:todos") {
		if !covered(tag, got) {
			t.Errorf("tag %q not covered by the collapsed set %q", tag, got)
		}
	}
	if n := e.Stats().Collapses; n != 1 {
		t.Errorf("Stats.Collapses = %d, want 1", n)
	}

	// Reset makes it usable for the next transaction.
	tx.Reset()
	tx.Add(insertTodo(5, 6))
	if got, want := tx.Tags(), []string{"todo:5", "todos", "user:6:todos"}; !slices.Equal(got, want) {
		t.Errorf("after Reset: Tags() = %q, want %q", got, want)
	}
}

// After a collapse, rules touched later still contribute their wildcard
// forms, and rules whose columns filter rejected the change do not.
func TestTxCollapseTracksRulesFiredLater(t *testing.T) {
	e := mustCompile(t, txRules+`
  - name: titles
    table: todos
    columns: [title]
    tags: ["title:{title}"]
`, Options{DefaultSchema: "public", MaxTags: 1})
	tx := e.NewTx()
	tx.Add(insertTodo(1, 1))
	if !tx.Collapsed() {
		t.Fatal("not collapsed")
	}
	// The title did not change: the titles rule does not fire.
	tx.Add(&cdc.Change{Table: todos, Op: cdc.Update, Old: row(txt("1"), txt("1"), txt("a"), txt("f")), New: row(txt("1"), txt("2"), txt("a"), txt("f"))})
	if got, want := tx.Tags(), []string{"title:*", "todo:*", "todos", "user:*:todos"}; !slices.Equal(got, want) {
		// insertTodo fired "titles" (inserts ignore the filter).
		t.Errorf("Tags() = %q, want %q", got, want)
	}
	tx.Add(&cdc.Change{Table: posts, Op: cdc.Truncate})
	if got, want := tx.Tags(), []string{"post:*", "title:*", "todo:*", "todos", "user:*:todos"}; !slices.Equal(got, want) {
		t.Errorf("Tags() = %q, want %q", got, want)
	}
}

// covered reports whether one of the patterns matches tag (`*` = any run).
func covered(tag string, patterns []string) bool {
	for _, p := range patterns {
		if glob(p, tag) {
			return true
		}
	}
	return false
}

func TestTxMerge(t *testing.T) {
	e := mustCompile(t, txRules, Options{DefaultSchema: "public", MaxTags: 5})
	t.Run("union", func(t *testing.T) {
		a, b := e.NewTx(), e.NewTx()
		a.Add(insertTodo(1, 7))
		b.Add(insertTodo(2, 7))
		a.Merge(b)
		if got, want := a.Tags(), []string{"todo:1", "todo:2", "todos", "user:7:todos"}; !slices.Equal(got, want) {
			t.Errorf("Tags() = %q, want %q", got, want)
		}
	})
	t.Run("overflow collapses", func(t *testing.T) {
		a, b := e.NewTx(), e.NewTx()
		a.Add(insertTodo(1, 7))
		b.Add(&cdc.Change{Table: posts, Op: cdc.Insert, New: row(txt("1"))})
		b.Add(&cdc.Change{Table: posts, Op: cdc.Insert, New: row(txt("2"))})
		b.Add(&cdc.Change{Table: posts, Op: cdc.Insert, New: row(txt("3"))})
		a.Merge(b)
		if got, want := a.Tags(), []string{"post:*", "todo:*", "todos", "user:*:todos"}; !slices.Equal(got, want) {
			t.Errorf("Tags() = %q, want %q", got, want)
		}
	})
	t.Run("collapsed other", func(t *testing.T) {
		a, b := e.NewTx(), e.NewTx()
		a.Add(&cdc.Change{Table: posts, Op: cdc.Insert, New: row(txt("1"))})
		for i := range 10 {
			b.Add(insertTodo(i, i))
		}
		a.Merge(b)
		if got, want := a.Tags(), []string{"post:*", "todo:*", "todos", "user:*:todos"}; !slices.Equal(got, want) {
			t.Errorf("Tags() = %q, want %q", got, want)
		}
	})
	t.Run("another engine's tx", func(t *testing.T) {
		other := mustCompile(t, "  - table: todos\n    tags: [\"v2:{id}\"]\n", Options{DefaultSchema: "public", MaxTags: 5})
		a, b := e.NewTx(), other.NewTx()
		a.Add(&cdc.Change{Table: posts, Op: cdc.Insert, New: row(txt("1"))})
		b.Add(insertTodo(9, 9))
		a.Merge(b)
		if got, want := a.Tags(), []string{"post:1", "v2:9"}; !slices.Equal(got, want) {
			t.Errorf("Tags() = %q, want %q", got, want)
		}
		// Overflowing now cannot keep v2:9 precisely: `*` covers it.
		for i := range 10 {
			a.Add(&cdc.Change{Table: posts, Op: cdc.Insert, New: row(txt(strconv.Itoa(i)))})
		}
		if got, want := a.Tags(), []string{"*", "post:*"}; !slices.Equal(got, want) {
			t.Errorf("Tags() = %q, want %q", got, want)
		}
	})
}

// A transaction's memory does not grow with its row count, and adding a
// change whose tags the transaction already has allocates nothing.
func TestTxBoundedMemory(t *testing.T) {
	e := mustCompile(t, txRules, Options{DefaultSchema: "public"})
	tx := e.NewTx()
	c := insertTodo(1, 7)
	tx.Add(c)
	if allocs := testing.AllocsPerRun(100, func() { tx.Add(c) }); allocs != 0 {
		t.Errorf("Add of known tags allocates %v times, want 0", allocs)
	}
	for i := range 20000 {
		tx.Add(insertTodo(i, i%100))
	}
	if !tx.Collapsed() || tx.Len() != 0 {
		t.Fatalf("Collapsed = %v, Len = %d", tx.Collapsed(), tx.Len())
	}
	if allocs := testing.AllocsPerRun(100, func() { tx.Add(c) }); allocs != 0 {
		t.Errorf("Add after collapse allocates %v times, want 0", allocs)
	}
	if got, want := tx.Tags(), []string{"todo:*", "todos", "user:*:todos"}; !slices.Equal(got, want) {
		t.Errorf("Tags() = %q, want %q", got, want)
	}
}

var _ cdc.Tx = (*Tx)(nil)
