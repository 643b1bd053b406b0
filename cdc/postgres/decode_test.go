package postgres

import (
	"context"
	"encoding/binary"
	"slices"
	"testing"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/cdc/cdctest"
)

// nopHandler accepts everything and keeps nothing.
type nopHandler struct{}
type nopTx struct{}

func (nopHandler) Begin() cdc.Tx                                    { return nopTx{} }
func (nopHandler) Commit(context.Context, cdc.Tx, cdc.Commit) error { return nil }
func (nopHandler) Resumed(cdc.Position)                             {}
func (nopHandler) Progress(cdc.Position)                            {}
func (nopHandler) Drain(context.Context)                            {}
func (nopHandler) Lost(context.Context, string) error               { return nil }
func (nopTx) Add(c *cdc.Change) {
	for _, img := range [][]cdc.Value{c.Old, c.New} {
		if img != nil && len(img) != len(c.Table.Columns) {
			panic("image length differs from the table's columns")
		}
	}
}
func (nopTx) Merge(cdc.Tx)   {}
func (nopTx) Tags() []string { return nil }

func be32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }

// relationMsg builds a Relation message for table public.t (id key, v).
func relationBytes(id uint32) []byte {
	b := be32([]byte{'R'}, id)
	b = append(b, "public\x00t\x00"...)
	b = append(b, 'd', 0, 2)
	b = append(b, 1)
	b = append(b, "id\x00"...)
	b = be32(b, 23)
	b = be32(b, 0xffffffff)
	b = append(b, 0)
	b = append(b, "v\x00"...)
	b = be32(b, 25)
	b = be32(b, 0xffffffff)
	return b
}

func tuple(vals ...string) []byte {
	b := []byte{0, byte(len(vals))}
	for _, v := range vals {
		switch v {
		case "\x00n":
			b = append(b, 'n')
		case "\x00u":
			b = append(b, 'u')
		default:
			b = append(b, 't')
			b = be32(b, uint32(len(v)))
			b = append(b, v...)
		}
	}
	return b
}

func newTestSession() *session {
	r, _ := New(Config{DSN: "postgres://localhost/db"})
	return &session{r: r, h: nopHandler{}, streams: map[uint32]*streamedTx{}, cat: stubCatalog{}}
}

// stubCatalog answers partition lookups from a map (nothing partitioned
// when nil) and knows no domains.
type stubCatalog struct {
	tree func(oid uint32) treeInfo
}

func (c stubCatalog) partitionInfo(_ context.Context, oid, _ uint32) (treeInfo, error) {
	if c.tree == nil {
		return treeInfo{}, nil
	}
	return c.tree(oid), nil
}

func (stubCatalog) baseType(_ context.Context, oid uint32) (uint32, error) { return oid, nil }

func TestDecodeRowImages(t *testing.T) {
	s := newTestSession()
	var got []string
	s.h = recordingHandler{&got}
	msgs := [][]byte{
		relationBytes(7),
		{'B', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5},
		append(be32([]byte{'I'}, 7), append([]byte{'N'}, tuple("1", "x")...)...),
		append(append(be32([]byte{'U'}, 7), append([]byte{'K'}, tuple("1", "\x00n")...)...), append([]byte{'N'}, tuple("2", "\x00u")...)...),
		append(be32([]byte{'D'}, 7), append([]byte{'O'}, tuple("2", "\x00n")...)...),
	}
	for _, m := range msgs {
		if err := s.message(context.Background(), m); err != nil {
			t.Fatalf("%q: %v", m, err)
		}
	}
	want := []string{
		"insert public.t new=[id=1 v=x]",
		"update public.t old=[id=1 v=<absent>] new=[id=2 v=<unchanged>]",
		"delete public.t old=[id=2 v=NULL]",
	}
	if len(got) != len(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("change %d: got %q, want %q", i, got[i], want[i])
		}
	}
}

type recordingHandler struct{ lines *[]string }
type recordingTx struct{ lines *[]string }

func (h recordingHandler) Begin() cdc.Tx                                  { return recordingTx(h) }
func (recordingHandler) Commit(context.Context, cdc.Tx, cdc.Commit) error { return nil }
func (recordingHandler) Resumed(cdc.Position)                             {}
func (recordingHandler) Progress(cdc.Position)                            {}
func (recordingHandler) Lost(context.Context, string) error               { return nil }
func (recordingHandler) Drain(context.Context)                            {}
func (t recordingTx) Add(c *cdc.Change)                                   { *t.lines = append(*t.lines, cdctest.Render(c)) }
func (recordingTx) Merge(cdc.Tx)                                          {}
func (recordingTx) Tags() []string                                        { return nil }

// FuzzMessage feeds arbitrary pgoutput messages to a session that knows one
// relation and has a transaction and a stream open: errors are fine,
// panics are not.
func FuzzMessage(f *testing.F) {
	f.Add([]byte("I\x00\x00\x00\x07N\x00\x02t\x00\x00\x00\x011n"), false)
	f.Add([]byte("U\x00\x00\x00\x07K\x00\x02t\x00\x00\x00\x011nN\x00\x02uu"), false)
	f.Add([]byte("D\x00\x00\x00\x09\x00\x00\x00\x07O\x00\x02nn"), true)
	f.Add([]byte("T\x00\x00\x00\x01\x00\x00\x00\x00\x07"), false)
	f.Add(relationBytes(8), false)
	f.Add([]byte("c\x00\x00\x00\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00"), false)
	f.Add([]byte("A\x00\x00\x00\x09\x00\x00\x00\x0a"), false)
	f.Fuzz(func(t *testing.T, data []byte, inStream bool) {
		s := newTestSession()
		if err := s.message(context.Background(), relationBytes(7)); err != nil {
			t.Fatal(err)
		}
		s.cur = nopTx{}
		s.streams[9] = &streamedTx{top: nopTx{}, subs: map[uint32]cdc.Tx{}}
		s.inStream, s.streamXid = inStream, 9
		_ = s.message(context.Background(), data)
	})
}

