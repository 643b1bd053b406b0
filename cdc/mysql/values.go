package mysql

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/tagstream/tagstream/cdc"
)

// colKind says how a column's decoded value becomes canonical text where the
// decoder's Go value alone does not tell.
type colKind uint8

const (
	colPlain colKind = iota
	colEnum          // int64 index → label
	colSet           // int64 bitmask → comma-separated labels
	colYear          // int; 0 is 0000
	colJSON          // MySQL binary JSON: add MySQL's spaces
)

type column struct {
	kind   colKind
	labels []string // ENUM / SET, decoded to UTF-8
	// umask is the value mask of an UNSIGNED integer (or BIT) column, 0
	// otherwise: the rows arrive decoded as signed (see decodeRows).
	umask uint64
	dec   int      // fractional digits of DATETIME/TIMESTAMP
	cs    *charset // a text column stored in another character set than UTF-8
	pad   int      // BINARY(n): the binlog drops the trailing zero bytes the column holds
}

// tableInfo is one layout of one table: a TABLE_MAP with the same schema,
// name, column names, types and metadata maps to the same tableInfo, and so
// to the same *cdc.Table.
type tableInfo struct {
	key   string // layout key
	table *cdc.Table
	cols  []column
	named bool // the TABLE_MAP carried column names
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
		if unsigned[i] {
			c.umask = intMask(tm.ColumnType[i])
		}
		if tm.ColumnType[i] == gomysql.MYSQL_TYPE_BIT {
			c.umask = math.MaxUint64 // BIT(64) arrives as a negative int64
		}
		if id, ok := colls[i]; ok {
			c.cs = charsets[collations[id]]
			if collations[id] == "binary" {
				c.pad = binaryLength(tm, i)
			}
		}
		switch tm.ColumnType[i] {
		case gomysql.MYSQL_TYPE_DATETIME2, gomysql.MYSQL_TYPE_TIMESTAMP2:
			if i < len(tm.ColumnMeta) && tm.ColumnMeta[i] <= 6 {
				c.dec = int(tm.ColumnMeta[i])
			}
		}
		switch {
		case tm.IsEnumColumn(i):
			c.kind, c.labels = colEnum, decodeLabels(enums[i], charsets[collations[enumColls[i]]])
		case tm.IsSetColumn(i):
			c.kind, c.labels = colSet, decodeLabels(sets[i], charsets[collations[enumColls[i]]])
		case tm.ColumnType[i] == gomysql.MYSQL_TYPE_YEAR:
			c.kind = colYear
		case tm.ColumnType[i] == gomysql.MYSQL_TYPE_JSON:
			c.kind = colJSON
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

// appendValue appends v's canonical text to buf (see design Part B: integers
// in decimal, DECIMAL exact, DATETIME/TIMESTAMP YYYY-MM-DD HH:MM:SS[.ffffff]
// with TIMESTAMP in UTC, ENUM as its label, strings as they are).
func appendValue(buf []byte, c *column, v any) ([]byte, cdc.Kind) {
	switch x := v.(type) {
	case nil:
		return buf, cdc.Null
	case string:
		if c.kind == colJSON {
			return appendMySQLJSON(buf, x), cdc.Text
		}
		return appendText(buf, c, x), cdc.Text
	case []byte:
		return appendText(buf, c, x), cdc.Text
	case int8:
		return appendInt(buf, c, int64(x)), cdc.Text
	case int16:
		return appendInt(buf, c, int64(x)), cdc.Text
	case int32:
		return appendInt(buf, c, int64(x)), cdc.Text
	case time.Time:
		return appendDatetime(buf, x.UTC(), c.dec), cdc.Text
	case int64:
		if c.umask != 0 {
			return appendInt(buf, c, x), cdc.Text
		}
		switch c.kind {
		case colEnum:
			// 0 is the empty string MySQL stores for an invalid value.
			if x >= 1 && int(x) <= len(c.labels) {
				return append(buf, c.labels[x-1]...), cdc.Text
			}
			if x == 0 {
				return buf, cdc.Text
			}
		case colSet:
			if c.labels != nil {
				first := true
				for i, l := range c.labels {
					if x&(1<<uint(i)) != 0 {
						if !first {
							buf = append(buf, ',')
						}
						buf = append(buf, l...)
						first = false
					}
				}
				return buf, cdc.Text
			}
		}
		return strconv.AppendInt(buf, x, 10), cdc.Text
	case uint8:
		return strconv.AppendUint(buf, uint64(x), 10), cdc.Text
	case uint16:
		return strconv.AppendUint(buf, uint64(x), 10), cdc.Text
	case uint32:
		return strconv.AppendUint(buf, uint64(x), 10), cdc.Text
	case uint64:
		return strconv.AppendUint(buf, x, 10), cdc.Text
	case int:
		if c.kind == colYear && x == 0 {
			return append(buf, "0000"...), cdc.Text
		}
		return strconv.AppendInt(buf, int64(x), 10), cdc.Text
	case float32:
		return appendFloat(buf, float64(x), floatDigits), cdc.Text
	case float64:
		return appendFloat(buf, x, -1), cdc.Text
	case *replication.JsonDiff:
		// A partial JSON update: the new document is not in the event.
		return buf, cdc.Absent
	case fmt.Stringer:
		return append(buf, x.String()...), cdc.Text
	default:
		return fmt.Append(buf, x), cdc.Text
	}
}

// appendInt appends an integer column's value, reading it as unsigned
// where the column is.
func appendInt(buf []byte, c *column, x int64) []byte {
	if c.umask != 0 {
		return strconv.AppendUint(buf, uint64(x)&c.umask, 10)
	}
	return strconv.AppendInt(buf, x, 10)
}

// appendDatetime appends t as YYYY-MM-DD HH:MM:SS with dec fractional
// digits (truncated, as the column stores no more).
func appendDatetime(buf []byte, t time.Time, dec int) []byte {
	year, month, day := t.Date()
	hour, minute, sec := t.Clock()
	buf = appendDigits(buf, year, 4)
	buf = append(buf, '-')
	buf = appendDigits(buf, int(month), 2)
	buf = append(buf, '-')
	buf = appendDigits(buf, day, 2)
	buf = append(buf, ' ')
	buf = appendDigits(buf, hour, 2)
	buf = append(buf, ':')
	buf = appendDigits(buf, minute, 2)
	buf = append(buf, ':')
	buf = appendDigits(buf, sec, 2)
	if dec > 0 {
		buf = append(buf, '.')
		buf = appendDigits(buf, t.Nanosecond()/pow10[9-dec], dec)
	}
	return buf
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
