// Tag matching with tagstream's one wildcard: `*` matches any run of
// characters (also none). A literal `*` never occurs in a tag: tagstream
// percent-encodes it in values (%2A).

/**
 * Whether tag and pattern can name the same tag. Either side may hold `*`:
 * an event tag `todo:*` (a change whose id tagstream could not know) covers
 * a watched `todo:42`, a watched `user:7:*` covers an event `user:7:todos`,
 * and `user:*` meets `*:todos`.
 * @param {string} tag
 * @param {string} pattern
 * @returns {boolean}
 */
export function matches(tag, pattern) {
  if (!tag.includes('*') && !pattern.includes('*')) return tag === pattern;
  return intersects(tag, pattern);
}

// intersects reports whether some string matches both globs a and b:
// memoized search over (i, j), the unread suffixes of each.
function intersects(a, b) {
  const la = a.length;
  const lb = b.length;
  const memo = new Uint8Array((la + 1) * (lb + 1)); // 0 unknown, 1 no, 2 yes
  const visit = (i, j) => {
    const k = i * (lb + 1) + j;
    if (memo[k]) return memo[k] === 2;
    let ok;
    if (i === la && j === lb) ok = true;
    else if (i < la && a[i] === '*') {
      // The star matches nothing more, or eats one character b produces.
      ok = visit(i + 1, j) || (j < lb && visit(i, j + 1));
    } else if (j < lb && b[j] === '*') {
      ok = visit(i, j + 1) || (i < la && visit(i + 1, j));
    } else {
      ok = i < la && j < lb && a[i] === b[j] && visit(i + 1, j + 1);
    }
    memo[k] = ok ? 2 : 1;
    return ok;
  };
  return visit(0, 0);
}

/**
 * The entries of watched that tags touch (each at most once, in watched's
 * order).
 * @param {readonly string[]} tags
 * @param {readonly string[]} watched
 * @returns {string[]}
 */
export function matching(tags, watched) {
  return watched.filter((w) => tags.some((t) => matches(t, w)));
}
