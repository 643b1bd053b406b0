package postgres

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/cdc"
)

// catalog is a session's SQL connection. The streaming loop (partition
// lookups), the heartbeat and the retention gauge share it; a pgx.Conn is
// not safe for concurrent use, so every query holds mu.
type catalog struct {
	mu   sync.Mutex
	conn *pgx.Conn
}

func (c *catalog) exec(ctx context.Context, sql string, args ...any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.conn.Exec(ctx, sql, args...)
	return err
}

func (c *catalog) queryRow(ctx context.Context, sql string, args []any, dest ...any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn.QueryRow(ctx, sql, args...).Scan(dest...)
}

// catalogTimeout bounds a partition lookup, which holds up the stream.
const catalogTimeout = 30 * time.Second

// treeInfo is a relation's place in a partition tree, read from the catalog
// as it is now.
type treeInfo struct {
	partitioned bool            // relkind 'p'
	ancestors   []uint32        // the partitioned tables it is a partition of, nearest first
	names       []cdc.TableName // their names
	// newer: the relation's pg_class row was written by the transaction
	// being decoded or a later one (ATTACH/DETACH write it), so the catalog
	// may not show the tree the change was made in; then all lists every
	// partitioned table.
	newer bool
	all   []cdc.TableName
}

// partitionSQL reads a relation's partition tree (pg_inherits, PostgreSQL
// 10+) and whether its pg_class row is at least as new as transaction $2.
const partitionSQL = `WITH RECURSIVE up(oid, depth) AS (
		SELECT i.inhparent, 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhrelid = $1::oid AND c.relispartition
		UNION ALL
		SELECT i.inhparent, up.depth + 1 FROM up JOIN pg_class c ON c.oid = up.oid
		JOIN pg_inherits i ON i.inhrelid = up.oid WHERE c.relispartition)
	SELECT coalesce((SELECT relkind = 'p' FROM pg_class WHERE oid = $1::oid), false),
		coalesce((SELECT $2::bigint <> 0 AND age(xmin) <= age($2::bigint::text::xid) FROM pg_class WHERE oid = $1::oid), false),
		coalesce(array_agg(a.oid ORDER BY u.depth), '{}'),
		coalesce(array_agg(n.nspname::text ORDER BY u.depth), '{}'),
		coalesce(array_agg(a.relname::text ORDER BY u.depth), '{}')
	FROM up u JOIN pg_class a ON a.oid = u.oid JOIN pg_namespace n ON n.oid = a.relnamespace`

// partitionInfo reads relation oid's partition tree; xid is the
// transaction being decoded (0: unknown).
func (c *catalog) partitionInfo(ctx context.Context, oid, xid uint32) (treeInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, catalogTimeout)
	defer cancel()
	var ti treeInfo
	var schemas, tables []string
	if err := c.queryRow(ctx, partitionSQL, []any{oid, int64(xid)}, &ti.partitioned, &ti.newer, &ti.ancestors, &schemas, &tables); err != nil {
		return ti, err
	}
	for i := range tables {
		ti.names = append(ti.names, cdc.TableName{Schema: schemas[i], Name: tables[i]})
	}
	if !ti.newer {
		return ti, nil
	}
	if err := c.queryRow(ctx, `SELECT coalesce(array_agg(n.nspname::text ORDER BY n.nspname, c.relname), '{}'),
			coalesce(array_agg(c.relname::text ORDER BY n.nspname, c.relname), '{}')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'p'`, nil, &schemas, &tables); err != nil {
		return ti, err
	}
	for i := range tables {
		ti.all = append(ti.all, cdc.TableName{Schema: schemas[i], Name: tables[i]})
	}
	return ti, nil
}

// baseTypeSQL resolves a type to the type at the bottom of its domains.
const baseTypeSQL = `WITH RECURSIVE d(oid, depth) AS (
		SELECT $1::oid, 0
		UNION ALL
		SELECT t.typbasetype, d.depth + 1 FROM d JOIN pg_type t ON t.oid = d.oid WHERE t.typtype = 'd')
	SELECT oid FROM d ORDER BY depth DESC LIMIT 1`

