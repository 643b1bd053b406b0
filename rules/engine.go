package rules

import (
	"bytes"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/tagstream/tagstream/cdc"
)

// Options configures Compile.
type Options struct {
	// DefaultSchema applies to unqualified table patterns: Postgres
	// "public", MySQL the DSN's database. When empty, an unqualified
	// pattern matches its table in every schema.
	DefaultSchema string
	// MaxTags is the per-transaction cap of distinct tags (default 4096).
	MaxTags int
	// OldImages says how an update without an old image expands (default
	// OldImagesWildcard).
	OldImages OldImages
	// Logger receives one warning per rule and table layout that lacks a
	// column the rule reads (default: discarded).
	Logger *slog.Logger
	// Fires counts the changes that fired each rule, by name; Engines
	// compiled with the same FireCounts (reloads) add to the same counts.
	// nil: the Engine counts on its own.
	Fires *FireCounts
}

// FireCounts counts, per rule (Rule.DisplayName), the changes that fired it:
// the rule's op and columns filter let it through. Safe for concurrent use;
// counting is one atomic add.
type FireCounts struct {
	mu sync.Mutex
	m  map[string]*atomic.Uint64
}

// counter returns the count of the rule named name, creating it at 0.
func (f *FireCounts) counter(name string) *atomic.Uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[string]*atomic.Uint64{}
	}
	c, ok := f.m[name]
	if !ok {
		c = new(atomic.Uint64)
		f.m[name] = c
	}
	return c
}

// Each calls fn with every rule name counted (rules of every Engine
// compiled with f, also those a reload removed) and its count, by name.
func (f *FireCounts) Each(fn func(rule string, fires uint64)) {
	f.mu.Lock()
	names := make([]string, 0, len(f.m))
	for n := range f.m {
		names = append(names, n)
	}
	counts := make([]*atomic.Uint64, len(names))
	slices.Sort(names)
	for i, n := range names {
		counts[i] = f.m[n]
	}
	f.mu.Unlock()
	for i, n := range names {
		fn(n, counts[i].Load())
	}
}

// OldImages is what an update that arrives without an old image (Postgres
// REPLICA IDENTITY DEFAULT or USING INDEX, key unchanged) expands to on its
// old side. Either way the old row's key columns (cdc.Table.Key) equal the
// new row's.
type OldImages uint8

const (
	// OldImagesWildcard: the old row's other columns are unknown, so
	// placeholders reading them become `*`. Never under-invalidates.
	OldImagesWildcard OldImages = iota
	// OldImagesNewOnly: the old side is skipped: {col} expands against the
	// new row only, and {old.col} of a non-key column yields no tag. The
	// explicit opt-out for users who accept missing the old row's tags.
	OldImagesNewOnly
)

func (o OldImages) String() string {
	if o == OldImagesNewOnly {
		return "new-only"
	}
	return "wildcard"
}

// ParseOldImages parses "wildcard" or "new-only".
func ParseOldImages(s string) (OldImages, error) {
	switch s {
	case "wildcard", "":
		return OldImagesWildcard, nil
	case "new-only":
		return OldImagesNewOnly, nil
	}
	return 0, fmt.Errorf("rules: old images %q: want wildcard or new-only", s)
}

// Stats are counters for metrics, totals since Compile.
type Stats struct {
	LongTags  uint64 // expansions over MaxTagLen bytes, replaced by their template's wildcard form
	Collapses uint64 // transactions collapsed to wildcard forms at the MaxTags cap
	Tables    uint64 // relations resolved into the candidate cache (one per *cdc.Table seen)
	// MissingColumns counts rules bound to a table layout that lacks a
	// column they read (logged once each; the placeholder expands to `*`).
	MissingColumns uint64
}

