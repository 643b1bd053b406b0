package rules

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tagstream/tagstream/cdc"
)

// FuzzParse: the loader never panics; it returns a Set or positioned errors,
// never both; a Set it accepts compiles and evaluates within the contract.
func FuzzParse(f *testing.F) {
	if example, err := os.ReadFile("../rules.example.yaml"); err == nil {
		f.Add(example)
	}
	for _, s := range []string{
		"",
		"rules: []",
		"rules:\n  - table: todos\n    tags: [todos, \"todo:{id}\"]\n",
		"rules:\n  - table: \"*.*\"\n    on: [truncate]\n    columns: [a]\n    tags: [\"{{{new.a}}}:{old.b}\"]\n",
		"rules:\n  - name: a\n    table: t\n    tags: [x]\n  - name: a\n    table: t\n    tags: [y]\n",
		"rules:\n  - &r {table: t, tags: [x]}\n  - *r\n",
		"rules:\n  - table: [t]\n    tags: {a: b}\n    on: upsert\n",
		"- a\n- b\n",
		"rules:\n  - table: t\n    tags: [a\n",
		"rules: x\n---\nrules: y\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data, "f.yaml")
		if (s == nil) == (err == nil) {
			t.Fatalf("Parse returned set %v and error %v", s, err)
		}
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error %T %v is not a non-empty Errors", err, err)
			}
			for _, e := range errs {
				if e.Line < 1 || e.Column < 0 || e.Msg == "" || e.File != "f.yaml" {
					t.Fatalf("badly positioned error %+v", e)
				}
			}
			return
		}
		e := Compile(s, Options{DefaultSchema: "public", MaxTags: 8})
		s.Requirements("public")
		tbl := &cdc.Table{Schema: "public", Name: "t", Columns: []string{"id", "a", "b"}}
		tx := e.NewTx()
		for _, c := range []*cdc.Change{
			{Table: tbl, Op: cdc.Insert, New: row(txt("1"), txt("x,y"), null)},
			{Table: tbl, Op: cdc.Update, Old: row(txt("1"), absent, toast), New: row(txt("2"), txt("z"), toast)},
			{Table: tbl, Op: cdc.Delete, Old: row(txt("1"), null, txt("\n"))},
			{Table: tbl, Op: cdc.Truncate},
		} {
			for _, tag := range e.Eval(nil, c) {
				checkTag(t, tag)
			}
			tx.Add(c)
		}
		for _, tag := range tx.Tags() {
			checkTag(t, []byte(tag))
		}
	})
}

// FuzzExpand: expanding any valid template against any value never panics
// and never emits an empty tag, a raw `,`, whitespace or a control
// character, or a tag over MaxTagLen bytes.
func FuzzExpand(f *testing.F) {
	for _, s := range []struct {
		tmpl string
		val  []byte
		op   uint8
		kind uint8
	}{
		{"todo:{id}", []byte("1"), 1, 3},
		{"user:{a}:{old.b}", []byte("a, b*%"), 2, 3},
		{"{a}", []byte(""), 1, 3},
		{"{{x}}{new.a}}}", []byte("\x00\xff\n\r\t "), 2, 2},
		{"x:{a}", []byte(strings.Repeat("é", 200)), 3, 3},
		{"{b}", []byte("\u2028\u00a0"), 4, 1},
	} {
		f.Add(s.tmpl, s.val, s.op, s.kind)
	}
	f.Fuzz(func(t *testing.T, tmpl string, val []byte, op, kind uint8) {
		tp, err := parseTemplate(tmpl)
		if err != nil {
			return
		}
		rule := &Rule{Index: 1, Table: "t", Tags: []string{tmpl}, tmpls: []*template{tp}}
		e := Compile(&Set{Rules: []*Rule{rule}}, Options{DefaultSchema: "public"})
		// Columns named by the template, plus one it does not name.
		cols := []string{"other"}
		for _, p := range tp.parts {
			if p.ph {
				cols = append(cols, p.name)
			}
		}
		v := cdc.Value{Kind: cdc.Kind(kind % 4), Text: val}
		img := make([]cdc.Value, len(cols))
		alt := make([]cdc.Value, len(cols))
		for i := range img {
			img[i] = v
			alt[i] = txt("7")
		}
		tbl := &cdc.Table{Schema: "public", Name: "t", Columns: cols}
		c := &cdc.Change{Table: tbl, Op: cdc.Op(op%5) + 0}
		switch c.Op {
		case cdc.Insert:
			c.New = img
		case cdc.Delete:
			c.Old = img
		case cdc.Update:
			c.New, c.Old = img, alt
			if op&0x80 != 0 {
				c.New, c.Old = alt, img
			}
		}
		for _, tag := range e.Eval(nil, c) {
			checkTag(t, tag)
		}
	})
}

func checkTag(t *testing.T, tag []byte) {
	t.Helper()
	switch {
	case len(tag) == 0:
		t.Fatal("empty tag")
	case len(tag) > MaxTagLen:
		t.Fatalf("tag of %d bytes: %q", len(tag), tag)
	case bytes.ContainsAny(tag, ",\n\r"):
		t.Fatalf("raw separator in tag %q", tag)
	case !utf8.Valid(tag):
		t.Fatalf("invalid UTF-8 in tag %q", tag)
	}
	for _, c := range tag {
		if c <= ' ' || c == 0x7f {
			t.Fatalf("whitespace or control byte in tag %q", tag)
		}
	}
}
