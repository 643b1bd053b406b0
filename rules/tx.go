package rules

import (
	"slices"

	"github.com/tagstream/tagstream/cdc"
)

// Tx accumulates the de-duplicated tags of one transaction. It implements
// cdc.Tx. Its memory is bounded by the Engine's MaxTags: when one more
// distinct tag would exceed the cap, the transaction collapses to the
// wildcard forms of every rule it touched (every placeholder → `*`), which
// cover every tag it had and every tag it will get. A Tx belongs to one
// goroutine at a time.
type Tx struct {
	e         *Engine
	set       map[string]struct{}
	touched   []uint64 // bitset of Engine.rules that fired
	collapsed bool
	foreign   bool // holds tags of another Engine's Tx
	scratch   [][]byte
	// The last table's candidate rules: a transaction's rows mostly come
	// in runs of one table, and the Engine's cache is a sync.Map.
	table *cdc.Table
	rules *tableRules
}

var (
	_ cdc.Tx         = (*Tx)(nil)
	_ cdc.Projection = (*Tx)(nil)
)

// NewTx returns an empty transaction accumulator.
func (e *Engine) NewTx() *Tx {
	return &Tx{
		e:       e,
		set:     make(map[string]struct{}),
		touched: make([]uint64, (len(e.rules)+63)/64),
	}
}

// Reset empties t for the next transaction, keeping its memory.
func (t *Tx) Reset() {
	clear(t.set)
	clear(t.touched)
	t.collapsed, t.foreign = false, false
	t.scratch = t.scratch[:0]
	t.table, t.rules = nil, nil
}

// Collapsed reports whether t hit the cap and holds wildcard forms only.
func (t *Tx) Collapsed() bool { return t.collapsed }

// Len is the number of distinct tags accumulated so far (0 once collapsed).
func (t *Tx) Len() int { return len(t.set) }

func (t *Tx) candidates(tbl *cdc.Table) *tableRules {
	if tbl != t.table || t.rules == nil {
		t.table, t.rules = tbl, t.e.candidates(tbl)
	}
	return t.rules
}

func (t *Tx) touch(i int) { t.touched[i>>6] |= 1 << (i & 63) }

// Add turns one change into tags now. Only the change's tags that are new to
// the transaction allocate.
func (t *Tx) Add(c *cdc.Change) {
	t.scratch = t.e.eval(t.scratch[:0], c, t)
	for _, b := range t.scratch {
		t.addTag(b)
	}
}

func (t *Tx) addTag(b []byte) {
	if t.collapsed {
		return
	}
	if _, ok := t.set[string(b)]; ok {
		return
	}
	if len(t.set) >= t.e.maxTags {
		t.collapse()
		return
	}
	t.set[string(b)] = struct{}{}
}

// collapse drops the tag set: from now on the touched rules' wildcard forms
// stand for it.
func (t *Tx) collapse() {
	if t.collapsed {
		return
	}
	t.collapsed = true
	t.e.collapses.Add(1)
	clear(t.set)
	if t.foreign {
		t.set["*"] = struct{}{}
	}
}

// markForeign records that t holds tags our rules' wildcard forms may not
// cover (from another Engine's Tx): a collapse then keeps `*`.
func (t *Tx) markForeign() {
	t.foreign = true
	if t.collapsed {
		t.set["*"] = struct{}{}
	}
}

// Reads implements cdc.Projection: the columns of tbl that the rules firing
// on op read (placeholders, and the columns filters on updates). Once t has
// collapsed, templates are no longer expanded and only the columns filters
// still decide which rules fire (and so which wildcard forms it holds).
func (t *Tx) Reads(tbl *cdc.Table, op cdc.Op) []bool {
	if op < cdc.Insert || op > cdc.Truncate {
		return nil // an op this version does not know: every column
	}
	return t.candidates(tbl).readsOf(op, t.collapsed, len(tbl.Columns))
}

// Merge absorbs other (a committed subtransaction); other is unusable
// afterwards. A Tx of another Engine (a reload between subtransactions)
// contributes its tags; should the merged set then overflow, t collapses to
// `*` (everything).
func (t *Tx) Merge(other cdc.Tx) {
	o, ok := other.(*Tx)
	if !ok || o.e != t.e {
		t.mergeForeign(other)
		return
	}
	if o == t {
		return
	}
	for i, w := range o.touched {
		t.touched[i] |= w
	}
	if o.foreign {
		t.markForeign()
	}
	if o.collapsed {
		t.collapse()
	}
	for tag := range o.set {
		t.addString(tag)
	}
	clear(o.set)
}

func (t *Tx) addString(tag string) {
	if t.collapsed {
		return
	}
	if _, ok := t.set[tag]; ok {
		return
	}
	if len(t.set) >= t.e.maxTags {
		t.collapse()
		return
	}
	t.set[tag] = struct{}{}
}

func (t *Tx) mergeForeign(other cdc.Tx) {
	tags := []string{"*"} // nothing known about it: invalidate everything
	if other != nil {
		tags = other.Tags()
	}
	if len(tags) == 0 {
		return
	}
	t.markForeign()
	for _, tag := range tags {
		t.addString(tag)
	}
}

// Tags returns the transaction's sorted, de-duplicated tags: the tags
// accumulated, or after a collapse the wildcard forms of the rules touched.
func (t *Tx) Tags() []string {
	out := make([]string, 0, len(t.set))
	for tag := range t.set {
		out = append(out, tag)
	}
	if t.collapsed {
		for i, c := range t.e.rules {
			if t.touched[i>>6]&(1<<(i&63)) != 0 {
				out = append(out, c.wildcards...)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