// Engine evaluates changes against a compiled Set.
//
// An Engine is safe for concurrent use: its only mutable state is a
// bounded cache of candidate rules per *cdc.Table and atomic counters.
// A Tx is not: it belongs to one goroutine at a time (the source's).
// Swapping Engines on reload is safe; a Tx keeps the Engine that made it.
type Engine struct {
	set       *Set
	rules     []*crule
	maxTags   int
	oldImages OldImages
	log       *slog.Logger

	cache    sync.Map // *cdc.Table → *tableRules
	cacheLen atomic.Int64
	fires    *FireCounts

	longTags, collapses, tables, missing atomic.Uint64
}

// crule is a compiled rule.
type crule struct {
	r         *Rule
	idx       int // position in Engine.rules
	schema    string
	table     string
	ops       uint8
	tmpls     []*template
	wildcards []string       // every template's wildcard form
	fired     *atomic.Uint64 // changes that fired the rule (Options.Fires)
}

// tableRules are the candidate rules of one relation, with column indexes
// resolved.
type tableRules struct {
	rules []boundRule
	// reads[op]: the columns a change with op may read (the placeholders of
	// the rules that fire on op; on updates, their columns filters too).
	// filterReads[op]: the same once a Tx collapsed, when templates are no
	// longer expanded and only the columns filters decide which rules fire.
	reads, filterReads [cdc.Truncate + 1][]bool
}

type boundRule struct {
	c      *crule
	filter []bcol // the columns filter; nil: no filter
	tmpls  []boundTemplate
}

// bcol is a column resolved against a table layout.
type bcol struct {
	i   int  // index into the row images; -1 when the table has no such column
	key bool // part of the table's replica identity key (cdc.Table.Key)
}

type boundTemplate struct {
	t     *template
	parts []bpart
}

type bpart struct {
	lit string
	ph  bool
	img image
	col bcol
}

// maxCachedTables bounds the candidate cache; it is emptied when full (each
// relation change brings a new *cdc.Table, so stale entries accumulate).
const maxCachedTables = 4096

