package stream

import "strings"

// radix is a compressed prefix tree from string keys to entries. The hub keeps
// two: patterns keyed by their literal prefix (so an event tag finds the
// patterns that can match it by walking its own bytes) and exact
// subscriptions keyed by the tag (so a wildcard event tag finds the exact
// subscriptions under its literal prefix). Neither lookup looks at entries
// whose key cannot match.
type radix struct{ root rnode }

type rnode struct {
	label    string   // edge label from the parent; the key is the path's concatenation
	children []*rnode // sorted by label[0]
	vals     []*entry // entries stored under this node's key
}

func commonPrefixLen(a, b string) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

func (n *rnode) child(c byte) (int, bool) {
	lo, hi := 0, len(n.children)
	for lo < hi {
		m := (lo + hi) / 2
		switch {
		case n.children[m].label[0] < c:
			lo = m + 1
		case n.children[m].label[0] > c:
			hi = m
		default:
			return m, true
		}
	}
	return lo, false
}

// add stores e under key.
func (t *radix) add(key string, e *entry) {
	n := &t.root
	for {
		if key == "" {
			n.vals = append(n.vals, e)
			return
		}
		i, ok := n.child(key[0])
		if !ok {
			leaf := &rnode{label: key, vals: []*entry{e}}
			n.children = append(n.children, nil)
			copy(n.children[i+1:], n.children[i:])
			n.children[i] = leaf
			return
		}
		c := n.children[i]
		l := commonPrefixLen(key, c.label)
		if l < len(c.label) {
			// Split the edge: mid takes the shared part.
			mid := &rnode{label: c.label[:l], children: []*rnode{c}}
			c.label = c.label[l:]
			n.children[i] = mid
			c = mid
		}
		n, key = c, key[l:]
	}
}

// remove deletes e from key and prunes nodes left empty.
func (t *radix) remove(key string, e *entry) {
	path := []*rnode{&t.root}
	n := &t.root
	for key != "" {
		i, ok := n.child(key[0])
		if !ok || !strings.HasPrefix(key, n.children[i].label) {
			return
		}
		key = key[len(n.children[i].label):]
		n = n.children[i]
		path = append(path, n)
	}
	for i, v := range n.vals {
		if v == e {
			last := len(n.vals) - 1
			n.vals[i] = n.vals[last]
			n.vals[last] = nil
			n.vals = n.vals[:last]
			break
		}
	}
	if len(n.vals) == 0 {
		n.vals = nil
	}
	// Prune from the bottom: drop empty leaves, merge value-less nodes
	// with a single child into it.
	for d := len(path) - 1; d > 0; d-- {
		n, parent := path[d], path[d-1]
		switch {
		case len(n.vals) == 0 && len(n.children) == 0:
			i, _ := parent.child(n.label[0])
			parent.children = append(parent.children[:i], parent.children[i+1:]...)
			if len(parent.children) == 0 {
				parent.children = nil
			}
		case len(n.vals) == 0 && len(n.children) == 1:
			c := n.children[0]
			c.label = n.label + c.label
			i, _ := parent.child(n.label[0])
			parent.children[i] = c
		default:
			return
		}
	}
}

// prefixesOf calls fn for every node whose key is a prefix of s (the root,
// key "", included; key == s included only when withEqual).
func (t *radix) prefixesOf(s string, withEqual bool, fn func(*rnode)) {
	n := &t.root
	for {
		if s == "" {
			if withEqual {
				fn(n)
			}
			return
		}
		fn(n)
		i, ok := n.child(s[0])
		if !ok || !strings.HasPrefix(s, n.children[i].label) {
			return
		}
		s = s[len(n.children[i].label):]
		n = n.children[i]
	}
}

// under calls fn for every node whose key starts with p.
func (t *radix) under(p string, fn func(*rnode)) {
	n := &t.root
	for p != "" {
		i, ok := n.child(p[0])
		if !ok {
			return
		}
		c := n.children[i]
		l := commonPrefixLen(p, c.label)
		if l < len(p) && l < len(c.label) {
			return // diverged
		}
		p = p[l:]
		n = c
	}
	walk(n, fn)
}

func walk(n *rnode, fn func(*rnode)) {
	fn(n)
	for _, c := range n.children {
		walk(c, fn)
	}
}
