package mysql

import (
	"strings"
)

// tableRef is a table named by a statement.
type tableRef struct{ Schema, Name string }

// ddlEffect is what a statement logged as a QUERY event does to row data
// that the row events will not report.
type ddlEffect struct {
	Tables  []tableRef // every row of these tables is gone or moved
	Schemas []string   // every table of these schemas is gone
}

// parseDDL recognises the statements that remove or move a table's rows
// without row events: TRUNCATE, DROP TABLE, RENAME TABLE (the old names),
// ALTER TABLE … RENAME (the old name), ALTER TABLE … TRUNCATE / DROP
// PARTITION, EXCHANGE PARTITION … WITH TABLE and MariaDB's CONVERT
// PARTITION / CONVERT TABLE (both tables), MariaDB's CREATE OR REPLACE
// TABLE and DROP DATABASE. Anything else has no effect.
func parseDDL(query, defaultSchema string) ddlEffect {
	p := &ddlParser{toks: tokenize(query), schema: defaultSchema}
	var eff ddlEffect
	switch {
	case p.kw("TRUNCATE"):
		p.kw("TABLE")
		if t, ok := p.name(); ok {
			eff.Tables = append(eff.Tables, t)
		}
	case p.kw("DROP"):
		p.kw("TEMPORARY")
		switch {
		case p.kw("TABLE"), p.kw("TABLES"):
			p.ifExists()
			eff.Tables = p.nameList()
		case p.kw("DATABASE"), p.kw("SCHEMA"):
			p.ifExists()
			if t := p.next(); t.text != "" {
				eff.Schemas = append(eff.Schemas, t.text)
			}
		}
	case p.kw("RENAME"):
		if p.kw("TABLE") || p.kw("TABLES") {
			p.ifExists()
			for {
				from, ok := p.name()
				if !ok {
					break
				}
				eff.Tables = append(eff.Tables, from)
				// MariaDB: WAIT n | NOWAIT before TO.
				for !p.done() && !p.kw("TO") {
					p.next()
				}
				if _, ok := p.name(); !ok || !p.punct(",") {
					break
				}
			}
		}
	case p.kw("ALTER"):
		p.kw("ONLINE")
		p.kw("IGNORE")
		if !p.kw("TABLE") {
			break
		}
		p.ifExists()
		from, ok := p.name()
		if !ok {
			break
		}
		eff.Tables = p.alterEffects(from)
	case p.kw("CREATE"):
		if p.kw("OR") && p.kw("REPLACE") {
			p.kw("TEMPORARY")
			if p.kw("TABLE") {
				if t, ok := p.name(); ok {
					eff.Tables = append(eff.Tables, t)
				}
			}
		}
	}
	return eff
}

// alterEffects scans the rest of ALTER TABLE from for what moves rows
// without row events.
func (p *ddlParser) alterEffects(from tableRef) []tableRef {
	var out []tableRef
	add := func(t tableRef) {
		for _, o := range out {
			if o == t {
				return
			}
		}
		out = append(out, t)
	}
	for !p.done() {
		switch {
		case p.kw("RENAME"):
			if !p.peekKw("COLUMN") && !p.peekKw("INDEX") && !p.peekKw("KEY") {
				add(from)
			}
		case p.kw("TRUNCATE"), p.kw("DROP"):
			if p.kw("PARTITION") {
				add(from)
			}
		case p.kw("EXCHANGE"):
			// EXCHANGE PARTITION p WITH TABLE other
			for !p.done() && !p.kw("TABLE") {
				p.next()
			}
			if other, ok := p.name(); ok {
				add(from)
				add(other)
			}
		case p.kw("CONVERT"):
			// CONVERT PARTITION p TO TABLE other | CONVERT TABLE other TO PARTITION p
			if p.kw("TABLE") {
				if other, ok := p.name(); ok {
					add(from)
					add(other)
				}
				continue
			}
			if !p.kw("PARTITION") {
				continue // CONVERT TO CHARACTER SET
			}
			for !p.done() && !p.kw("TABLE") {
				p.next()
			}
			if other, ok := p.name(); ok {
				add(from)
				add(other)
			}
		default:
			p.next()
		}
	}
	return out
}

