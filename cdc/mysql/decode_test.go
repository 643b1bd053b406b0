package mysql

import (
	"errors"
	"slices"
	"testing"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/tagstream/tagstream/cdc"
)

// imageTable is t(id INT, doc JSON, name VARCHAR(20), n INT) as a TABLE_MAP
// describes it.
func imageTable() *tableInfo {
	tm := &replication.TableMapEvent{
		Schema: []byte("s"), Table: []byte("t"), ColumnCount: 4,
		ColumnType: []byte{gomysql.MYSQL_TYPE_LONG, gomysql.MYSQL_TYPE_JSON, gomysql.MYSQL_TYPE_VARCHAR, gomysql.MYSQL_TYPE_LONG},
		ColumnMeta: []uint16{0, 4, 80, 0},
		ColumnName: [][]byte{[]byte("id"), []byte("doc"), []byte("name"), []byte("n")},
	}
	return newTableInfo("t", tm, nil)
}

func render(vals []cdc.Value) []string {
	out := make([]string, len(vals))
	for i, v := range vals {
		switch v.Kind {
		case cdc.Absent:
			out[i] = "?"
		case cdc.Null:
			out[i] = "NULL"
		default:
			out[i] = string(v.Text)
		}
	}
	return out
}

// TestImage decodes synthetic row images: the column bitmap, NULLs, a
// projection, a JSON column taken from go-mysql's decoding, and the after
// image of a MySQL PARTIAL_UPDATE_ROWS_EVENT whose JSON column is a diff.
func TestImage(t *testing.T) {
	info := imageTable()
	doc := []byte{3, 0, 0, 0, 'x', 'y', 'z'} // 4-byte length; the bytes go-mysql would decode
	row := func(prefix ...byte) []byte {
		b := append([]byte(nil), prefix...)
		b = append(b, 0b1000)           // null bitmap: n is NULL
		b = append(b, 7, 0, 0, 0)       // id = 7
		b = append(b, doc...)           // doc
		b = append(b, 3, 'a', 'b', 'c') // name
		return b
	}
	all := []byte{0x0f}
	tests := []struct {
		name    string
		bm      []byte
		data    []byte
		reads   []bool
		partial bool
		after   bool
		json    [][]any
		want    []string
	}{
		{"every column", all, row(), nil, false, false, [][]any{{nil, `{"a":1}`}}, []string{"7", `{"a": 1}`, "abc", "NULL"}},
		{"projected", all, row(), []bool{true, false, false, true}, false, false, nil, []string{"7", "?", "?", "NULL"}},
		{"NULL outside the projection is absent", all, row(), []bool{false, false, true, false}, false, false, nil, []string{"?", "?", "abc", "?"}},
		{"not in the image", []byte{0b1011}, []byte{0b100, 7, 0, 0, 0, 3, 0, 0, 0, 'x', 'y', 'z'}, nil, false, false, [][]any{{nil, "[]"}},
			[]string{"7", "[]", "?", "NULL"}},
		{"partial update: the JSON diff is absent", all, row(1, 0b1), nil, true, true, [][]any{{nil, "unused"}}, []string{"7", "?", "abc", "NULL"}},
		{"partial update of another JSON column", all, row(1, 0b0), nil, true, true, [][]any{{nil, "{}"}}, []string{"7", "{}", "abc", "NULL"}},
		{"partial update event, full JSON", all, row(0), nil, true, true, [][]any{{nil, "{}"}}, []string{"7", "{}", "abc", "NULL"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := rowDecoder{info: info, n: 4, reads: tt.reads, partial: tt.partial, json: tt.json}
			var vals []cdc.Value
			got, _, rest, err := d.image(&vals, nil, tt.bm, tt.data, tt.after)
			if err != nil {
				t.Fatal(err)
			}
			if len(rest) != 0 {
				t.Errorf("%d bytes left", len(rest))
			}
			if r := render(got); !slices.Equal(r, tt.want) {
				t.Errorf("image = %q, want %q", r, tt.want)
			}
			// Cut short anywhere, it is an error, never a panic.
			for n := range len(tt.data) {
				d := rowDecoder{info: info, n: 4, reads: tt.reads, partial: tt.partial, json: tt.json}
				if _, _, _, err := d.image(&vals, nil, tt.bm, tt.data[:n], tt.after); !errors.Is(err, errShortRow) {
					t.Fatalf("cut at %d: err %v, want errShortRow", n, err)
				}
			}
		})
	}
}