// baseType returns the base type of a domain (of domains), or oid itself.
func (c *catalog) baseType(ctx context.Context, oid uint32) (uint32, error) {
	ctx, cancel := context.WithTimeout(ctx, catalogTimeout)
	defer cancel()
	var base uint32
	err := c.queryRow(ctx, baseTypeSQL, []any{oid}, &base)
	return base, err
}

// catalogReader is what the stream reads from the catalog (a stub in tests
// without a database).
type catalogReader interface {
	partitionInfo(ctx context.Context, oid, xid uint32) (treeInfo, error)
	baseType(ctx context.Context, oid uint32) (uint32, error)
}

// Type OIDs whose output text differs from their cast to text; pgoutput
// sends the output text, a value is `col::text`.
const (
	oidBool   = 16   // boolout t/f, text true/false
	oidBpchar = 1042 // char(n): output padded, text without trailing spaces
	oidInet   = 869  // output omits a host's /32 or /128, text keeps it
	// firstUserOID: types below are built in (never domains).
	firstUserOID = 16384
)

// textConv is how a column's output text becomes its text cast.
type textConv uint8

const (
	convNone textConv = iota
	convBool
	convBpchar
	convInet
)

// convFor returns the conversion of a column of type oid, resolving
// domains through the catalog (once per type and session).
func (s *session) convFor(ctx context.Context, oid uint32) (textConv, error) {
	if oid >= firstUserOID {
		base, ok := s.baseTypes[oid]
		if !ok {
			b, err := s.cat.baseType(ctx, oid)
			if err != nil {
				return convNone, err
			}
			if s.baseTypes == nil {
				s.baseTypes = map[uint32]uint32{}
			}
			s.baseTypes[oid], base = b, b
		}
		oid = base
	}
	switch oid {
	case oidBool:
		return convBool, nil
	case oidBpchar:
		return convBpchar, nil
	case oidInet:
		return convInet, nil
	}
	return convNone, nil
}

var (
	textTrue  = []byte("true")
	textFalse = []byte("false")
)

// castText turns a column's output text into its text cast. It returns a
// sub-slice, a shared constant or a slice of *scratch (valid until the next
// row).
func castText(conv textConv, v []byte, scratch *[]byte) []byte {
	switch conv {
	case convBool:
		if len(v) == 1 && v[0] == 't' {
			return textTrue
		}
		if len(v) == 1 && v[0] == 'f' {
			return textFalse
		}
	case convBpchar:
		return bytes.TrimRight(v, " ")
	case convInet:
		if bytes.IndexByte(v, '/') < 0 {
			start := len(*scratch)
			*scratch = append(*scratch, v...)
			if bytes.IndexByte(v, ':') >= 0 {
				*scratch = append(*scratch, "/128"...)
			} else {
				*scratch = append(*scratch, "/32"...)
			}
			return (*scratch)[start:len(*scratch):len(*scratch)]
		}
	}
	return v
}

// relation is a table as its last Relation message and the catalog describe
// it.
type relation struct {
	table   *cdc.Table // what its changes carry; replaced when anything changes, never modified
	name    cdc.TableName
	columns []string
	flags   []bool     // per column: replica identity, as the Relation message says
	conv    []textConv // per column: how its output text becomes its text cast
	hasConv bool       // some column needs a conversion

	ancestors []cdc.TableName // partitioned tables its changes may belong to

	// A partitioned table receives its partitions' changes under its own
	// name when the publication publishes via the partition root. pgoutput
	// then sends the root's Relation message immediately followed by the
	// partition's, before that partition's first change (and again after
	// any invalidation), so the partitions seen so far are every partition
	// a change can have come from.
	partitioned bool
	partitions  []cdc.TableName // partitions seen, at every level
	leaves      []uint32        // leaf partitions seen: their replica identity decides what old rows carry
}

