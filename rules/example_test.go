package rules_test

import (
	"fmt"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/rules"
)

func Example() {
	set, err := rules.Parse([]byte(`
rules:
  - name: todo-item
    table: todos
    tags: [todos, "todo:{id}", "user:{user_id}:todos"]
`), "rules.yaml")
	if err != nil {
		fmt.Println(err)
		return
	}
	engine := rules.Compile(set, rules.Options{DefaultSchema: "public"})

	// A reader hands over one *cdc.Table per relation and raw text values.
	todos := &cdc.Table{Schema: "public", Name: "todos", Columns: []string{"id", "user_id", "title"}}
	text := func(s string) cdc.Value { return cdc.Value{Kind: cdc.Text, Text: []byte(s)} }

	tx := engine.NewTx()
	// Moving todo 1 from user 7 to user 9 invalidates both users' lists.
	tx.Add(&cdc.Change{Table: todos, Op: cdc.Update,
		Old: []cdc.Value{text("1"), text("7"), text("milk")},
		New: []cdc.Value{text("1"), text("9"), text("oat milk")}})
	tx.Add(&cdc.Change{Table: todos, Op: cdc.Insert,
		New: []cdc.Value{text("2"), text("9"), text("50% off, today")}})
	fmt.Println(tx.Tags())

	_, err = rules.Parse([]byte("rules:\n  - name: todo-item\n    table: todos\n    tags: []\n"), "rules.yaml")
	fmt.Println(err)
	// Output:
	// [todo:1 todo:2 todos user:7:todos user:9:todos]
	// rules.yaml:4:11: rule 1 "todo-item": tags: must not be empty
}