// TestImageAllocatesNothing: decoding a row image into reused buffers
// allocates nothing, projected or not (temporal, DECIMAL and integer text
// included).
func TestImageAllocatesNothing(t *testing.T) {
	tm := &replication.TableMapEvent{
		Schema: []byte("s"), Table: []byte("t"), ColumnCount: 4,
		ColumnType: []byte{gomysql.MYSQL_TYPE_LONGLONG, gomysql.MYSQL_TYPE_DATETIME2, gomysql.MYSQL_TYPE_NEWDECIMAL, gomysql.MYSQL_TYPE_VARCHAR},
		ColumnMeta: []uint16{0, 6, 12<<8 | 2, 80},
		ColumnName: [][]byte{[]byte("id"), []byte("at"), []byte("price"), []byte("title")},
	}
	info := newTableInfo("t", tm, nil)
	data := []byte{0, 7, 0, 0, 0, 0, 0, 0, 0}                           // no NULLs, id 7
	data = append(data, 0x99, 0xb2, 0xbb, 0x7e, 0xfa, 0x01, 0xe2, 0x40) // 2024-02-29 23:59:58.123456
	data = append(data, 0x80, 0, 0, 0x04, 0xd2, 0x2d)                   // DECIMAL(12,2) 1234.45
	data = append(data, 4, 'm', 'i', 'l', 'k')
	for _, reads := range [][]bool{nil, {true, false, true, false}} {
		d := rowDecoder{info: info, n: 4, reads: reads}
		var vals []cdc.Value
		arena := make([]byte, 0, 256)
		got, _, _, err := d.image(&vals, arena, []byte{0x0f}, data, false)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"7", "2024-02-29 23:59:58.123456", "1234.45", "milk"}
		if reads != nil {
			want = []string{"7", "?", "1234.45", "?"}
		}
		if r := render(got); !slices.Equal(r, want) {
			t.Errorf("image = %q, want %q", r, want)
		}
		if n := testing.AllocsPerRun(100, func() {
			_, _, _, _ = d.image(&vals, arena[:0], []byte{0x0f}, data, false)
		}); n != 0 {
			t.Errorf("reads %v: %v allocations per image", reads, n)
		}
	}
}

// FuzzImage: any bytes as a row image of a table with one column of each
// binlog type decode to values or to an error, never a panic, and never
// read past the image.
func FuzzImage(f *testing.F) {
	types := []byte{
		gomysql.MYSQL_TYPE_TINY, gomysql.MYSQL_TYPE_SHORT, gomysql.MYSQL_TYPE_INT24, gomysql.MYSQL_TYPE_LONG,
		gomysql.MYSQL_TYPE_LONGLONG, gomysql.MYSQL_TYPE_FLOAT, gomysql.MYSQL_TYPE_DOUBLE, gomysql.MYSQL_TYPE_NEWDECIMAL,
		gomysql.MYSQL_TYPE_BIT, gomysql.MYSQL_TYPE_YEAR, gomysql.MYSQL_TYPE_DATE, gomysql.MYSQL_TYPE_TIME,
		gomysql.MYSQL_TYPE_TIME2, gomysql.MYSQL_TYPE_TIMESTAMP, gomysql.MYSQL_TYPE_TIMESTAMP2, gomysql.MYSQL_TYPE_DATETIME,
		gomysql.MYSQL_TYPE_DATETIME2, gomysql.MYSQL_TYPE_VARCHAR, gomysql.MYSQL_TYPE_STRING, gomysql.MYSQL_TYPE_STRING,
		gomysql.MYSQL_TYPE_STRING, gomysql.MYSQL_TYPE_BLOB, gomysql.MYSQL_TYPE_JSON,
	}
	meta := []uint16{0, 0, 0, 0, 0, 4, 8, 65<<8 | 30, 8 << 8, 0, 0, 0, 3, 0, 6, 0, 4, 300, 0xfe10,
		uint16(gomysql.MYSQL_TYPE_ENUM)<<8 | 2, uint16(gomysql.MYSQL_TYPE_SET)<<8 | 8, 3, 4}
	names := make([][]byte, len(types))
	for i := range names {
		names[i] = []byte{'c', byte('a' + i)}
	}
	tm := &replication.TableMapEvent{Schema: []byte("s"), Table: []byte("t"), ColumnCount: uint64(len(types)),
		ColumnType: types, ColumnMeta: meta, ColumnName: names}
	info := newTableInfo("t", tm, nil)
	f.Add([]byte{0xff, 0xff, 0xff}, []byte{0, 0, 0, 1, 2, 3}, true)
	f.Add([]byte{0xff, 0, 0}, []byte{0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}, false)
	f.Fuzz(func(t *testing.T, bm, data []byte, partial bool) {
		json := [][]any{make([]any, len(types)), make([]any, len(types))}
		for _, reads := range [][]bool{nil, {true, false, true}} {
			d := rowDecoder{info: info, n: len(types), reads: reads, partial: partial, json: json}
			var vals []cdc.Value
			got, _, rest, err := d.image(&vals, nil, bm, data, partial)
			if err != nil {
				continue
			}
			if len(got) != len(types) || len(rest) > len(data) {
				t.Fatalf("%d values, %d of %d bytes left", len(got), len(rest), len(data))
			}
		}
	})
}
