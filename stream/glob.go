package stream

import "strings"

// A subscription entry or an event tag is a glob when it contains '*', which
// stands for any run of characters (including none). There is no escape:
// rules percent-encode '*' inside values, so a literal '*' never appears in a
// tag.

func isGlob(s string) bool { return strings.IndexByte(s, '*') >= 0 }

// literalPrefix is the part of s before its first '*' (all of s when s has
// none). The pattern index is keyed by it.
func literalPrefix(s string) string {
	if i := strings.IndexByte(s, '*'); i >= 0 {
		return s[:i]
	}
	return s
}

// globMatch reports whether the literal string s matches pattern p. It keeps
// only the last '*' as a backtracking point, which is enough when '*' is the
// sole metacharacter: O(len(p)·len(s)) worst case, linear in practice.
func globMatch(p, s string) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case pi < len(p) && p[pi] == s[si]:
			pi++
			si++
		case star >= 0:
			mark++
			pi, si = star+1, mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// overlap reports whether some string matches both a and b (either may be a
// glob). When both contain a '*', they share a string exactly when their
// literal prefixes are compatible (one is a prefix of the other) and so are
// their literal suffixes: the string "longer prefix + a's middle segments +
// b's middle segments + longer suffix" then matches both, and without
// compatible ends nothing can.
func overlap(a, b string) bool {
	ga, gb := isGlob(a), isGlob(b)
	switch {
	case !ga && !gb:
		return a == b
	case !ga:
		return globMatch(b, a)
	case !gb:
		return globMatch(a, b)
	}
	pa, pb := a[:strings.IndexByte(a, '*')], b[:strings.IndexByte(b, '*')]
	sa, sb := a[strings.LastIndexByte(a, '*')+1:], b[strings.LastIndexByte(b, '*')+1:]
	return (strings.HasPrefix(pa, pb) || strings.HasPrefix(pb, pa)) &&
		(strings.HasSuffix(sa, sb) || strings.HasSuffix(sb, sa))
}

// Contains reports whether pattern contains entry: every tag that entry
// matches (entry may be a tag or a glob) is matched by pattern. `user:7:*`
// contains `user:7:todos` and `user:7:*`, not `user:*`.
//
// It is globMatch with entry read as text in which each '*' is one more
// character that only a '*' of pattern can absorb. If pattern matches entry
// so, then for any strings put in place of entry's stars, the stars of
// pattern that absorbed them absorb them again: containment. Conversely, put
// in place of each of entry's stars a character that pattern does not
// contain: only a '*' of pattern can match it (UTF-8 keeps byte matches
// aligned to characters), so if pattern matches the result, it matches entry
// read as text; if it does not, the result is a tag that entry matches and
// pattern does not.
func Contains(pattern, entry string) bool { return globMatch(pattern, entry) }