// relationMsg updates the relation cache from a Relation message and the
// catalog.
//
// Published via the root, the server names a change's partitioned table
// itself (from the catalog as it was when the row changed): the root's
// Relation message, then the partition's. Published under the partitions'
// own names, the partitioned tables above a partition come from the catalog
// as it is now; if the partition's catalog row is newer than the transaction
// being decoded (an ATTACH or DETACH the stream has not reached), the
// partition is matched against every partitioned table until its next
// Relation message, which the server sends once the stream passes that DDL.
func (s *session) relationMsg(ctx context.Context, m *pglogrepl.RelationMessage) error {
	xid := s.curXid
	if s.inStream {
		xid = s.streamXid
	}
	ti, err := s.cat.partitionInfo(ctx, m.RelationID, xid)
	if err != nil {
		return fmt.Errorf("postgres: relation %s.%s: read its partition tree: %w", m.Namespace, m.RelationName, err)
	}
	rels := s.r.relations
	rel := rels[m.RelationID]
	if rel == nil {
		rel = &relation{}
		rels[m.RelationID] = rel
	}
	rel.name = cdc.TableName{Schema: m.Namespace, Name: m.RelationName}
	rel.columns = make([]string, len(m.Columns))
	rel.flags = make([]bool, len(m.Columns))
	rel.conv = make([]textConv, len(m.Columns))
	rel.hasConv = false
	for i, c := range m.Columns {
		rel.columns[i] = c.Name
		rel.flags[i] = c.Flags&1 != 0
		if rel.conv[i], err = s.convFor(ctx, c.DataType); err != nil {
			return fmt.Errorf("postgres: relation %s.%s: read the type of %s: %w", m.Namespace, m.RelationName, c.Name, err)
		}
		rel.hasConv = rel.hasConv || rel.conv[i] != convNone
	}
	rel.partitioned = ti.partitioned
	rel.ancestors = ti.names
	if ti.newer {
		for _, n := range ti.all {
			if n != rel.name && !slices.Contains(rel.ancestors, n) {
				rel.ancestors = append(rel.ancestors, n)
			}
		}
	}
	s.r.refreshTable(rel)
	if root := rels[s.lastRelation]; root != nil && root.partitioned && root != rel {
		s.r.addPartition(root, s.lastRelation, m.RelationID, rel, ti)
	}
	s.lastRelation = m.RelationID
	return nil
}

// addPartition records that the changes of partition rel (id) arrive under
// root's name: rel and the partitioned tables between it and the root.
func (r *Reader) addPartition(root *relation, rootID, id uint32, rel *relation, ti treeInfo) {
	names := ti.names
	if i := slices.Index(ti.ancestors, rootID); i >= 0 {
		names = names[:i] // the levels below the root; all of them if the tree changed since
	}
	for _, n := range append(slices.Clone(names), rel.name) {
		if !slices.Contains(root.partitions, n) {
			root.partitions = append(root.partitions, n)
		}
	}
	if !rel.partitioned && !slices.Contains(root.leaves, id) {
		root.leaves = append(root.leaves, id)
	}
	r.refreshTable(root)
}

// refreshTable rebuilds rel's *cdc.Table, keeping the old pointer when
// nothing changed so that consumers' per-table caches stay valid.
func (r *Reader) refreshTable(rel *relation) {
	t := &cdc.Table{Schema: rel.name.Schema, Name: rel.name.Name, Columns: rel.columns,
		Key: r.keyOf(rel), Ancestors: rel.ancestors, Partitions: slices.Clone(rel.partitions)}
	if old := rel.table; old != nil && old.Schema == t.Schema && old.Name == t.Name &&
		slices.Equal(old.Columns, t.Columns) && slices.Equal(old.Key, t.Key) &&
		slices.Equal(old.Ancestors, t.Ancestors) && slices.Equal(old.Partitions, t.Partitions) {
		return
	}
	rel.table = t
}

// keyOf returns the columns an update without an old image leaves
// unchanged. For a table it is its replica identity. A partitioned table's
// changes come from its leaves, each logging old rows by its own replica
// identity, so only columns in every leaf's identity (and the root's flags)
// qualify; none before a leaf was seen.
func (r *Reader) keyOf(rel *relation) []bool {
	if !rel.partitioned {
		return rel.flags
	}
	key := make([]bool, len(rel.columns))
	if len(rel.leaves) == 0 {
		return key
	}
	for i, col := range rel.columns {
		key[i] = rel.flags[i]
		for _, id := range rel.leaves {
			leaf := r.relations[id]
			if j := slices.Index(leaf.columns, col); j < 0 || !leaf.flags[j] {
				key[i] = false
			}
		}
	}
	return key
}

func (c *catalog) closed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn.IsClosed()
}
