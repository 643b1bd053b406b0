package mysql

import (
	"bytes"
	"encoding/binary"
	"math"
	"strconv"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/tagstream/tagstream/cdc"
)

// colKind says how a column's decoded value becomes canonical text where the
// binlog type alone does not tell.
type colKind uint8

const (
	colPlain colKind = iota
	colEnum          // index → label
	colSet           // bitmask → comma-separated labels
)

type column struct {
	kind   colKind
	labels []string // ENUM / SET, decoded to UTF-8
	// umask is non-zero for an UNSIGNED integer (or BIT) column.
	umask uint64
	cs    *charset // a text column stored in another character set than UTF-8
	pad   int      // BINARY(n): the binlog drops the trailing zero bytes the column holds

	// The layout of its values in row images (setType).
	typ         byte   // binlog type; ENUM, SET and CHAR resolved from the metadata
	meta        uint16 // the TABLE_MAP's metadata
	fixed       int    // size of a fixed-size value
	prefix      int    // bytes of a variable-size value's length prefix
	unsupported bool
}

// tableInfo is one layout of one table: a TABLE_MAP with the same schema,
// name, column names, types and metadata maps to the same tableInfo, and so
// to the same *cdc.Table.
type tableInfo struct {
	key      string // layout key
	table    *cdc.Table
	cols     []column
	named    bool // the TABLE_MAP carried column names
	jsonCols int  // MySQL JSON columns
}

// layoutKey appends to buf what identifies a TABLE_MAP's layout.
func layoutKey(buf []byte, tm *replication.TableMapEvent) []byte {
	buf = append(buf, tm.Schema...)
	buf = append(buf, 0)
	buf = append(buf, tm.Table...)
	buf = append(buf, 0)
	buf = append(buf, tm.ColumnType...)
	buf = append(buf, 0)
	for _, m := range tm.ColumnMeta {
		buf = append(buf, byte(m), byte(m>>8))
	}
	buf = append(buf, 0)
	buf = append(buf, tm.SignednessBitmap...)
	for _, n := range tm.ColumnName {
		buf = append(buf, 0)
		buf = append(buf, n...)
	}
	for _, cs := range [][]uint64{tm.DefaultCharset, tm.ColumnCharset, tm.EnumSetDefaultCharset, tm.EnumSetColumnCharset} {
		buf = append(buf, 3)
		for _, c := range cs {
			buf = binary.AppendUvarint(buf, c)
		}
	}
	for _, vs := range [][][][]byte{tm.EnumStrValue, tm.SetStrValue} {
		buf = append(buf, 1)
		for _, labels := range vs {
			for _, l := range labels {
				buf = append(buf, l...)
				buf = append(buf, 0)
			}
			buf = append(buf, 2)
		}
	}
	return buf
}

// newTableInfo maps a TABLE_MAP; collations names each collation id's
// character set.
func newTableInfo(key string, tm *replication.TableMapEvent, collations map[uint64]string) *tableInfo {
	n := int(tm.ColumnCount)
	info := &tableInfo{
		key:   key,
		table: &cdc.Table{Schema: string(tm.Schema), Name: string(tm.Table), Columns: make([]string, n)},
		cols:  make([]column, n),
		named: len(tm.ColumnName) == n,
	}
	for i := range n {
		if info.named {
			info.table.Columns[i] = string(tm.ColumnName[i])
		} else {
			info.table.Columns[i] = "@" + strconv.Itoa(i+1)
		}
	}
	enums, sets := tm.EnumStrValueMap(), tm.SetStrValueMap()
	unsigned := tm.UnsignedMap()
	colls, enumColls := tm.CollationMap(), tm.EnumSetCollationMap()
	for i := range n {
		c := &info.cols[i]
		var meta uint16
		if i < len(tm.ColumnMeta) {
			meta = tm.ColumnMeta[i]
		}
		c.setType(tm.ColumnType[i], meta)
		if c.typ == gomysql.MYSQL_TYPE_JSON {
			info.jsonCols++
		}
		if unsigned[i] {
			c.umask = intMask(tm.ColumnType[i])
		}
		if id, ok := colls[i]; ok {
			c.cs = charsets[collations[id]]
			if collations[id] == "binary" {
				c.pad = binaryLength(tm, i)
			}
		}
		switch {
		case tm.IsEnumColumn(i):
			c.kind, c.labels = colEnum, decodeLabels(enums[i], charsets[collations[enumColls[i]]])
		case tm.IsSetColumn(i):
			c.kind, c.labels = colSet, decodeLabels(sets[i], charsets[collations[enumColls[i]]])
		}
	}
	return info
}

func decodeLabels(raw []string, cs *charset) []string {
	if cs == nil {
		return raw
	}
	out := make([]string, len(raw))
	for i, l := range raw {
		out[i] = cs.text([]byte(l))
	}
	return out
}

