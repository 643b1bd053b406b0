package rules

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/tagstream/tagstream/cdc"
)

// Error is one problem of a rules file.
//
// Its text is `FILE:LINE:COLUMN: RULE: MSG`, for example
//
//	rules.yaml:12:7: rule 2 "todo-item": tags: must not be empty
//
// RULE is `rule N` or `rule N "name"` and is left out (with its colon) for
// problems outside any rule; `:COLUMN` is left out when the YAML parser
// reported only a line (syntax errors). MSG starts with the key concerned
// (`table:`, `tags[1]:`) where there is one.
type Error struct {
	File         string
	Line, Column int // 1-based; Column 0 when unknown
	Rule         string
	Msg          string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	b.WriteByte(':')
	b.WriteString(strconv.Itoa(e.Line))
	if e.Column > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Column))
	}
	b.WriteString(": ")
	if e.Rule != "" {
		b.WriteString(e.Rule)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in a rules file, in file order. Load and
// Parse return it (as a value) when the file is invalid:
//
//	var errs rules.Errors
//	if errors.As(err, &errs) { for _, e := range errs { … } }
//
// errors.As with a *rules.Error target finds the first one.
type Errors []*Error

// Error joins the errors, one per line.
func (es Errors) Error() string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Unwrap exposes each *Error to errors.Is / errors.As.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// Load reads and parses a rules file. A file that cannot be read yields the
// os error (wrapped); an invalid file yields Errors.
func Load(path string) (*Set, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	return Parse(data, path)
}

// Parse parses and validates a rules file; filename is used in errors. It
// returns a Set only when the whole file is valid, otherwise Errors listing
// every problem found.
func Parse(data []byte, filename string) (*Set, error) {
	p := &parser{file: filename, names: map[string]*Rule{}}
	set := p.parse(data)
	if len(p.errs) > 0 {
		sort.SliceStable(p.errs, func(i, j int) bool {
			a, b := p.errs[i], p.errs[j]
			if a.Line != b.Line {
				return a.Line < b.Line
			}
			return a.Column < b.Column
		})
		return nil, p.errs
	}
	return set, nil
}

type parser struct {
	file  string
	errs  Errors
	names map[string]*Rule // rule names seen so far
}

func (p *parser) errorf(n *yaml.Node, rule, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: n.Line, Column: n.Column, Rule: rule, Msg: fmt.Sprintf(format, args...)})
}

var yamlLineErr = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError turns a yaml.v3 error into positioned Errors.
func (p *parser) syntaxError(err error) {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		for _, msg := range te.Errors {
			p.syntaxError(errors.New("yaml: " + msg))
		}
		return
	}
	msg := err.Error()
	line := 1
	if m := yamlLineErr.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	p.errs = append(p.errs, &Error{File: p.file, Line: line, Msg: "invalid YAML: " + msg})
}

func (p *parser) parse(data []byte) *Set {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.errs = append(p.errs, &Error{File: p.file, Line: 1, Column: 1, Msg: `rules: missing (the file is empty; want a top-level "rules:" list)`})
		} else {
			p.syntaxError(err)
		}
		return nil
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		p.errorf(&extra, "", "only one YAML document is allowed")
	} else if !errors.Is(err, io.EOF) {
		p.syntaxError(err)
	}

	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			p.errorf(root, "", `rules: missing (the file is empty; want a top-level "rules:" list)`)
			return nil
		}
		root = root.Content[0]
	}
	root = resolve(root)
	if root.Kind != yaml.MappingNode {
		p.errorf(root, "", `the top level must be a mapping with a "rules:" list, got %s`, kindOf(root))
		return nil
	}
	var rulesNode *yaml.Node
	p.mapping(root, "", func(key string, k, v *yaml.Node) {
		switch key {
		case "rules":
			rulesNode = v
		default:
			p.errorf(k, "", `unknown key %q (want "rules")`, key)
		}
	})
	if rulesNode == nil {
		p.errorf(root, "", `rules: missing (want a top-level "rules:" list)`)
		return nil
	}
	if rulesNode.Kind != yaml.SequenceNode {
		p.errorf(rulesNode, "", "rules: must be a list, got %s", kindOf(rulesNode))
		return nil
	}
	if len(rulesNode.Content) == 0 {
		p.errorf(rulesNode, "", "rules: must contain at least one rule")
		return nil
	}
	set := &Set{}
	for i, n := range rulesNode.Content {
		if r := p.rule(resolve(n), i+1); r != nil {
			set.Rules = append(set.Rules, r)
		}
	}
	return set
}

// resolve follows aliases.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

// mapping walks a mapping's keys, rejecting non-string and duplicate keys.
func (p *parser) mapping(n *yaml.Node, rule string, f func(key string, k, v *yaml.Node)) {
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			p.errorf(k, rule, "keys must be strings, got %s", kindOf(k))
			continue
		}
		if seen[k.Value] {
			p.errorf(k, rule, "duplicate key %q", k.Value)
			continue
		}
		seen[k.Value] = true
		f(k.Value, k, v)
	}
}

func kindOf(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!int", "!!float":
			return "a number"
		case "!!bool":
			return "a boolean"
		}
		return "a string"
	case yaml.AliasNode:
		return "an alias"
	}
	return "nothing"
}