// Compile prepares s for evaluation. s must come from Load or Parse (or be
// equally valid); a hand-built template that does not parse compiles to the
// tag `*`.
func Compile(s *Set, opts Options) *Engine {
	e := &Engine{set: s, maxTags: opts.MaxTags, oldImages: opts.OldImages, log: opts.Logger, fires: opts.Fires}
	if e.fires == nil {
		e.fires = &FireCounts{}
	}
	if e.maxTags <= 0 {
		e.maxTags = DefaultMaxTags
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	for i, r := range s.Rules {
		c := &crule{r: r, idx: i, schema: r.Schema, table: r.Table, ops: opMask(r.On), tmpls: r.templates(), fired: e.fires.counter(r.DisplayName())}
		if r.On == nil {
			c.ops = opMask(allOps)
		}
		if c.schema == "" {
			c.schema = opts.DefaultSchema
			if c.schema == "" {
				c.schema = "*"
			}
		}
		for _, t := range c.tmpls {
			c.wildcards = append(c.wildcards, t.wildcard)
		}
		e.rules = append(e.rules, c)
	}
	return e
}

// Set returns the rules the Engine was compiled from.
func (e *Engine) Set() *Set { return e.set }

// Fires returns the per-rule fire counts (Options.Fires, or the Engine's own).
func (e *Engine) Fires() *FireCounts { return e.fires }

// Stats returns the counters; safe from any goroutine.
func (e *Engine) Stats() Stats {
	return Stats{LongTags: e.longTags.Load(), Collapses: e.collapses.Load(), Tables: e.tables.Load(), MissingColumns: e.missing.Load()}
}

// candidates returns t's candidate rules, resolving them on first sight.
func (e *Engine) candidates(t *cdc.Table) *tableRules {
	if tr, ok := e.cache.Load(t); ok {
		return tr.(*tableRules)
	}
	tr := e.bind(t)
	e.tables.Add(1)
	if e.cacheLen.Add(1) > maxCachedTables {
		e.cache.Clear()
		e.cacheLen.Store(1)
	}
	e.cache.Store(t, tr)
	return tr
}

func (e *Engine) bind(t *cdc.Table) *tableRules {
	tr := &tableRules{}
	var missing []string
	col := func(name string) bcol {
		for i, c := range t.Columns {
			if c == name {
				return bcol{i: i, key: i < len(t.Key) && t.Key[i]}
			}
		}
		if !slices.Contains(missing, name) {
			missing = append(missing, name)
		}
		return bcol{i: -1}
	}
	for _, c := range e.rules {
		if !c.matches(t) {
			continue
		}
		missing = missing[:0]
		br := boundRule{c: c}
		if c.r.Columns != nil {
			br.filter = make([]bcol, len(c.r.Columns))
			for i, name := range c.r.Columns {
				br.filter[i] = col(name)
			}
		}
		for _, tm := range c.tmpls {
			bt := boundTemplate{t: tm, parts: make([]bpart, len(tm.parts))}
			for i, p := range tm.parts {
				bt.parts[i] = bpart{lit: p.lit, ph: p.ph, img: p.img, col: bcol{i: -1}}
				if p.ph {
					bt.parts[i].col = col(p.name)
				}
			}
			br.tmpls = append(br.tmpls, bt)
		}
		tr.rules = append(tr.rules, br)
		tr.addReads(&br, len(t.Columns))
		// A table known without columns (a MySQL statement naming a table
		// never seen in a row event) only ever truncates: nothing to warn.
		if len(missing) > 0 && len(t.Columns) > 0 {
			e.missing.Add(1)
			e.log.Warn("rules: the table has no column the rule reads; its placeholders expand to `*` and a columns filter counts it as changed",
				"rule", c.r.Label(), "table", t.Schema+"."+t.Name, "columns", strings.Join(missing, ","))
		}
	}
	return tr
}

// addReads marks the columns br reads, per op, in tr.reads and
// tr.filterReads (n columns).
func (tr *tableRules) addReads(br *boundRule, n int) {
	mark := func(m *[]bool, i int) {
		if *m == nil {
			*m = make([]bool, n)
		}
		if i >= 0 && i < n {
			(*m)[i] = true
		}
	}
	for op := cdc.Insert; op <= cdc.Truncate; op++ {
		if br.c.ops&opBit(op) == 0 || op == cdc.Truncate {
			continue // truncate expands to wildcard forms: no values
		}
		if op == cdc.Update {
			for _, f := range br.filter {
				mark(&tr.reads[op], f.i)
				mark(&tr.filterReads[op], f.i)
			}
		}
		for _, bt := range br.tmpls {
			for _, p := range bt.parts {
				if p.ph {
					mark(&tr.reads[op], p.col.i)
				}
			}
		}
	}
}

// readsOf returns the columns a change to tr's table with op may read; none
// is an empty mask of n columns.
func (tr *tableRules) readsOf(op cdc.Op, collapsed bool, n int) []bool {
	m := tr.reads[op]
	if collapsed {
		m = tr.filterReads[op]
	}
	if m == nil {
		return none(n)
	}
	return m
}

// noColumns backs the masks that read nothing (shared, never written).
var noColumns = make([]bool, 64)

func none(n int) []bool {
	if n <= len(noColumns) {
		return noColumns[:n:n]
	}
	return make([]bool, n)
}

// matches reports whether the rule names t, one of the partitioned tables
// it is a partition of, or one of the partitions reported under its name.
func (c *crule) matches(t *cdc.Table) bool {
	if glob(c.schema, t.Schema) && glob(c.table, t.Name) {
		return true
	}
	for _, names := range [2][]cdc.TableName{t.Ancestors, t.Partitions} {
		for _, n := range names {
			if glob(c.schema, n.Schema) && glob(c.table, n.Name) {
				return true
			}
		}
	}
	return false
}

// glob matches s against pattern, where `*` matches any run of characters.
func glob(pattern, s string) bool {
	px, sx := 0, 0
	starP, starS := -1, 0
	for sx < len(s) {
		switch {
		case px < len(pattern) && pattern[px] == '*':
			starP, starS = px, sx
			px++
		case px < len(pattern) && pattern[px] == s[sx]:
			px++
			sx++
		case starP >= 0:
			starS++
			px, sx = starP+1, starS
		default:
			return false
		}
	}
	for px < len(pattern) && pattern[px] == '*' {
		px++
	}
	return px == len(pattern)
}

// Eval appends the tags of one change to dst and returns it.
//
// Tags are [][]byte so that evaluation allocates nothing: Eval reuses the
// byte slices held in dst's spare capacity (between len and cap), so a caller
// that passes the previous result resliced to [:0] allocates nothing in the
// steady state. The returned slices are overwritten by the next such call;
// copy what you keep. The tags of one change are not sorted; an update whose
// old and new expansion agree yields that tag once.
func (e *Engine) Eval(dst [][]byte, c *cdc.Change) [][]byte {
	return e.eval(dst, c, nil)
}

// RuleTags is what one rule made of a change (Engine.EvalByRule).
type RuleTags struct {
	Rule *Rule
	// Fired: the change's op and the rule's columns filter let it fire.
	Fired bool
	// Tags are sorted and de-duplicated; empty when the rule did not fire
	// or every expansion yielded no tag (a NULL value).
	Tags []string
}

// EvalByRule evaluates c as Eval does, rule by rule: one entry for every rule
// that names c's table, in the file's order. Unlike Eval it allocates; it is
// for explaining a change (`tagstream explain`), not for the hot path.
func (e *Engine) EvalByRule(c *cdc.Change) []RuleTags {
	if c == nil || c.Table == nil {
		return nil
	}
	tr := e.candidates(c.Table)
	out := make([]RuleTags, 0, len(tr.rules))
	var buf [][]byte
	for i := range tr.rules {
		br := &tr.rules[i]
		rt := RuleTags{Rule: br.c.r, Fired: br.fires(c)}
		if rt.Fired {
			buf = buf[:0]
			for j := range br.tmpls {
				buf = e.expand(buf, c, &br.tmpls[j])
			}
			for _, b := range buf {
				rt.Tags = append(rt.Tags, string(b))
			}
			slices.Sort(rt.Tags)
			rt.Tags = slices.Compact(rt.Tags)
		}
		out = append(out, rt)
	}
	return out
}

// fires reports whether br applies to c (op and columns filter).
func (br *boundRule) fires(c *cdc.Change) bool {
	if br.c.ops&opBit(c.Op) == 0 {
		return false
	}
	if c.Op != cdc.Update || br.filter == nil {
		return true
	}
	for _, f := range br.filter {
		if changed(c, f) {
			return true
		}
	}
	return false
}

// changed reports whether column f differs between c's old and new image.
// A column the old image lacks counts as changed, unless the new image
// marks it as an unchanged TOAST value; so does one the table lacks. Without
// any old image, the key columns are unchanged (the database sends the old
// key when it changes) and every other column counts as changed.
func changed(c *cdc.Change, f bcol) bool {
	i := f.i
	if i < 0 || i >= len(c.New) {
		return true
	}
	nv := c.New[i]
	if nv.Kind == cdc.Unchanged {
		return false
	}
	if c.Old == nil {
		return !f.key
	}
	if i >= len(c.Old) {
		return true
	}
	ov := c.Old[i]
	switch ov.Kind {
	case cdc.Absent:
		return true
	case cdc.Unchanged:
		return false
	}
	if ov.Kind != nv.Kind {
		return true
	}
	return nv.Kind == cdc.Text && !bytes.Equal(ov.Text, nv.Text)
}

func (e *Engine) eval(dst [][]byte, c *cdc.Change, tx *Tx) [][]byte {
	if c == nil || c.Table == nil {
		return dst
	}
	var tr *tableRules
	if tx != nil {
		tr = tx.candidates(c.Table)
	} else {
		tr = e.candidates(c.Table)
	}
	for i := range tr.rules {
		br := &tr.rules[i]
		if !br.fires(c) {
			continue
		}
		br.c.fired.Add(1)
		if tx != nil {
			tx.touch(br.c.idx)
			if tx.collapsed {
				continue
			}
		}
		for j := range br.tmpls {
			dst = e.expand(dst, c, &br.tmpls[j])
		}
	}
	return dst
}

// expand appends the tags of one template for c.
func (e *Engine) expand(dst [][]byte, c *cdc.Change, bt *boundTemplate) [][]byte {
	switch c.Op {
	case cdc.Insert:
		return e.expandOne(dst, c, bt, imgNew, -1)
	case cdc.Delete:
		return e.expandOne(dst, c, bt, imgOld, -1)
	case cdc.Update:
		n := len(dst)
		dst = e.expandOne(dst, c, bt, imgNew, -1)
		// Without an old image the old side reads the key from the new
		// row and `*` for the rest, unless the user opted out of it.
		if bt.t.unpinned && (c.Old != nil || e.oldImages == OldImagesWildcard) {
			first := -1
			if len(dst) > n {
				first = n
			}
			dst = e.expandOne(dst, c, bt, imgOld, first)
		}
		return dst
	default: // truncate, or an op this version does not know: wildcard
		dst, b := slot(dst)
		dst[len(dst)-1] = append(b, bt.t.wildcard...)
		return dst
	}
}

// slot extends dst by one tag, reusing the buffer already in that position.
func slot(dst [][]byte) ([][]byte, []byte) {
	n := len(dst)
	if n < cap(dst) {
		dst = dst[:n+1]
		return dst, dst[n][:0]
	}
	return append(dst, nil), nil
}

// expandOne expands bt with unpinned placeholders reading image unp (imgNew
// or imgOld). When same >= 0 and the result equals dst[same], it is dropped.
func (e *Engine) expandOne(dst [][]byte, c *cdc.Change, bt *boundTemplate, unp image, same int) [][]byte {
	dst, b := slot(dst)
	n := len(dst) - 1
	drop := false
	long := false
	for k := range bt.parts {
		p := &bt.parts[k]
		if !p.ph {
			b = append(b, p.lit...)
			continue
		}
		img := p.img
		if img == imgAny {
			img = unp
		}
		var row, other []cdc.Value
		if img == imgNew {
			if c.Op == cdc.Delete {
				drop = true // a deleted row has no new image
				break
			}
			row, other = c.New, c.Old
		} else {
			if c.Op == cdc.Insert {
				drop = true // an inserted row has no old image
				break
			}
			row, other = c.Old, c.New
			if c.Old == nil && c.Op == cdc.Update {
				// No old image: the key did not change; the rest is unknown.
				if p.col.key {
					row, other = c.New, nil
				} else if e.oldImages == OldImagesNewOnly {
					drop = true
					break
				}
			}
		}
		v, known := value(row, other, p.col.i)
		if !known {
			b = append(b, '*')
			continue
		}
		if v.Kind == cdc.Null {
			drop = true
			break
		}
		if len(b)+len(v.Text) > MaxTagLen {
			long = true // encoding never shrinks a value
			break
		}
		b = appendEncoded(b, v.Text)
	}
	if long || len(b) > MaxTagLen {
		e.longTags.Add(1)
		b = append(b[:0], bt.t.wildcard...)
	}
	dst[n] = b
	if drop || len(b) == 0 || (same >= 0 && bytes.Equal(dst[same], b)) {
		return dst[:n]
	}
	return dst
}

// value returns column i of row; known is false when the value is unknown
// (no image, column absent, an unchanged TOAST value whose other image does
// not have it either).
func value(row, other []cdc.Value, i int) (v cdc.Value, known bool) {
	if i < 0 || i >= len(row) {
		return v, false
	}
	v = row[i]
	switch v.Kind {
	case cdc.Text, cdc.Null:
		return v, true
	case cdc.Unchanged:
		if i < len(other) && (other[i].Kind == cdc.Text || other[i].Kind == cdc.Null) {
			return other[i], true
		}
	}
	return v, false
}
