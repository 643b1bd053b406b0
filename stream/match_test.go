package stream

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestGlobMatch(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		want bool
	}{
		{"", "", true},
		{"*", "", true},
		{"*", "anything", true},
		{"a", "a", true},
		{"a", "b", false},
		{"user:*", "user:", true},
		{"user:*", "user:7", true},
		{"user:*", "use", false},
		{"user:*:todos", "user:7:todos", true},
		{"user:*:todos", "user:7:x:todos", true},
		{"user:*:todos", "user:7:todo", false},
		{"*:todos", "todos", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "aXbYbZc", true},
		{"a*b*c", "acb", false},
		{"**", "x", true},
		{"a*a", "a", false},
		{"a*a", "aa", true},
	} {
		if got := globMatch(tc.p, tc.s); got != tc.want {
			t.Errorf("globMatch(%q, %q) = %v", tc.p, tc.s, got)
		}
	}
}

// overlapNFA decides overlap by searching the product of the two patterns'
// automata: the reference for overlap.
func overlapNFA(a, b string) bool {
	seen := map[[2]int]bool{}
	var visit func(i, j int) bool
	visit = func(i, j int) bool {
		if seen[[2]int{i, j}] {
			return false
		}
		seen[[2]int{i, j}] = true
		if i == len(a) && j == len(b) {
			return true
		}
		if i < len(a) && a[i] == '*' {
			if visit(i+1, j) || (j < len(b) && b[j] != '*' && visit(i, j+1)) {
				return true
			}
		}
		if j < len(b) && b[j] == '*' {
			if visit(i, j+1) || (i < len(a) && a[i] != '*' && visit(i+1, j)) {
				return true
			}
		}
		return i < len(a) && j < len(b) && a[i] != '*' && a[i] == b[j] && visit(i+1, j+1)
	}
	return visit(0, 0)
}

func TestOverlap(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"user:*:todos", "user:7:*", true},
		{"user:*:todos", "user:7:name", false},
		{"todo:*", "todo:5", true},
		{"todo:*", "todos", false},
		{"*:todos", "user:*", true},
		{"a*", "b*", false},
		{"*a", "*b", false},
		{"ab*", "a*", true},
		{"*", "", true},
		{"a*b", "ab", true},
		{"a*b", "a*c", false},
	} {
		if got := overlap(tc.a, tc.b); got != tc.want {
			t.Errorf("overlap(%q, %q) = %v", tc.a, tc.b, got)
		}
		if got := overlap(tc.b, tc.a); got != tc.want {
			t.Errorf("overlap(%q, %q) = %v", tc.b, tc.a, got)
		}
	}
	// Exhaustively over short patterns on a small alphabet.
	var all []string
	var gen func(s string)
	gen = func(s string) {
		all = append(all, s)
		if len(s) < 4 {
			for _, c := range []string{"a", "b", "*"} {
				gen(s + c)
			}
		}
	}
	gen("")
	for _, a := range all {
		for _, b := range all {
			if got, want := overlap(a, b), overlapNFA(a, b); got != want {
				t.Fatalf("overlap(%q, %q) = %v, want %v", a, b, got, want)
			}
			if !isGlob(b) {
				if got, want := globMatch(a, b), overlapNFA(a, b); got != want {
					t.Fatalf("globMatch(%q, %q) = %v, want %v", a, b, got, want)
				}
			}
		}
	}
}

// TestIndexAgreesWithScan checks the index (maps and radix trees) against
// matchEntries, the plain scan used for replay, with random subscriptions,
// events, joins and leaves.
func TestIndexAgreesWithScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	parts := []string{"user", "todo", "todos", "7", "70", "name", ":", "*", "a"}
	randTag := func() string {
		var b strings.Builder
		for n := 1 + rng.IntN(4); n > 0; n-- {
			b.WriteString(parts[rng.IntN(len(parts))])
		}
		return b.String()
	}
	x := newIndex()
	var live []*conn
	for round := 0; round < 1500; round++ {
		if len(live) > 0 && rng.IntN(3) == 0 {
			i := rng.IntN(len(live))
			x.remove(live[i])
			live = slices.Delete(live, i, i+1)
		} else {
			var entries []string
			for n := 1 + rng.IntN(3); n > 0; n-- {
				entries = append(entries, randTag())
			}
			slices.Sort(entries)
			c := &conn{id: uint64(round), entries: slices.Compact(entries)}
			x.add(c)
			live = append(live, c)
		}
		var tags []string
		for n := 1 + rng.IntN(3); n > 0; n-- {
			tags = append(tags, randTag())
		}
		slices.Sort(tags)
		tags = slices.Compact(tags)
		got := map[*conn][]string{}
		for _, c := range x.match(tags) {
			got[c] = slices.Clone(c.matched)
		}
		for _, c := range live {
			want := matchEntries(c.entries, tags)
			if !slices.Equal(got[c], want) {
				t.Fatalf("round %d: subscriber %q, event %q: index %q, scan %q", round, c.entries, tags, got[c], want)
			}
		}
	}
	for _, c := range live {
		x.remove(c)
	}
	if len(x.exact)+len(x.patterns) != 0 || len(x.exactTree.root.children)+len(x.patTree.root.children) != 0 ||
		len(x.exactTree.root.vals)+len(x.patTree.root.vals) != 0 {
		t.Fatalf("index not empty after every removal")
	}
}

