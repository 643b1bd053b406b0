package stream

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestContains(t *testing.T) {
	for _, tc := range []struct {
		pattern, entry string
		want           bool
	}{
		{"user:7:*", "user:7:todos", true},
		{"user:7:*", "user:7:*", true},
		{"user:7:*", "user:7:", true},
		{"user:7:*", "user:*", false},
		{"user:7:*", "user:70:todos", false},
		{"user:7:*", "user:7*", false}, // user:7x is not user:7:…
		{"user:*", "user:7:*", true},
		{"*", "*", true},
		{"*", "anything:*:at*all", true},
		{"todos", "todos", true},
		{"todos", "todo*", false},
		{"todo*", "todos", true},
		{"user:*:todos", "user:7:todos", true},
		{"user:*:todos", "user:*:todos", true},
		{"user:*:todos", "user:7:*", false},
		{"user:*:todos", "user:*:*:todos", true},
		{"user:*:todos", "user:*", false},
		{"*:todos", "user:*:todos", true},
		{"a*b", "a**b", true},
		{"a**b", "a*b", true},
		{"a*a", "a*a*a", true},
		{"a*a*a", "a*a", false}, // "aa" is matched by a*a only
		{"*a", "a*", false},     // "ab"
		{"", "", true},
		{"", "*", false},
		{"*", "", true},
	} {
		if got := Contains(tc.pattern, tc.entry); got != tc.want {
			t.Errorf("Contains(%q, %q) = %v, want %v", tc.pattern, tc.entry, got, tc.want)
		}
		if bruteCost(tc.pattern, tc.entry) > 1e6 {
			continue // too many strings to enumerate
		}
		if got := containsBrute(tc.pattern, tc.entry); got != tc.want {
			t.Errorf("reference: containsBrute(%q, %q) = %v, want %v", tc.pattern, tc.entry, got, tc.want)
		}
	}
}

// containsBrute decides containment by enumeration: every string over the
// characters of both patterns plus one character in neither, up to one
// character longer than entry, that entry matches must be matched by
// pattern. (A string that entry matches and pattern does not, if any, is
// entry with each '*' replaced by the fresh character, so this length is
// enough; the extra character is margin.)
func containsBrute(pattern, entry string) bool {
	alpha := bruteAlphabet(pattern, entry)
	maxLen := len(entry) + 1
	buf := make([]byte, 0, maxLen)
	var walk func() bool
	walk = func() bool {
		s := string(buf)
		if globMatch(entry, s) && !globMatch(pattern, s) {
			return false
		}
		if len(buf) == maxLen {
			return true
		}
		for _, c := range alpha {
			buf = append(buf, c)
			ok := walk()
			buf = buf[:len(buf)-1]
			if !ok {
				return false
			}
		}
		return true
	}
	return walk()
}

// bruteCost is how many strings containsBrute enumerates.
func bruteCost(pattern, entry string) float64 {
	return math.Pow(float64(len(bruteAlphabet(pattern, entry))), float64(len(entry)+1))
}

func bruteAlphabet(pattern, entry string) []byte {
	alpha := []byte{'#'} // in neither: the fuzz alphabet is a, b, :, *
	for _, c := range []byte(strings.ReplaceAll(pattern+entry, "*", "")) {
		if strings.IndexByte(string(alpha), c) < 0 {
			alpha = append(alpha, c)
		}
	}
	return alpha
}

// randomGlob is a pattern of up to n characters over a small alphabet with
// '*', where containment questions are dense.
func randomGlob(r *rand.Rand, n int) string {
	const alpha = "ab:*"
	b := make([]byte, r.IntN(n+1))
	for i := range b {
		b[i] = alpha[r.IntN(len(alpha))]
	}
	return string(b)
}

// TestContainsProperties checks, on random small patterns, that Contains
// agrees with enumeration and behaves as containment must: reflexive,
// transitive, implied by equality of the languages, stronger than overlap,
// and `*` contains everything.
func TestContainsProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 3000 {
		a, b, c := randomGlob(r, 6), randomGlob(r, 6), randomGlob(r, 6)
		if got, want := Contains(a, b), containsBrute(a, b); got != want {
			t.Fatalf("Contains(%q, %q) = %v, enumeration says %v", a, b, got, want)
		}
		if !Contains(a, a) || !Contains("*", a) {
			t.Fatalf("%q: not reflexive, or not in *", a)
		}
		if Contains(a, b) && Contains(b, c) && !Contains(a, c) {
			t.Fatalf("not transitive: %q ⊇ %q ⊇ %q", a, b, c)
		}
		if Contains(a, b) && !overlap(a, b) {
			t.Fatalf("%q contains %q without overlapping it", a, b)
		}
		// A literal tag is contained exactly where it matches.
		if !isGlob(b) && Contains(a, b) != globMatch(a, b) {
			t.Fatalf("literal %q in %q", b, a)
		}
		// A literal pattern contains only itself.
		if !isGlob(a) && Contains(a, b) != (a == b) {
			t.Fatalf("literal pattern %q, entry %q", a, b)
		}
	}
}

func FuzzContains(f *testing.F) {
	f.Add("user:7:*", "user:*")
	f.Add("a*a*a", "a*a")
	f.Add("*a", "a*")
	f.Add("a*b*", "a*b*b")
	f.Fuzz(func(t *testing.T, pattern, entry string) {
		// Map onto the small alphabet the enumeration can cover.
		small := func(s string) string {
			if len(s) > 7 {
				s = s[:7]
			}
			b := []byte(s)
			for i, c := range b {
				b[i] = "ab:*"[c%4]
			}
			return string(b)
		}
		pattern, entry = small(pattern), small(entry)
		if got, want := Contains(pattern, entry), containsBrute(pattern, entry); got != want {
			t.Fatalf("Contains(%q, %q) = %v, enumeration says %v", pattern, entry, got, want)
		}
	})
}
