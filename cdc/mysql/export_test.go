package mysql

// FenceQueries is how many probe queries the reader's visibility fence has
// sent.
func FenceQueries(r *Reader) uint64 { return r.fence.queries.Load() }