func TestEventData(t *testing.T) {
	tags := []string{"todo:1", `q"uote`, `back\slash`, "<html>&", "naïve", "line\u2028sep", "bad\xffutf8", "ctl\x01"}
	ts := time.Date(2025, 1, 2, 3, 4, 5, 600000000, time.FixedZone("CET", 3600))
	data := appendInvalidateData(nil, tags, ts)
	want := `{"tags":["todo:1","q\"uote","back\\slash","<html>&","naïve","line\u2028sep","bad\ufffdutf8","ctl\u0001"],"ts":"2025-01-02T02:04:05.6Z"}`
	if string(data) != want {
		t.Fatalf("got  %s\nwant %s", data, want)
	}
	var v struct {
		Tags []string
		TS   time.Time
	}
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	if !v.TS.Equal(ts) || v.Tags[1] != `q"uote` {
		t.Fatalf("round trip: %+v", v)
	}
	if got := string(resetData(`slot "tagstream" lost`)); got != `{"reason":"slot \"tagstream\" lost"}` {
		t.Fatalf("reset data %s", got)
	}
	if got := string(appendInvalidateData(nil, nil, time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))); got != `{"tags":[],"ts":"2025-01-01T00:00:00Z"}` {
		t.Fatalf("empty %s", got)
	}
}

func TestRawFrames(t *testing.T) {
	h, b := setup(t, Options{})
	c := b.dial(t, "tags=a")
	c.expect(ready(0, false))
	publish(t, h, 42, "a")
	// The exact bytes of a frame (r3labs/sse/v2's field order).
	want := "id: 42\ndata: {\"tags\":[\"a\"],\"ts\":\"" + tsJSON + "\"}\nevent: invalidate\n\n"
	buf := make([]byte, len(want))
	c.deadline()
	if _, err := io.ReadFull(c.rd, buf); err != nil {
		t.Fatal(err)
	}
	if string(buf) != want {
		t.Fatalf("frame %q", buf)
	}
}

func FuzzParseTags(f *testing.F) {
	for _, s := range []string{"a", "a,b", "", ",", "a,,b", "user:*:todos", "a b", "\xff", strings.Repeat("x,", 300), strings.Repeat("y", 300), "é,*"} {
		f.Add(s, "")
		f.Add(s, "z")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		values := []string{a}
		if b != "" {
			values = append(values, b)
		}
		tags, err := ParseTags(values)
		if err != nil {
			if tags != nil {
				t.Fatal("tags with an error")
			}
			return
		}
		if len(tags) == 0 || len(tags) > MaxTags || !slices.IsSorted(tags) {
			t.Fatalf("bad result %q", tags)
		}
		for i, tag := range tags {
			if tag == "" || len(tag) > MaxTagLen || strings.ContainsAny(tag, ", \n\r\t") || (i > 0 && tags[i-1] == tag) {
				t.Fatalf("bad tag %q", tag)
			}
		}
		// Every entry of the input is kept.
		for _, v := range values {
			for e := range strings.SplitSeq(v, ",") {
				if _, ok := slices.BinarySearch(tags, e); !ok {
					t.Fatalf("entry %q lost", e)
				}
			}
		}
	})
}

func FuzzParseCursor(f *testing.F) {
	for _, s := range []string{"", "0", "1", "007", "18446744073709551615", "18446744073709551616", "-1", "+1", "1_000", " 1", "0x10", "abc", "1e3", "\"\\\n", "\xff9", "1\u2028"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		pos, ok, err := ParseCursor(s)
		switch {
		case s == "":
			if ok || err != nil {
				t.Fatalf("empty: %v %v", ok, err)
			}
		case err != nil:
			if ok {
				t.Fatal("ok with an error")
			}
			// The error is the reason of the `reset` an unparseable
			// cursor gets: it must travel as valid JSON, whatever the
			// client sent.
			data := resetData(err.Error())
			var v struct{ Reason string }
			if jerr := json.Unmarshal(data, &v); jerr != nil || !json.Valid(data) {
				t.Fatalf("reset data %q: %v", data, jerr)
			}
			if utf8.ValidString(err.Error()) && v.Reason != err.Error() {
				t.Fatalf("reason %q, want %q", v.Reason, err.Error())
			}
		default:
			if !ok {
				t.Fatal("no cursor and no error")
			}
			// Round trip, modulo leading zeros.
			if got := fmt.Sprint(uint64(pos)); got != strings.TrimLeft(s, "0") && !(got == "0" && strings.Trim(s, "0") == "") {
				t.Fatalf("%q parsed as %d", s, pos)
			}
		}
	})
}

func FuzzOverlap(f *testing.F) {
	f.Add("user:*:todos", "user:7:*")
	f.Add("a*b", "*")
	f.Fuzz(func(t *testing.T, a, b string) {
		if len(a) > 12 || len(b) > 12 {
			return
		}
		if got, want := overlap(a, b), overlapNFA(a, b); got != want {
			t.Fatalf("overlap(%q, %q) = %v, want %v", a, b, got, want)
		}
	})
}
