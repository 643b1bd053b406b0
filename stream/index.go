package stream

import (
	"slices"

	"github.com/tagstream/tagstream/cdc"
)

// entry is one distinct subscription string (a tag or a pattern) and the
// connections that hold it. Connections sharing a pattern share its entry, so
// matching cost follows distinct entries, not connections.
type entry struct {
	key  string
	subs []*conn
}

// index routes an event's tags to connections: exact tags through a map,
// patterns through a radix tree of their literal prefixes, and (for wildcard
// event tags) exact tags through a radix tree of the tags themselves.
// Guarded by Hub.mu.
type index struct {
	exact     map[string]*entry
	patterns  map[string]*entry
	exactTree radix
	patTree   radix

	seq     uint64  // matching round, marks connections already touched
	touched []*conn // connections touched in the current round
}

func newIndex() *index {
	return &index{exact: map[string]*entry{}, patterns: map[string]*entry{}}
}

func (x *index) add(c *conn) {
	for _, key := range c.entries {
		if isGlob(key) {
			e := x.patterns[key]
			if e == nil {
				e = &entry{key: key}
				x.patterns[key] = e
				x.patTree.add(literalPrefix(key), e)
			}
			e.subs = append(e.subs, c)
			continue
		}
		e := x.exact[key]
		if e == nil {
			e = &entry{key: key}
			x.exact[key] = e
			x.exactTree.add(key, e)
		}
		e.subs = append(e.subs, c)
	}
}

func (x *index) remove(c *conn) {
	for _, key := range c.entries {
		m, tree, tkey := x.exact, &x.exactTree, key
		if isGlob(key) {
			m, tree, tkey = x.patterns, &x.patTree, literalPrefix(key)
		}
		e := m[key]
		if e == nil {
			continue
		}
		if i := slices.Index(e.subs, c); i >= 0 {
			last := len(e.subs) - 1
			e.subs[i] = e.subs[last]
			e.subs[last] = nil
			e.subs = e.subs[:last]
		}
		if len(e.subs) == 0 {
			delete(m, key)
			tree.remove(tkey, e)
		}
	}
}

// match collects, for every connection that an event with the given tags
// concerns, the tags it must receive into conn.matched, and returns those
// connections (valid until the next call). Literal event tags are delivered
// as themselves; a wildcard event tag delivers the subscriber's own entries
// that it overlaps.
func (x *index) match(tags []string) []*conn {
	x.seq++
	x.touched = x.touched[:0]
	for _, t := range tags {
		if !isGlob(t) {
			if e := x.exact[t]; e != nil {
				x.deliver(e, t)
			}
			x.patTree.prefixesOf(t, true, func(n *rnode) {
				for _, e := range n.vals {
					if globMatch(e.key, t) {
						x.deliver(e, t)
					}
				}
			})
			continue
		}
		p := literalPrefix(t)
		x.exactTree.under(p, func(n *rnode) {
			for _, e := range n.vals {
				if globMatch(t, e.key) {
					x.deliver(e, e.key)
				}
			}
		})
		// Patterns whose literal prefix is a strict prefix of p, then those
		// whose prefix starts with p.
		overlapping := func(n *rnode) {
			for _, e := range n.vals {
				if overlap(t, e.key) {
					x.deliver(e, e.key)
				}
			}
		}
		x.patTree.prefixesOf(p, false, overlapping)
		x.patTree.under(p, overlapping)
	}
	for _, c := range x.touched {
		if len(c.matched) > 1 {
			slices.Sort(c.matched)
			c.matched = slices.Compact(c.matched)
		}
	}
	return x.touched
}

func (x *index) deliver(e *entry, tag string) {
	for _, c := range e.subs {
		if c.seq != x.seq {
			c.seq = x.seq
			c.matched = c.matched[:0]
			x.touched = append(x.touched, c)
		}
		c.matched = append(c.matched, tag)
	}
}

// matchEntries is the per-connection form of index.match, used for replay:
// the tags of an event (sorted, de-duplicated) that concern a subscriber with
// the given entries, or nil.
func matchEntries(entries []string, tags []string) []string {
	var out []string
	for _, t := range tags {
		if !isGlob(t) {
			for _, e := range entries {
				if e == t || (isGlob(e) && globMatch(e, t)) {
					out = append(out, t)
					break
				}
			}
			continue
		}
		for _, e := range entries {
			if overlap(t, e) {
				out = append(out, e)
			}
		}
	}
	if len(out) > 1 {
		slices.Sort(out)
		out = slices.Compact(out)
	}
	return out
}

// window is the replay window: a ring of the latest events in position order.
type window struct {
	buf   []*event
	start int
	n     int
}

func (w *window) len() int        { return w.n }
func (w *window) at(i int) *event { return w.buf[(w.start+i)%len(w.buf)] }
func (w *window) oldest() *event  { return w.at(0) }
func (w *window) clear()          { *w = window{} }

func (w *window) push(e *event, limit int) {
	if w.n == len(w.buf) {
		size := max(16, 2*len(w.buf))
		size = min(size, limit)
		if size <= w.n {
			panic("stream: window full") // callers evict first
		}
		nb := make([]*event, size)
		for i := 0; i < w.n; i++ {
			nb[i] = w.at(i)
		}
		w.buf, w.start = nb, 0
	}
	w.buf[(w.start+w.n)%len(w.buf)] = e
	w.n++
}

func (w *window) popOldest() *event {
	e := w.buf[w.start]
	w.buf[w.start] = nil
	w.start = (w.start + 1) % len(w.buf)
	w.n--
	return e
}

// after returns the index of the first event with position > pos.
func (w *window) after(pos cdc.Position) int {
	lo, hi := 0, w.n
	for lo < hi {
		m := (lo + hi) / 2
		if w.at(m).pos <= pos {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}