type token struct {
	text   string
	quoted bool // a `quoted` or "quoted" identifier: never a keyword
}

type ddlParser struct {
	toks   []token
	i      int
	schema string
}

func (p *ddlParser) done() bool { return p.i >= len(p.toks) }

func (p *ddlParser) next() token {
	if p.done() {
		return token{}
	}
	t := p.toks[p.i]
	p.i++
	return t
}

func (p *ddlParser) peekKw(k string) bool {
	return !p.done() && !p.toks[p.i].quoted && strings.EqualFold(p.toks[p.i].text, k)
}

// kw consumes the keyword k when it comes next.
func (p *ddlParser) kw(k string) bool {
	if p.peekKw(k) {
		p.i++
		return true
	}
	return false
}

func (p *ddlParser) punct(s string) bool {
	if !p.done() && !p.toks[p.i].quoted && p.toks[p.i].text == s {
		p.i++
		return true
	}
	return false
}

func (p *ddlParser) ifExists() {
	if p.peekKw("IF") && p.i+1 < len(p.toks) && strings.EqualFold(p.toks[p.i+1].text, "EXISTS") {
		p.i += 2
	}
}

// name reads [schema.]table.
func (p *ddlParser) name() (tableRef, bool) {
	t := p.next()
	if t.text == "" || (!t.quoted && !isWord(t.text)) {
		return tableRef{}, false
	}
	if p.punct(".") {
		u := p.next()
		if u.text == "" {
			return tableRef{}, false
		}
		return tableRef{Schema: t.text, Name: u.text}, true
	}
	return tableRef{Schema: p.schema, Name: t.text}, true
}

func (p *ddlParser) nameList() []tableRef {
	var out []tableRef
	for {
		t, ok := p.name()
		if !ok {
			return out
		}
		out = append(out, t)
		if !p.punct(",") {
			return out
		}
	}
}

func isWord(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isWordByte(s[i]) {
			return false
		}
	}
	return s != ""
}

func isWordByte(c byte) bool {
	return c == '_' || c == '$' || c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

// tokenize splits a statement into words, quoted identifiers and single
// punctuation characters, dropping comments. The body of an executable
// comment (/*! … */, /*M! … */) is kept: the server runs it.
func tokenize(q string) []token {
	var out []token
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == ';':
			i++
		case strings.HasPrefix(q[i:], "/*!") || strings.HasPrefix(q[i:], "/*M!"):
			i += strings.Index(q[i:], "!") + 1
			for i < len(q) && q[i] >= '0' && q[i] <= '9' {
				i++
			}
		case strings.HasPrefix(q[i:], "*/"):
			i += 2
		case strings.HasPrefix(q[i:], "/*"):
			end := strings.Index(q[i+2:], "*/")
			if end < 0 {
				return out
			}
			i += 2 + end + 2
		case c == '#' || strings.HasPrefix(q[i:], "-- "):
			end := strings.IndexByte(q[i:], '\n')
			if end < 0 {
				return out
			}
			i += end + 1
		case c == '`' || c == '"' || c == '\'':
			var b strings.Builder
			i++
			for i < len(q) {
				if q[i] == c {
					if i+1 < len(q) && q[i+1] == c {
						b.WriteByte(c)
						i += 2
						continue
					}
					i++
					break
				}
				if q[i] == '\\' && c != '`' && i+1 < len(q) {
					i++
				}
				b.WriteByte(q[i])
				i++
			}
			out = append(out, token{text: b.String(), quoted: true})
		case isWordByte(c):
			j := i
			for j < len(q) && isWordByte(q[j]) {
				j++
			}
			out = append(out, token{text: q[i:j]})
			i = j
		default:
			out = append(out, token{text: q[i : i+1]})
			i++
		}
	}
	return out
}