// binaryLength is the byte length of a BINARY(n) column (a fixed-length
// string type), 0 for any other type. The length is spread over the
// column's metadata as MySQL's Field_string packs it.
func binaryLength(tm *replication.TableMapEvent, i int) int {
	if tm.ColumnType[i] != gomysql.MYSQL_TYPE_STRING || i >= len(tm.ColumnMeta) {
		return 0
	}
	meta := tm.ColumnMeta[i]
	if meta < 256 {
		return int(meta)
	}
	b0, b1 := byte(meta>>8), byte(meta)
	if b0&0x30 != 0x30 {
		return int(uint16(b1) | uint16((b0&0x30)^0x30)<<4)
	}
	if b0 != gomysql.MYSQL_TYPE_STRING {
		return 0 // ENUM, SET
	}
	return int(b1)
}

// intMask is the mask of an integer column type's values, 0 for other types.
func intMask(t byte) uint64 {
	switch t {
	case gomysql.MYSQL_TYPE_TINY:
		return 0xff
	case gomysql.MYSQL_TYPE_SHORT:
		return 0xffff
	case gomysql.MYSQL_TYPE_INT24:
		return 0xffffff
	case gomysql.MYSQL_TYPE_LONG:
		return 0xffffffff
	case gomysql.MYSQL_TYPE_LONGLONG:
		return math.MaxUint64
	}
	return 0
}

var pow10 = [...]int{1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000}

// appendDigits appends v (≥ 0) zero-padded to width digits.
func appendDigits(buf []byte, v, width int) []byte {
	n := len(buf)
	for range width {
		buf = append(buf, 0)
	}
	for i := len(buf) - 1; i >= n; i-- {
		buf[i] = byte('0' + v%10)
		v /= 10
	}
	return buf
}

// appendText appends a string column's value in UTF-8; BINARY(n) gets back
// the trailing zero bytes the binlog drops.
func appendText[T string | []byte](buf []byte, c *column, v T) []byte {
	start := len(buf)
	if c.cs != nil {
		buf = c.cs.appendUTF8(buf, []byte(v))
	} else {
		buf = append(buf, v...)
	}
	for len(buf)-start < c.pad {
		buf = append(buf, 0)
	}
	return buf
}

// floatDigits: a FLOAT prints at most 6 significant digits (FLT_DIG).
const floatDigits = 6

// appendFloat appends a FLOAT or DOUBLE the way the server prints the
// column (my_gcvt with the field's wide buffer): the shortest digits that
// read back as the value (FLOAT: rounded to 6), in plain notation unless the
// decimal exponent is below -14, or above 15 with no digit after the point:
// 0.00000015, 123457000, 1e15, 1.2345678901234568e17, 3.4e38.
func appendFloat(buf []byte, f float64, digits int) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return strconv.AppendFloat(buf, f, 'g', -1, 64) // not storable in a column
	}
	if f == 0 {
		return append(buf, '0')
	}
	if f < 0 {
		buf = append(buf, '-')
		f = -f
	}
	prec := -1
	if digits > 0 {
		prec = digits - 1
	}
	var tmp [64]byte
	e := strconv.AppendFloat(tmp[:0], f, 'e', prec, 64) // d.ddde±XX
	mant, exp, _ := bytes.Cut(e, []byte("e"))
	ds := append(tmp[len(e):len(e)], mant[0])
	if len(mant) > 2 {
		ds = append(ds, mant[2:]...)
	}
	for len(ds) > 1 && ds[len(ds)-1] == '0' {
		ds = ds[:len(ds)-1]
	}
	x := 0
	for _, c := range exp[1:] { // e±XX
		x = 10*x + int(c-'0')
	}
	if exp[0] == '-' {
		x = -x
	}
	decpt, n := x+1, len(ds)
	if decpt >= -14 && (decpt <= 15 || n > decpt) {
		switch {
		case decpt <= 0:
			buf = append(buf, '0', '.')
			for range -decpt {
				buf = append(buf, '0')
			}
			return append(buf, ds...)
		case decpt < n:
			buf = append(buf, ds[:decpt]...)
			buf = append(buf, '.')
			return append(buf, ds[decpt:]...)
		default:
			buf = append(buf, ds...)
			for range decpt - n {
				buf = append(buf, '0')
			}
			return buf
		}
	}
	buf = append(buf, ds[0])
	if n > 1 {
		buf = append(buf, '.')
		buf = append(buf, ds[1:]...)
	}
	buf = append(buf, 'e')
	return strconv.AppendInt(buf, int64(decpt-1), 10)
}

// appendMySQLJSON re-spaces compact JSON the way MySQL prints a JSON value:
// a space after every ',' and ':' outside strings.
func appendMySQLJSON(buf []byte, s string) []byte {
	inString, escaped := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		buf = append(buf, c)
		switch {
		case inString:
			if escaped {
				escaped = false
			} else if c == '\\' {
				escaped = true
			} else if c == '"' {
				inString = false
			}
		case c == '"':
			inString = true
		case c == ',' || c == ':':
			if i+1 < len(s) && s[i+1] != ' ' {
				buf = append(buf, ' ')
			}
		}
	}
	return buf
}
