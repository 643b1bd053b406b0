package stream

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/tagstream/tagstream/cdc"
)

const (
	// MaxTags is the most entries one subscription may carry.
	MaxTags = 256
	// MaxTagLen is the longest tag or pattern in bytes (cdc.MaxTagLen).
	MaxTagLen = cdc.MaxTagLen
)

// ParseTags parses the values of the repeatable `tags` query parameter: each
// value is a comma-separated list of tags or `*` patterns. It returns the
// sorted, de-duplicated entries, or an error whose text is the plain-text
// reason a client gets with its 400.
func ParseTags(values []string) ([]string, error) {
	out, err := splitTags(values)
	if err != nil {
		return nil, err
	}
	return sortUnique(out), nil
}

// sortUnique sorts entries and drops duplicates, in place.
func sortUnique(entries []string) []string {
	slices.Sort(entries)
	return slices.Compact(entries)
}

// splitTags is ParseTags without the sorting: the entries in the order the
// request gave them, duplicates included.
func splitTags(values []string) ([]string, error) {
	if len(values) == 0 {
		return nil, errors.New("missing tags parameter: subscribe with ?tags=a,b")
	}
	var out []string
	n := 0
	for _, v := range values {
		for entry := range strings.SplitSeq(v, ",") {
			n++
			if n > MaxTags {
				return nil, fmt.Errorf("too many tags: at most %d entries", MaxTags)
			}
			if err := checkTag(entry); err != nil {
				return nil, fmt.Errorf("invalid tag %d: %w", n, err)
			}
			out = append(out, entry)
		}
	}
	return out, nil
}

func checkTag(s string) error {
	if s == "" {
		return errors.New("empty entry")
	}
	if len(s) > MaxTagLen {
		return fmt.Errorf("longer than %d bytes", MaxTagLen)
	}
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	for _, r := range s {
		// Tags never hold whitespace or control characters: rules
		// percent-encode them, so their presence is a client bug.
		if r <= ' ' || r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0x2028 || r == 0x2029 {
			return fmt.Errorf("contains the character %q (percent-encode it)", r)
		}
	}
	return nil
}

// ParseCursor parses a resume cursor (a Last-Event-ID value): a decimal
// uint64 position. ok is false for "" (no cursor). An error says why the
// cursor is unparseable; /events answers such a cursor with `reset` and
// `ready` resumed:false (never a 400), and the error text is the reset's
// reason.
func ParseCursor(s string) (pos cdc.Position, ok bool, err error) {
	if s == "" {
		return 0, false, nil
	}
	// ParseUint alone would accept nothing but digits in base 10, but say so
	// explicitly: no sign, no spaces, no underscores.
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false, fmt.Errorf("invalid Last-Event-ID %q: want a decimal position", truncate(s))
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("invalid Last-Event-ID %q: out of range", truncate(s))
	}
	return cdc.Position(v), true, nil
}

// cursorFrom takes the cursor from the Last-Event-ID header (what a browser
// sends when it reconnects) or else the lastEventId query parameter (what a
// client sets on its first connection).
func cursorFrom(r *http.Request, q map[string][]string) (cdc.Position, bool, error) {
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		return ParseCursor(v)
	}
	if vs := q["lastEventId"]; len(vs) > 0 {
		return ParseCursor(vs[0])
	}
	return 0, false, nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
