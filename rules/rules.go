// Package rules turns row changes into cache tags with a YAML rules file.
//
// A rules file is loaded whole or not at all (Load, Parse): every problem is
// reported with its file:line:column and the rule it belongs to. Compile
// turns a Set into an Engine that evaluates changes on the hot path, and an
// Engine hands out per-transaction accumulators (Tx) that de-duplicate tags
// and collapse to wildcard forms above a cap, so their memory stays flat in
// the number of rows.
//
// The contract (what users write, what tags come out) is docs/rules.md;
// the table tests in this package follow it sentence by
// sentence. Where the contract is silent this package decides:
//
//   - Update without an old image (Postgres REPLICA IDENTITY DEFAULT, key
//     unchanged): the old row's key columns (cdc.Table.Key) are the new
//     row's, its other columns are unknown: `*` wherever the old side reads
//     them ({col} and {old.col}); a columns filter counts a key column as
//     unchanged and any other as changed (a 'u' TOAST value: unchanged).
//     With Options.OldImages = OldImagesNewOnly the old side is skipped
//     instead: {col} expands against the new row only, {old.col} of a
//     non-key column yields no tag. An old image that was sent (a changed
//     key) is expanded in both modes.
//   - A rule matches a change when it names the change's table, one of the
//     partitioned tables that table is a partition of (cdc.Table.Ancestors),
//     or one of the partitions reported under the table's name
//     (cdc.Table.Partitions, Postgres publish_via_partition_root).
//   - A placeholder naming a column the table layout lacks (dropped,
//     renamed) is logged once per rule and layout, not once per row.
//   - {old.col} on an insert and {new.col} on a delete yield no tag: that row
//     does not exist, as with NULL.
//   - A placeholder naming a column the table lacks is unknown (`*`); a
//     `columns` entry the table lacks counts as changed. `tagstream check
//     --db` reports both.
//   - An expansion that would be the empty string yields no tag.
//   - Values are percent-encoded byte by byte: `%`, `,`, `*`, ASCII
//     whitespace and control characters, Unicode spaces and controls (as
//     their UTF-8 bytes) and invalid UTF-8, in uppercase hex.
//   - Template text outside placeholders may not contain `,`, whitespace or
//     control characters; `*` in it is a literal wildcard and kept.
//   - Table names match case-sensitively, byte for byte.
package rules

import (
	"strconv"
	"strings"

	"github.com/tagstream/tagstream/cdc"
)

// MaxTagLen is the longest tag tagstream emits (cdc.MaxTagLen). Longer
// expansions are replaced by their template's wildcard form and counted in
// Stats.LongTags.
const MaxTagLen = cdc.MaxTagLen

// DefaultMaxTags is the per-transaction cap of distinct tags above which a
// transaction collapses to the wildcard forms of the rules it touched.
const DefaultMaxTags = 4096

// Set is a validated rules file.
type Set struct {
	Rules []*Rule
}

// Rule is one entry of a rules file.
type Rule struct {
	Name  string // optional; "" when the file does not name the rule
	Index int    // 1-based position in the file

	// Schema and Table are patterns in which `*` matches any run of
	// characters. Schema is "" when the file's table is unqualified: the
	// engine's default schema applies (Options.DefaultSchema).
	Schema, Table string

	On      []cdc.Op // operations that fire the rule; all four by default
	Columns []string // update filter: fire only when one of these changed; nil = every update
	Tags    []string // template sources, as written

	Line, Column int // position of the rule in the file

	tmpls []*template // parsed Tags; nil for a Rule built by hand (Compile parses then)
}

// Label names the rule in logs and errors: its quoted name (`"todo-item"`)
// or, when unnamed, its position (`rule 3`).
func (r *Rule) Label() string {
	if r.Name != "" {
		return strconv.Quote(r.Name)
	}
	return "rule " + strconv.Itoa(r.Index)
}

// DisplayName is the rule's name, or "rule N" when unnamed: how `tagstream
// explain -v`, metrics labels and cdc.Requirement.Rule name it.
func (r *Rule) DisplayName() string {
	if r.Name != "" {
		return r.Name
	}
	return "rule " + strconv.Itoa(r.Index)
}

// Mention names a rule in a sentence, given its DisplayName: "rule todo" for
// a named rule, "rule 2" (not "rule rule 2") for an unnamed one.
func Mention(displayName string) string {
	if rest, ok := strings.CutPrefix(displayName, "rule "); ok && rest != "" && strings.Trim(rest, "0123456789") == "" {
		return displayName
	}
	return "rule " + displayName
}

// templates returns the parsed templates, parsing them for hand-built rules.
// A template that does not parse compiles to the tag `*` (invalidate
// everything): over-invalidation is allowed, silence is not.
func (r *Rule) templates() []*template {
	if r.tmpls != nil && len(r.tmpls) == len(r.Tags) {
		return r.tmpls
	}
	ts := make([]*template, len(r.Tags))
	for i, src := range r.Tags {
		t, err := parseTemplate(src)
		if err != nil {
			t = &template{src: src, parts: []part{{lit: "*"}}, wildcard: "*"}
		}
		ts[i] = t
	}
	return ts
}

// Requirements lists what each rule needs from the database, for `tagstream
// check --db`. Unqualified tables get defaultSchema.
func (s *Set) Requirements(defaultSchema string) []cdc.Requirement {
	reqs := make([]cdc.Requirement, 0, len(s.Rules))
	for _, r := range s.Rules {
		req := cdc.Requirement{Rule: r.DisplayName(), Schema: r.Schema, Table: r.Table}
		if req.Schema == "" {
			req.Schema = defaultSchema
		}
		seen := map[string]bool{}
		addCol := func(c string) {
			if !seen[c] {
				seen[c] = true
				req.Columns = append(req.Columns, c)
			}
		}
		var unpinned, pinnedOld bool
		for _, t := range r.templates() {
			for _, p := range t.parts {
				if !p.ph {
					continue
				}
				addCol(p.name)
				switch p.img {
				case imgAny:
					unpinned = true
				case imgOld:
					pinnedOld = true
				}
			}
		}
		for _, c := range r.Columns {
			addCol(c)
		}
		ops := opMask(r.On)
		update := ops&opBit(cdc.Update) != 0
		del := ops&opBit(cdc.Delete) != 0
		// Updates read the old row for unpinned placeholders, {old.col} and
		// the columns filter; deletes read every placeholder from the old
		// row, which only carries the key under REPLICA IDENTITY DEFAULT.
		req.NeedsOld = (update && (unpinned || pinnedOld || len(r.Columns) > 0)) ||
			(del && (unpinned || pinnedOld))
		reqs = append(reqs, req)
	}
	return reqs
}

func opBit(op cdc.Op) uint8 { return 1 << op }

func opMask(ops []cdc.Op) uint8 {
	var m uint8
	for _, op := range ops {
		m |= opBit(op)
	}
	return m
}

// allOps is the default of `on`.
var allOps = []cdc.Op{cdc.Insert, cdc.Update, cdc.Delete, cdc.Truncate}