// relationFor builds a Relation message for public.<name>(id, v) with the
// given replica identity flags.
func relationFor(id uint32, name string, idKey, vKey bool) []byte {
	b := be32([]byte{'R'}, id)
	b = append(b, "public\x00"+name+"\x00"...)
	b = append(b, 'd', 0, 2)
	for _, c := range []struct {
		name string
		key  bool
	}{{"id", idKey}, {"v", vKey}} {
		flag := byte(0)
		if c.key {
			flag = 1
		}
		b = append(b, flag)
		b = append(b, c.name+"\x00"...)
		b = be32(b, 25)
		b = be32(b, 0xffffffff)
	}
	return b
}

// TestPartitionsPublishedViaRoot follows pgoutput with
// publish_via_partition_root: a partitioned table's Relation message, then
// the Relation message of the partition a change comes from, then the change
// under the root's relation id.
func TestPartitionsPublishedViaRoot(t *testing.T) {
	s := newTestSession()
	var got []string
	var tables []*cdc.Table
	s.h = tableRecorder{&got, &tables}
	// m (10) ⊃ m1 (11), m2 (12) ⊃ m2a (13)
	tree := map[uint32]struct {
		partitioned bool
		up          []uint32
	}{10: {true, nil}, 11: {false, []uint32{10}}, 12: {true, []uint32{10}}, 13: {false, []uint32{12, 10}}}
	names := map[uint32]string{10: "m", 11: "m1", 12: "m2", 13: "m2a"}
	s.cat = stubCatalog{tree: func(oid uint32) treeInfo {
		n := tree[oid]
		ti := treeInfo{partitioned: n.partitioned, ancestors: n.up}
		for _, a := range n.up {
			ti.names = append(ti.names, cdc.TableName{Schema: "public", Name: names[a]})
		}
		return ti
	}}
	begin := []byte{'B', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5}
	update := append(be32([]byte{'U'}, 10), append([]byte{'N'}, tuple("1", "x")...)...)
	keyUpdate := append(append(be32([]byte{'U'}, 10), append([]byte{'K'}, tuple("1", "\x00n")...)...), append([]byte{'N'}, tuple("2", "y")...)...)
	for _, m := range [][]byte{
		begin,
		relationFor(10, "m", true, true), // the root is REPLICA IDENTITY FULL
		relationFor(11, "m1", true, false),
		update,
		relationFor(10, "m", true, true),
		relationFor(13, "m2a", true, false),
		update,
		keyUpdate,
	} {
		if err := s.message(context.Background(), m); err != nil {
			t.Fatalf("%q: %v", m, err)
		}
	}
	want := []string{
		"update public.m new=[id=1 v=x]",
		"update public.m new=[id=1 v=x]",
		// The leaves log old rows by their own identity (id): v is not in them.
		"update public.m old=[id=1 v=<absent>] new=[id=2 v=y]",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	first, second := tables[0], tables[1]
	if !slices.Equal(first.Key, []bool{true, false}) {
		t.Errorf("key = %v, want the leaves' identity (id) only, not the root's FULL", first.Key)
	}
	n := func(s string) cdc.TableName { return cdc.TableName{Schema: "public", Name: s} }
	if !slices.Equal(first.Partitions, []cdc.TableName{n("m1")}) {
		t.Errorf("partitions after m1 = %v", first.Partitions)
	}
	if second == first || !slices.Equal(second.Partitions, []cdc.TableName{n("m1"), n("m2"), n("m2a")}) {
		t.Errorf("partitions after m2a = %v (same table: %v)", second.Partitions, second == first)
	}
	if tables[2] != second {
		t.Error("an unchanged relation got a new *cdc.Table")
	}
	leaf := s.r.relations[13].table
	if !slices.Equal(leaf.Ancestors, []cdc.TableName{n("m2"), n("m")}) {
		t.Errorf("m2a ancestors = %v", leaf.Ancestors)
	}
}

type tableRecorder struct {
	lines  *[]string
	tables *[]*cdc.Table
}

func (h tableRecorder) Begin() cdc.Tx                                  { return h }
func (tableRecorder) Commit(context.Context, cdc.Tx, cdc.Commit) error { return nil }
func (tableRecorder) Resumed(cdc.Position)                             {}
func (tableRecorder) Progress(cdc.Position)                            {}
func (tableRecorder) Lost(context.Context, string) error               { return nil }
func (tableRecorder) Drain(context.Context)                            {}
func (h tableRecorder) Add(c *cdc.Change) {
	*h.lines = append(*h.lines, cdctest.Render(c))
	*h.tables = append(*h.tables, c.Table)
}
func (tableRecorder) Merge(cdc.Tx)   {}
func (tableRecorder) Tags() []string { return nil }
