package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/rules"
)

// runExplain prints the tags one change produces, offline: the way to debug a
// rules file without a database. Exit 0 with the sorted tags (none is a valid
// answer: a NULL value, an update the columns filter ignores); exit 2 for
// bad flags, bad JSON, an unknown op or a table no rule names.
func runExplain(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("explain", stdout)
	rulesPath := fs.String("rules", "", "rules `FILE` (env TAGSTREAM_RULES)")
	table := fs.String("table", "", "the changed table, `[SCHEMA.]TABLE`")
	schema := fs.String("schema", "public", "the `SCHEMA` of an unqualified --table and of the rules' unqualified tables (MySQL: the DSN's database)")
	opName := fs.String("op", "", "the change: insert, update, delete or truncate")
	oldJSON := fs.String("old", "", "the old row as a `JSON` object of column -> string or null; a column not listed is absent (update, delete). Omitted on an update: no old image was sent (REPLICA IDENTITY DEFAULT)")
	newJSON := fs.String("new", "", "the new row as a `JSON` object of column -> string or null; a column not listed is absent (insert, update)")
	key := fs.String("key", "", "comma-separated replica identity key `COLUMNS`: on an update without --old, their old values are the new ones")
	oldImages := fs.String("old-images", "wildcard", "an update without an old image: wildcard or new-only, as for run (env TAGSTREAM_OLD_IMAGES)")
	verbose := fs.Bool("v", false, "verbose: print each tag as its rule's name, a tab, and the tag")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	// The change itself comes from the command line only.
	if err := applyEnv(fs, []string{"rules", "old-images"}); err != nil {
		return err
	}
	if *rulesPath == "" {
		return usageErrorf("explain: --rules is required (or TAGSTREAM_RULES)")
	}
	ch, err := explainChange(*table, *schema, *opName, *oldJSON, *newJSON, *key)
	if err != nil {
		return err
	}
	oi, err := rules.ParseOldImages(*oldImages)
	if err != nil {
		return usageErrorf("explain: --old-images: %q is not wildcard or new-only", *oldImages)
	}
	set, err := rules.Load(*rulesPath)
	if err != nil {
		return usageErrorf("explain: %s", oneLine(err))
	}
	byRule := rules.Compile(set, rules.Options{DefaultSchema: *schema, OldImages: oi}).EvalByRule(ch)
	if len(byRule) == 0 {
		return usageErrorf("explain: no rule in %s names table %s.%s", *rulesPath, ch.Table.Schema, ch.Table.Name)
	}
	if *verbose {
		for _, rt := range byRule {
			for _, tag := range rt.Tags {
				fmt.Fprintf(stdout, "%s\t%s\n", rt.Rule.DisplayName(), tag)
			}
		}
		return nil
	}
	var tags []string
	for _, rt := range byRule {
		tags = append(tags, rt.Tags...)
	}
	slices.Sort(tags)
	for _, tag := range slices.Compact(tags) {
		fmt.Fprintln(stdout, tag)
	}
	return nil
}

// explainChange builds the change explain evaluates from its flags.
func explainChange(table, schema, opName, oldJSON, newJSON, key string) (*cdc.Change, error) {
	op, ok := rules.ParseOp(opName)
	if !ok {
		if opName == "" {
			return nil, usageErrorf("explain: --op is required: insert, update, delete or truncate")
		}
		return nil, usageErrorf("explain: --op %q is not insert, update, delete or truncate", opName)
	}
	t, err := explainTable(table, schema)
	if err != nil {
		return nil, err
	}
	switch {
	case oldJSON != "" && (op == cdc.Insert || op == cdc.Truncate):
		return nil, usageErrorf("explain: --old: an %s has no old row", op)
	case newJSON != "" && (op == cdc.Delete || op == cdc.Truncate):
		return nil, usageErrorf("explain: --new: a %s has no new row", op)
	}
	oldRow, err := parseRow("old", oldJSON)
	if err != nil {
		return nil, err
	}
	newRow, err := parseRow("new", newJSON)
	if err != nil {
		return nil, err
	}
	// The table's columns are those either image lists, in name order.
	seen := map[string]bool{}
	for _, r := range []map[string]*string{oldRow, newRow} {
		for c := range r {
			if !seen[c] {
				seen[c] = true
				t.Columns = append(t.Columns, c)
			}
		}
	}
	keys := splitList(key)
	slices.Sort(t.Columns)
	for _, k := range keys {
		if !seen[k] {
			t.Columns = append(t.Columns, k)
			seen[k] = true
		}
	}
	t.Key = make([]bool, len(t.Columns))
	for i, c := range t.Columns {
		t.Key[i] = slices.Contains(keys, c)
	}
	ch := &cdc.Change{Table: t, Op: op}
	switch op {
	case cdc.Insert:
		ch.New = image(t.Columns, newRow)
	case cdc.Update:
		ch.New = image(t.Columns, newRow)
		if oldJSON != "" {
			ch.Old = image(t.Columns, oldRow)
		}
	case cdc.Delete:
		ch.Old = image(t.Columns, oldRow)
	}
	return ch, nil
}

// explainTable parses --table: TABLE (in schema) or SCHEMA.TABLE.
func explainTable(table, schema string) (*cdc.Table, error) {
	if table == "" {
		return nil, usageErrorf("explain: --table is required: [SCHEMA.]TABLE")
	}
	s, name, qualified := strings.Cut(table, ".")
	if !qualified {
		s, name = schema, table
	}
	if s == "" || name == "" || strings.Contains(name, ".") || strings.Contains(table, "*") {
		return nil, usageErrorf("explain: --table %q: want TABLE or SCHEMA.TABLE, without `*`", table)
	}
	return &cdc.Table{Schema: s, Name: name}, nil
}

// parseRow parses an image flag: a JSON object of column -> string or null.
func parseRow(flagName, s string) (map[string]*string, error) {
	if s == "" {
		return nil, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &raw); err != nil || raw == nil {
		return nil, usageErrorf(`explain: --%s: want a JSON object of column -> string or null, like {"id":"7","note":null}`, flagName)
	}
	row := make(map[string]*string, len(raw))
	for col, v := range raw {
		var str *string
		if err := json.Unmarshal(v, &str); err != nil {
			return nil, usageErrorf("explain: --%s: column %q: %s is not a string or null (write numbers as their text: \"7\")", flagName, col, v)
		}
		row[col] = str
	}
	return row, nil
}

// image lays row out in the order of columns: a column row does not list is
// Absent.
func image(columns []string, row map[string]*string) []cdc.Value {
	img := make([]cdc.Value, len(columns))
	for i, c := range columns {
		v, ok := row[c]
		switch {
		case !ok:
			img[i] = cdc.Value{Kind: cdc.Absent}
		case v == nil:
			img[i] = cdc.Value{Kind: cdc.Null}
		default:
			img[i] = cdc.Value{Kind: cdc.Text, Text: []byte(*v)}
		}
	}
	return img
}
