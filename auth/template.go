package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/tagstream/tagstream/rules"
)

// Template is an allowed pattern with `{claim}` placeholders, filled from a
// token's claims: `user:{sub}:*`. A placeholder names a claim, or a dotted
// path into nested objects (`{org.id}`). `{{` and `}}` are literal braces.
type Template struct {
	parts []tplPart
}

type tplPart struct {
	lit   string // literal text, when claim is ""
	claim string
}

// ParseTemplate parses a template.
func ParseTemplate(s string) (Template, error) {
	var t Template
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			t.parts = append(t.parts, tplPart{lit: lit.String()})
			lit.Reset()
		}
	}
	if s == "" {
		return t, errors.New("empty pattern")
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case (c == '{' || c == '}') && i+1 < len(s) && s[i+1] == c:
			lit.WriteByte(c)
			i++
		case c == '}':
			return t, fmt.Errorf(`unbalanced "}" at byte %d (write "}}" for a literal brace)`, i+1)
		case c == '{':
			end := strings.IndexAny(s[i+1:], "{}")
			if end < 0 || s[i+1+end] == '{' {
				return t, fmt.Errorf(`unbalanced "{" at byte %d (write "{{" for a literal brace)`, i+1)
			}
			if end == 0 {
				return t, fmt.Errorf(`empty placeholder "{}" at byte %d`, i+1)
			}
			flush()
			t.parts = append(t.parts, tplPart{claim: s[i+1 : i+1+end]})
			i += end + 1
		case c == ',' || c <= ' ' || c == 0x7f:
			return t, fmt.Errorf("the character %q at byte %d is not allowed in a pattern", c, i+1)
		default:
			lit.WriteByte(c)
		}
	}
	flush()
	return t, nil
}

// Fill returns the pattern with every placeholder replaced by its claim's
// value (a string, number or boolean), percent-encoded as rules encode
// column values, so that a value can never bring a `*` or a `,`. A missing,
// empty or structured claim makes the template allow nothing (ok false).
func (t Template) Fill(claims map[string]any) (pattern string, ok bool) {
	var b []byte
	for _, p := range t.parts {
		if p.claim == "" {
			b = append(b, p.lit...)
			continue
		}
		v, found := lookup(claims, p.claim)
		if !found {
			return "", false
		}
		var s string
		switch v := v.(type) {
		case string:
			s = v
		case json.Number:
			s = v.String()
		case bool:
			s = fmt.Sprint(v)
		case float64:
			s = fmt.Sprint(v)
		default:
			return "", false
		}
		if s == "" {
			return "", false
		}
		b = append(b, rules.EncodeValue(s)...)
	}
	return string(b), true
}

// lookup finds a claim by its name, or else by a dotted path into nested
// objects.
func lookup(claims map[string]any, path string) (any, bool) {
	if v, ok := claims[path]; ok {
		return v, true
	}
	if !strings.Contains(path, ".") {
		return nil, false
	}
	var cur any = claims
	for name := range strings.SplitSeq(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[name]; !ok {
			return nil, false
		}
	}
	return cur, true
}