// str reads a scalar as a string. Numbers and booleans are taken as written;
// null, lists and mappings are errors.
func (p *parser) str(n *yaml.Node, rule, field string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() == "!!null" {
		if n.Kind == yaml.ScalarNode && n.Value == "" {
			p.errorf(n, rule, "%s: must not be empty", field)
		} else {
			p.errorf(n, rule, "%s: must be a string, got %s", field, kindOf(n))
		}
		return "", false
	}
	if n.Value == "" {
		p.errorf(n, rule, "%s: must not be empty", field)
		return "", false
	}
	return n.Value, true
}

// list reads a non-empty list of strings.
func (p *parser) list(n *yaml.Node, rule, field string, each func(i int, s string, n *yaml.Node)) {
	if n.Kind != yaml.SequenceNode {
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
			p.errorf(n, rule, "%s: must not be empty", field)
			return
		}
		p.errorf(n, rule, "%s: must be a list, got %s", field, kindOf(n))
		return
	}
	if len(n.Content) == 0 {
		p.errorf(n, rule, "%s: must not be empty", field)
		return
	}
	for i, e := range n.Content {
		e = resolve(e)
		if s, ok := p.str(e, rule, field+"["+strconv.Itoa(i)+"]"); ok {
			each(i, s, e)
		}
	}
}

var ruleKeys = `name, table, on, columns or tags`

func (p *parser) rule(n *yaml.Node, index int) *Rule {
	label := "rule " + strconv.Itoa(index)
	if n.Kind != yaml.MappingNode {
		p.errorf(n, label, "must be a mapping with table and tags, got %s", kindOf(n))
		return nil
	}
	r := &Rule{Index: index, Line: n.Line, Column: n.Column}
	// The name goes into every message of the rule, so read it first.
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind == yaml.ScalarNode && k.Value == "name" {
			if name, ok := p.str(v, label, "name"); ok {
				r.Name = name
				if prev := p.names[name]; prev != nil {
					p.errorf(v, label+" "+strconv.Quote(name), "name: duplicate name %q (also rule %d at line %d)", name, prev.Index, prev.Line)
				} else {
					p.names[name] = r
				}
				label += " " + strconv.Quote(name)
			}
			break
		}
	}
	nerr := len(p.errs)
	var tableSeen, tagsSeen bool
	p.mapping(n, label, func(key string, k, v *yaml.Node) {
		switch key {
		case "name":
			// read above
		case "table":
			tableSeen = true
			if s, ok := p.str(v, label, "table"); ok {
				if msg := r.setTable(s); msg != "" {
					p.errorf(v, label, "table: %s", msg)
				}
			}
		case "on":
			r.On = []cdc.Op{}
			p.list(v, label, "on", func(i int, s string, e *yaml.Node) {
				op, ok := ParseOp(s)
				if !ok {
					p.errorf(e, label, "on[%d]: unknown operation %q (want insert, update, delete or truncate)", i, s)
					return
				}
				r.On = append(r.On, op)
			})
		case "columns":
			p.list(v, label, "columns", func(i int, s string, e *yaml.Node) {
				r.Columns = append(r.Columns, s)
			})
		case "tags":
			tagsSeen = true
			p.list(v, label, "tags", func(i int, s string, e *yaml.Node) {
				t, err := parseTemplate(s)
				if err != nil {
					p.errorf(e, label, "tags[%d] %q: %v", i, s, err)
					return
				}
				r.Tags = append(r.Tags, s)
				r.tmpls = append(r.tmpls, t)
			})
		default:
			p.errorf(k, label, "unknown key %q (want %s)", key, ruleKeys)
		}
	})
	if !tableSeen {
		p.errorf(n, label, "table: missing")
	}
	if !tagsSeen {
		p.errorf(n, label, "tags: missing")
	}
	if r.On == nil {
		r.On = append([]cdc.Op(nil), allOps...)
	}
	if len(p.errs) > nerr {
		return nil
	}
	return r
}

// ParseOp parses an op's name as rules and `tagstream explain --op` write
// it: insert, update, delete or truncate.
func ParseOp(s string) (cdc.Op, bool) {
	for _, op := range allOps {
		if s == op.String() {
			return op, true
		}
	}
	return 0, false
}

// setTable validates a `[schema.]table` pattern and stores its parts. It
// returns a message, "" when valid.
func (r *Rule) setTable(s string) string {
	parts := strings.Split(s, ".")
	if len(parts) > 2 {
		return fmt.Sprintf("bad pattern %q: want [schema.]table", s)
	}
	for _, part := range parts {
		if part == "" {
			return fmt.Sprintf("bad pattern %q: want [schema.]table", s)
		}
		for i := 0; i < len(part); i++ {
			if c := part[i]; !identByte(c) && c != '*' && c != '-' {
				return fmt.Sprintf(`bad pattern %q: a name may contain letters, digits, "_", "$", "-" and "*"`, s)
			}
		}
	}
	if len(parts) == 2 {
		r.Schema, r.Table = parts[0], parts[1]
	} else {
		r.Table = parts[0]
	}
	return ""
}
