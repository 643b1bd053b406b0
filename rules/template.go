package rules

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// image selects the row image a placeholder reads.
type image uint8

const (
	imgAny image = iota // {col}: the op's row(s): insert new, delete old, update both
	imgNew              // {new.col}
	imgOld              // {old.col}
)

// part is a literal run of text or a placeholder.
type part struct {
	lit  string // literal text (braces already unescaped) when !ph
	ph   bool
	name string // placeholder column
	img  image
}

// template is a pre-split tag template.
type template struct {
	src      string
	parts    []part
	wildcard string // every placeholder replaced by `*`
	static   int    // bytes of literal text
	unpinned bool   // has a {col} placeholder
}

// parseTemplate splits a tag template into literal and placeholder parts and
// validates it. Errors are single sentences without the template itself.
func parseTemplate(src string) (*template, error) {
	if src == "" {
		return nil, errors.New("must not be empty")
	}
	t := &template{src: src}
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			t.parts = append(t.parts, part{lit: lit.String()})
			t.static += lit.Len()
			lit.Reset()
		}
	}
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == '{' && i+1 < len(src) && src[i+1] == '{':
			lit.WriteByte('{')
			i += 2
		case c == '}' && i+1 < len(src) && src[i+1] == '}':
			lit.WriteByte('}')
			i += 2
		case c == '}':
			return nil, fmt.Errorf(`unbalanced "}" at byte %d (write "}}" for a literal brace)`, i+1)
		case c == '{':
			end := strings.IndexAny(src[i+1:], "{}")
			if end < 0 || src[i+1+end] == '{' {
				return nil, fmt.Errorf(`unbalanced "{" at byte %d (write "{{" for a literal brace)`, i+1)
			}
			p, err := parsePlaceholder(src[i+1 : i+1+end])
			if err != nil {
				return nil, err
			}
			flush()
			t.parts = append(t.parts, p)
			if p.img == imgAny {
				t.unpinned = true
			}
			i += end + 2
		default:
			r, size := utf8.DecodeRuneInString(src[i:])
			switch {
			case r == utf8.RuneError && size == 1:
				return nil, fmt.Errorf("invalid UTF-8 at byte %d", i+1)
			case r == ',':
				return nil, errors.New(`"," is not allowed in a tag (it separates tags)`)
			case unicode.IsSpace(r) || unicode.IsControl(r):
				return nil, fmt.Errorf("%s at byte %d: whitespace and control characters are not allowed in a tag", strconv.QuoteRune(r), i+1)
			}
			lit.WriteString(src[i : i+size])
			i += size
		}
	}
	flush()
	var w strings.Builder
	for _, p := range t.parts {
		if p.ph {
			w.WriteByte('*')
		} else {
			w.WriteString(p.lit)
		}
	}
	t.wildcard = w.String()
	if t.static > MaxTagLen {
		return nil, fmt.Errorf("static text is %d bytes, over the %d-byte tag limit", t.static, MaxTagLen)
	}
	if len(t.wildcard) > MaxTagLen {
		return nil, fmt.Errorf("wildcard form is %d bytes, over the %d-byte tag limit", len(t.wildcard), MaxTagLen)
	}
	return t, nil
}

// parsePlaceholder parses the inside of {…}: col, new.col or old.col.
func parsePlaceholder(s string) (part, error) {
	p := part{ph: true, name: s}
	if s == "" {
		return p, errors.New(`empty placeholder "{}" (write "{{}}" for literal braces)`)
	}
	if dot := strings.IndexByte(s, '.'); dot >= 0 {
		switch s[:dot] {
		case "new":
			p.img = imgNew
		case "old":
			p.img = imgOld
		default:
			return p, fmt.Errorf(`bad placeholder "{%s}": want {column}, {new.column} or {old.column}`, s)
		}
		p.name = s[dot+1:]
		if p.name == "" {
			return p, fmt.Errorf(`bad placeholder "{%s}": missing column name`, s)
		}
	}
	for i := 0; i < len(p.name); i++ {
		if !identByte(p.name[i]) {
			return p, fmt.Errorf(`bad placeholder "{%s}": a column name may contain letters, digits, "_" and "$"`, s)
		}
	}
	return p, nil
}

func identByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '_' || c == '$' || c >= 0x80
}

// plainASCII marks the ASCII bytes copied into tags as they are; every other
// ASCII byte (control characters, space, `%`, `,`, `*`, DEL) is
// percent-encoded.
var plainASCII = func() (t [utf8.RuneSelf]bool) {
	for c := 0x21; c < 0x7f; c++ {
		t[c] = true
	}
	t['%'], t[','], t['*'] = false, false, false
	return t
}()

const upperHex = "0123456789ABCDEF"

// EncodeValue returns v encoded as rules encode a column value in a tag:
// `%`, `,`, `*`, whitespace, control characters and invalid UTF-8
// percent-encoded. A value encoded so can never widen a pattern.
func EncodeValue(v string) string { return string(appendEncoded(nil, []byte(v))) }

// appendEncoded appends v to b with `%`, `,`, `*`, whitespace, control
// characters and invalid UTF-8 percent-encoded (uppercase hex).
func appendEncoded(b, v []byte) []byte {
	start := 0
	for i := 0; i < len(v); {
		c := v[i]
		if c < utf8.RuneSelf {
			if plainASCII[c] {
				i++
				continue
			}
			b = append(b, v[start:i]...)
			b = append(b, '%', upperHex[c>>4], upperHex[c&15])
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(v[i:])
		if (r != utf8.RuneError || size > 1) && !unicode.IsSpace(r) && !unicode.IsControl(r) {
			i += size
			continue
		}
		b = append(b, v[start:i]...)
		for _, c := range v[i : i+size] {
			b = append(b, '%', upperHex[c>>4], upperHex[c&15])
		}
		i += size
		start = i
	}
	return append(b, v[start:]...)
}
