package mysql

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/tagstream/tagstream/cdc"
)

// Row images are decoded by the reader, on its own goroutine: go-mysql's
// parser only splits off the rows event's header (decodeRows), and the
// reader turns the columns its transaction reads (cdc.Projection) into
// canonical text straight into its arena, skipping the others by their
// size. go-mysql's own decoding boxes every value in an interface, formats
// temporal values with fmt or time.Time and allocates per row.

// rowsBody is what decodeRows leaves in RowsEvent.Rows: the row images,
// not decoded.
type rowsBody struct {
	data []byte // the event's body as go-mysql passed it
	pos  int    // where the row images start
}

// decodeRows is the syncer's RowsEventDecodeFunc. It runs on the syncer's
// goroutine and touches only the event.
func decodeRows(e *replication.RowsEvent, data []byte) error {
	pos, err := e.DecodeHeader(data)
	if err != nil {
		return err
	}
	e.Rows = [][]any{{&rowsBody{data: data, pos: pos}}}
	return nil
}

var errShortRow = errors.New("row image shorter than its columns")

// rowsOp maps a rows event type to its op; partial: MySQL's
// PARTIAL_UPDATE_ROWS_EVENT (JSON columns may hold a diff); compressed:
// MariaDB's compressed rows events.
func rowsOp(t replication.EventType) (op cdc.Op, partial, compressed bool) {
	switch t {
	case replication.WRITE_ROWS_EVENTv0, replication.WRITE_ROWS_EVENTv1, replication.WRITE_ROWS_EVENTv2:
		return cdc.Insert, false, false
	case replication.MARIADB_WRITE_ROWS_COMPRESSED_EVENT_V1:
		return cdc.Insert, false, true
	case replication.UPDATE_ROWS_EVENTv0, replication.UPDATE_ROWS_EVENTv1, replication.UPDATE_ROWS_EVENTv2:
		return cdc.Update, false, false
	case replication.MARIADB_UPDATE_ROWS_COMPRESSED_EVENT_V1:
		return cdc.Update, false, true
	case replication.PARTIAL_UPDATE_ROWS_EVENT:
		return cdc.Update, true, false
	case replication.DELETE_ROWS_EVENTv0, replication.DELETE_ROWS_EVENTv1, replication.DELETE_ROWS_EVENTv2:
		return cdc.Delete, false, false
	case replication.MARIADB_DELETE_ROWS_COMPRESSED_EVENT_V1:
		return cdc.Delete, false, true
	}
	return 0, false, false
}

// rowImages returns the event's row images, decompressed.
func rowImages(e *replication.RowsEvent, compressed bool) ([]byte, error) {
	if len(e.Rows) != 1 || len(e.Rows[0]) != 1 {
		return nil, errors.New("mysql: rows event not left undecoded")
	}
	body, ok := e.Rows[0][0].(*rowsBody)
	if !ok {
		return nil, errors.New("mysql: rows event not left undecoded")
	}
	if !compressed {
		return body.data[body.pos:], nil
	}
	out, err := gomysql.DecompressMariadbData(body.data[body.pos:])
	if err != nil {
		return nil, fmt.Errorf("mysql: compressed rows event: %w", err)
	}
	return out, nil
}

// jsonRows decodes the event with go-mysql, for the JSON columns (MySQL's
// binary JSON) a transaction reads: e.Rows then holds one []any per image.
func jsonRows(e *replication.RowsEvent) ([][]any, error) {
	body := e.Rows[0][0].(*rowsBody)
	if err := e.DecodeData(body.pos, body.data); err != nil {
		return nil, err
	}
	return e.Rows, nil
}

// rowDecoder decodes the row images of one rows event.
type rowDecoder struct {
	info    *tableInfo
	n       int    // columns in the event
	reads   []bool // columns to decode; nil: all
	partial bool   // PARTIAL_UPDATE_ROWS_EVENT
	json    [][]any
	images  int // images decoded so far (index into json)
}

func (d *rowDecoder) read(i int) bool { return d.reads == nil || (i < len(d.reads) && d.reads[i]) }

// readsJSON reports whether a JSON column is among those d decodes.
func (d *rowDecoder) readsJSON() bool {
	for i := range d.n {
		if d.info.cols[i].typ == gomysql.MYSQL_TYPE_JSON && d.read(i) {
			return true
		}
	}
	return false
}

// image decodes the row image at the start of data (with column bitmap
// bm) into *vals and arena; after: the after image of an update. It
// returns the values, the arena and the rest of data.
func (d *rowDecoder) image(vals *[]cdc.Value, arena []byte, bm, data []byte, after bool) ([]cdc.Value, []byte, []byte, error) {
	cols := d.info.cols
	if cap(*vals) < len(cols) {
		*vals = make([]cdc.Value, len(cols))
	}
	out := (*vals)[:len(cols)]
	var partial []byte // which JSON columns hold a diff
	if d.partial && after {
		var err error
		if partial, data, err = d.partialJSON(data); err != nil {
			return nil, arena, nil, err
		}
	}
	if len(bm) < (d.n+7)/8 {
		return nil, arena, nil, errShortRow
	}
	nb := (present(bm, d.n) + 7) / 8
	if len(data) < nb {
		return nil, arena, nil, errShortRow
	}
	nulls, data := data[:nb], data[nb:]
	var json []any
	if d.json != nil && d.images < len(d.json) {
		json = d.json[d.images]
	}
	d.images++
	ni, ji := 0, 0
	for i := range out {
		c := &cols[i]
		diff := false
		if c.typ == gomysql.MYSQL_TYPE_JSON && partial != nil {
			diff = bit(partial, ji)
			ji++
		}
		if i >= d.n || !bit(bm, i) {
			out[i] = cdc.Value{Kind: cdc.Absent} // not in the image (binlog_row_image)
			continue
		}
		null := bit(nulls, ni)
		ni++
		read := d.read(i)
		if null {
			out[i] = cdc.Value{Kind: cdc.Absent}
			if read {
				out[i].Kind = cdc.Null
			}
			continue
		}
		size, err := c.size(data)
		if err != nil {
			return nil, arena, nil, fmt.Errorf("column %s: %w", d.info.table.Columns[i], err)
		}
		v := data[:size]
		data = data[size:]
		if !read || diff { // a partial JSON update: the new document is not in the event
			out[i] = cdc.Value{Kind: cdc.Absent}
			continue
		}
		start := len(arena)
		var kind cdc.Kind
		if c.typ == gomysql.MYSQL_TYPE_JSON {
			if i >= len(json) {
				return nil, arena, nil, errors.New("JSON column not decoded")
			}
			arena, kind = appendJSON(arena, json[i])
		} else {
			arena, kind = c.appendValue(arena, v)
		}
		out[i] = cdc.Value{Kind: kind}
		if kind == cdc.Text {
			out[i].Text = arena[start:len(arena):len(arena)]
		}
	}
	return out, arena, data, nil
}

// partialJSON reads the head of an after image in a MySQL
// PARTIAL_UPDATE_ROWS_EVENT: binlog_row_value_options, then (with partial
// JSON updates on) a bitmap of the JSON columns that hold a diff.
func (d *rowDecoder) partialJSON(data []byte) (partial, rest []byte, err error) {
	opts, k, ok := lenenc(data)
	if !ok {
		return nil, nil, errShortRow
	}
	data = data[k:]
	if opts&1 == 0 { // no PARTIAL_JSON_UPDATES
		return nil, data, nil
	}
	nb := (d.info.jsonCols + 7) / 8
	if len(data) < nb {
		return nil, nil, errShortRow
	}
	return data[:nb], data[nb:], nil
}

// present counts the columns a row image carries.
func present(bm []byte, n int) int {
	c := 0
	for i := 0; i < n; i += 8 {
		b := bm[i>>3]
		if n-i < 8 {
			b &= byte(1<<(n-i)) - 1
		}
		c += bits.OnesCount8(b)
	}
	return c
}

func bit(bm []byte, i int) bool { return i>>3 < len(bm) && bm[i>>3]&(1<<(i&7)) != 0 }

// lenenc reads a length-encoded integer.
func lenenc(b []byte) (v uint64, n int, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	switch b[0] {
	case 0xfc:
		n = 3
	case 0xfd:
		n = 4
	case 0xfe:
		n = 9
	default:
		return uint64(b[0]), 1, true
	}
	if len(b) < n {
		return 0, 0, false
	}
	return gomysql.FixedLengthInt(b[1:n]), n, true
}

// setType records how column c's values are laid out in row images. tp
// and meta are the TABLE_MAP's; STRING columns carry their real type
// (ENUM, SET, CHAR/BINARY) and length in the metadata.
func (c *column) setType(tp byte, meta uint16) {
	c.typ, c.meta = tp, meta
	switch tp {
	case gomysql.MYSQL_TYPE_NULL:
	case gomysql.MYSQL_TYPE_TINY, gomysql.MYSQL_TYPE_YEAR:
		c.fixed = 1
	case gomysql.MYSQL_TYPE_SHORT:
		c.fixed = 2
	case gomysql.MYSQL_TYPE_INT24, gomysql.MYSQL_TYPE_DATE, gomysql.MYSQL_TYPE_TIME:
		c.fixed = 3
	case gomysql.MYSQL_TYPE_LONG, gomysql.MYSQL_TYPE_FLOAT, gomysql.MYSQL_TYPE_TIMESTAMP:
		c.fixed = 4
	case gomysql.MYSQL_TYPE_LONGLONG, gomysql.MYSQL_TYPE_DOUBLE, gomysql.MYSQL_TYPE_DATETIME:
		c.fixed = 8
	case gomysql.MYSQL_TYPE_TIMESTAMP2:
		c.fixed = 4 + int(meta+1)/2
	case gomysql.MYSQL_TYPE_DATETIME2:
		c.fixed = 5 + int(meta+1)/2
	case gomysql.MYSQL_TYPE_TIME2:
		c.fixed = 3 + int(meta+1)/2
	case gomysql.MYSQL_TYPE_NEWDECIMAL:
		prec, scale := int(meta>>8), int(meta&0xff)
		if scale > prec {
			c.unsupported = true
			break
		}
		c.fixed = decimalSize(prec, scale)
	case gomysql.MYSQL_TYPE_BIT:
		c.fixed = (int(meta>>8)*8 + int(meta&0xff) + 7) / 8
	case gomysql.MYSQL_TYPE_VARCHAR, gomysql.MYSQL_TYPE_VAR_STRING:
		c.prefix = 1
		if meta >= 256 {
			c.prefix = 2
		}
	case gomysql.MYSQL_TYPE_BLOB, gomysql.MYSQL_TYPE_GEOMETRY, gomysql.MYSQL_TYPE_VECTOR, gomysql.MYSQL_TYPE_JSON:
		if meta >= 1 && meta <= 4 {
			c.prefix = int(meta)
		} else {
			c.unsupported = true
		}
	case gomysql.MYSQL_TYPE_STRING:
		length := int(meta)
		if meta >= 256 {
			b0, b1 := byte(meta>>8), byte(meta)
			if b0&0x30 != 0x30 {
				length, c.typ = int(uint16(b1)|uint16((b0&0x30)^0x30)<<4), b0|0x30
			} else {
				length, c.typ = int(b1), b0
			}
		}
		switch c.typ {
		case gomysql.MYSQL_TYPE_ENUM:
			c.fixed = int(meta & 0xff)
			c.unsupported = c.fixed != 1 && c.fixed != 2
		case gomysql.MYSQL_TYPE_SET:
			c.fixed = int(meta & 0xff)
			c.unsupported = c.fixed < 1 || c.fixed > 8
		case gomysql.MYSQL_TYPE_STRING:
			c.prefix = 1
			if length >= 256 {
				c.prefix = 2
			}
		default:
			c.unsupported = true
		}
	default:
		c.unsupported = true
	}
	if c.typ == gomysql.MYSQL_TYPE_BIT {
		c.umask = math.MaxUint64 // the value is the number
	}
}

// size returns the byte size of the value at the start of data.
func (c *column) size(data []byte) (int, error) {
	if c.unsupported {
		return 0, fmt.Errorf("binlog type %d (metadata %#x) is not supported", c.typ, c.meta)
	}
	n := c.fixed
	if c.prefix > 0 {
		if len(data) < c.prefix {
			return 0, errShortRow
		}
		n = c.prefix + int(gomysql.FixedLengthInt(data[:c.prefix]))
	}
	if n > len(data) {
		return 0, errShortRow
	}
	return n, nil
}

// appendValue appends the canonical text of the value v (exactly its
// bytes in the row image) to buf: integers in decimal, DECIMAL exact,
// DATETIME/TIMESTAMP YYYY-MM-DD HH:MM:SS[.ffffff] (TIMESTAMP in UTC),
// ENUM as its label, strings in UTF-8 as they are; the server's own text.
func (c *column) appendValue(buf, v []byte) ([]byte, cdc.Kind) {
	switch c.typ {
	case gomysql.MYSQL_TYPE_NULL:
		return buf, cdc.Null
	case gomysql.MYSQL_TYPE_TINY, gomysql.MYSQL_TYPE_SHORT, gomysql.MYSQL_TYPE_INT24,
		gomysql.MYSQL_TYPE_LONG, gomysql.MYSQL_TYPE_LONGLONG:
		u := gomysql.FixedLengthInt(v)
		if c.umask != 0 {
			return strconv.AppendUint(buf, u, 10), cdc.Text
		}
		shift := 64 - 8*len(v) // sign-extend
		return strconv.AppendInt(buf, int64(u<<shift)>>shift, 10), cdc.Text
	case gomysql.MYSQL_TYPE_YEAR:
		if v[0] == 0 {
			return append(buf, "0000"...), cdc.Text
		}
		return strconv.AppendInt(buf, int64(v[0])+1900, 10), cdc.Text
	case gomysql.MYSQL_TYPE_FLOAT:
		return appendFloat(buf, float64(math.Float32frombits(binary.LittleEndian.Uint32(v))), floatDigits), cdc.Text
	case gomysql.MYSQL_TYPE_DOUBLE:
		return appendFloat(buf, math.Float64frombits(binary.LittleEndian.Uint64(v)), -1), cdc.Text
	case gomysql.MYSQL_TYPE_NEWDECIMAL:
		return appendDecimal(buf, v, int(c.meta>>8), int(c.meta&0xff)), cdc.Text
	case gomysql.MYSQL_TYPE_BIT:
		return strconv.AppendUint(buf, gomysql.BFixedLengthInt(v), 10), cdc.Text
	case gomysql.MYSQL_TYPE_ENUM:
		return c.appendEnum(buf, int64(gomysql.FixedLengthInt(v))), cdc.Text
	case gomysql.MYSQL_TYPE_SET:
		return c.appendSet(buf, int64(gomysql.FixedLengthInt(v))), cdc.Text
	case gomysql.MYSQL_TYPE_VARCHAR, gomysql.MYSQL_TYPE_VAR_STRING, gomysql.MYSQL_TYPE_STRING,
		gomysql.MYSQL_TYPE_BLOB, gomysql.MYSQL_TYPE_GEOMETRY, gomysql.MYSQL_TYPE_VECTOR:
		return appendText(buf, c, v[c.prefix:]), cdc.Text
	}
	return c.appendTemporal(buf, v), cdc.Text
}

// appendEnum appends an ENUM's label; 0 is the empty string MySQL stores
// for an invalid value.
func (c *column) appendEnum(buf []byte, x int64) []byte {
	switch {
	case c.kind != colEnum:
	case x >= 1 && int(x) <= len(c.labels):
		return append(buf, c.labels[x-1]...)
	case x == 0:
		return buf
	}
	return strconv.AppendInt(buf, x, 10)
}

// appendSet appends a SET's labels, comma-separated.
func (c *column) appendSet(buf []byte, x int64) []byte {
	if c.kind != colSet || c.labels == nil {
		return strconv.AppendInt(buf, x, 10)
	}
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
	return buf
}

// Offsets of MySQL's packed temporal formats (mysys/my_time.c).
const (
	datetimeIntOfs = 0x8000000000
	timeIntOfs     = 0x800000
	timeOfs        = 0x800000000000
)

// appendTemporal appends a DATE, TIME, DATETIME or TIMESTAMP value (the
// old formats and MySQL 5.6's with fractional seconds) as the server
// prints it: fields as stored (zero dates included), TIMESTAMP in UTC,
// as many fractional digits as the column declares.
func (c *column) appendTemporal(buf, v []byte) []byte {
	dec := 0
	if c.meta <= 6 {
		dec = int(c.meta)
	}
	switch c.typ {
	case gomysql.MYSQL_TYPE_DATE:
		x := int(gomysql.FixedLengthInt(v))
		return appendDate(buf, x/(16*32), x/32%16, x%32)
	case gomysql.MYSQL_TYPE_TIME:
		x := int(gomysql.FixedLengthInt(v))
		buf = appendPadded(buf, uint64(x/10000), 2)
		buf = append(buf, ':')
		buf = appendDigits(buf, x%10000/100, 2)
		buf = append(buf, ':')
		return appendDigits(buf, x%100, 2)
	case gomysql.MYSQL_TYPE_TIMESTAMP:
		return appendUnix(buf, int64(binary.LittleEndian.Uint32(v)), 0, 0)
	case gomysql.MYSQL_TYPE_TIMESTAMP2:
		return appendUnix(buf, int64(binary.BigEndian.Uint32(v)), fracMicros(v[4:], dec), dec)
	case gomysql.MYSQL_TYPE_DATETIME:
		x := binary.LittleEndian.Uint64(v)
		d, t := x/1000000, x%1000000
		return appendDatetime(buf, int(d/10000), int(d%10000/100), int(d%100), int(t/10000), int(t%10000/100), int(t%100), 0, 0)
	case gomysql.MYSQL_TYPE_DATETIME2:
		packed := int64(gomysql.BFixedLengthInt(v[:5])) - datetimeIntOfs
		if packed < 0 {
			packed = -packed
		}
		ymd, hms := packed>>17, packed%(1<<17)
		ym := ymd >> 5
		return appendDatetime(buf, int(ym/13), int(ym%13), int(ymd%(1<<5)),
			int(hms>>12), int((hms>>6)%(1<<6)), int(hms%(1<<6)), fracMicros(v[5:], dec), dec)
	case gomysql.MYSQL_TYPE_TIME2:
		return appendTime2(buf, v, dec)
	}
	return buf // unreachable: setType marks every other type unsupported
}

// fracMicros reads the fractional seconds of a temporal value with dec
// digits, in microseconds.
func fracMicros(v []byte, dec int) int {
	switch dec {
	case 1, 2:
		return int(v[0]) * 10000
	case 3, 4:
		return int(binary.BigEndian.Uint16(v)) * 100
	case 5, 6:
		return int(gomysql.BFixedLengthInt(v[:3]))
	}
	return 0
}

// appendTime2 appends a TIME in MySQL 5.6's format: [-]HH:MM:SS[.fff],
// hours up to 838. Negative values store their fraction in reverse order.
func appendTime2(buf, v []byte, dec int) []byte {
	var packed int64 // integer part << 24 | microseconds
	switch dec {
	case 1, 2, 3, 4:
		intPart := int64(gomysql.BFixedLengthInt(v[:3])) - timeIntOfs
		var frac, scale, wrap int64 = int64(v[3]), 10000, 0x100
		if dec > 2 {
			frac, scale, wrap = int64(binary.BigEndian.Uint16(v[3:5])), 100, 0x10000
		}
		if intPart < 0 && frac != 0 {
			intPart++
			frac -= wrap
		}
		packed = intPart<<24 + frac*scale
	case 5, 6:
		packed = int64(gomysql.BFixedLengthInt(v[:6])) - timeOfs
	default:
		packed = (int64(gomysql.BFixedLengthInt(v[:3])) - timeIntOfs) << 24
	}
	if packed < 0 {
		buf = append(buf, '-')
		packed = -packed
	}
	hms := packed >> 24
	buf = appendPadded(buf, uint64((hms>>12)%(1<<10)), 2)
	buf = append(buf, ':')
	buf = appendDigits(buf, int((hms>>6)%(1<<6)), 2)
	buf = append(buf, ':')
	buf = appendDigits(buf, int(hms%(1<<6)), 2)
	if dec > 0 {
		buf = append(buf, '.')
		buf = appendDigits(buf, int(packed%(1<<24))/pow10[6-dec], dec)
	}
	return buf
}

// appendUnix appends a TIMESTAMP, seconds since the epoch, in UTC; 0 is
// the zero date.
func appendUnix(buf []byte, sec int64, micros, dec int) []byte {
	if sec == 0 {
		return appendDatetime(buf, 0, 0, 0, 0, 0, 0, micros, dec)
	}
	days, rem := sec/86400, int(sec%86400)
	y, m, d := civil(days)
	return appendDatetime(buf, y, m, d, rem/3600, rem%3600/60, rem%60, micros, dec)
}

// civil converts days since 1970-01-01 (≥ 0) to a proleptic Gregorian date
// (Howard Hinnant's days_to_civil).
func civil(days int64) (year, month, day int) {
	z := days + 719468
	era := z / 146097
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	day = int(doy - (153*mp+2)/5 + 1)
	month = int(mp + 3)
	if mp >= 10 {
		month = int(mp - 9)
	}
	year = int(yoe + era*400)
	if month <= 2 {
		year++
	}
	return year, month, day
}

func appendDate(buf []byte, year, month, day int) []byte {
	buf = appendDigits(buf, year, 4)
	buf = append(buf, '-')
	buf = appendDigits(buf, month, 2)
	buf = append(buf, '-')
	return appendDigits(buf, day, 2)
}

// appendDatetime appends YYYY-MM-DD HH:MM:SS with dec fractional digits
// (truncated, as the column stores no more).
func appendDatetime(buf []byte, year, month, day, hour, minute, sec, micros, dec int) []byte {
	buf = appendDate(buf, year, month, day)
	buf = append(buf, ' ')
	buf = appendDigits(buf, hour, 2)
	buf = append(buf, ':')
	buf = appendDigits(buf, minute, 2)
	buf = append(buf, ':')
	buf = appendDigits(buf, sec, 2)
	if dec > 0 {
		buf = append(buf, '.')
		buf = appendDigits(buf, micros/pow10[6-dec], dec)
	}
	return buf
}

// appendPadded appends v zero-padded to at least width digits.
func appendPadded(buf []byte, v uint64, width int) []byte {
	var tmp [20]byte
	s := strconv.AppendUint(tmp[:0], v, 10)
	for i := len(s); i < width; i++ {
		buf = append(buf, '0')
	}
	return append(buf, s...)
}

// DECIMAL's binary format (strings/decimal.c): groups of 9 digits in 4
// bytes big-endian, a shorter leading (integer) and trailing (fraction)
// group, the sign in the top bit of the first byte, negative values with
// every bit inverted.
const decimalDigits = 9

var decimalBytes = [decimalDigits + 1]int{0, 1, 1, 2, 2, 3, 3, 4, 4, 4}

func decimalSize(prec, scale int) int {
	ip := prec - scale
	return ip/decimalDigits*4 + decimalBytes[ip%decimalDigits] + scale/decimalDigits*4 + decimalBytes[scale%decimalDigits]
}

// appendDecimal appends the DECIMAL(prec, scale) value v exactly, as the
// server prints it.
func appendDecimal(buf, v []byte, prec, scale int) []byte {
	ip := prec - scale
	var mask byte
	if v[0]&0x80 == 0 {
		mask = 0xff
		buf = append(buf, '-')
	}
	pos := 0
	group := func(size int) uint64 { // the next size bytes, sign bit cleared, inverted when negative
		var x uint64
		for k := range size {
			b := v[pos+k]
			if pos+k == 0 {
				b ^= 0x80
			}
			x = x<<8 | uint64(b^mask)
		}
		pos += size
		return x
	}
	leading := true
	if size := decimalBytes[ip%decimalDigits]; size > 0 {
		if x := group(size); x != 0 {
			leading = false
			buf = strconv.AppendUint(buf, x, 10)
		}
	}
	for range ip / decimalDigits {
		x := group(4)
		switch {
		case !leading:
			buf = appendPadded(buf, x, decimalDigits)
		case x != 0:
			leading = false
			buf = strconv.AppendUint(buf, x, 10)
		}
	}
	if leading {
		buf = append(buf, '0')
	}
	if scale == 0 {
		return buf
	}
	buf = append(buf, '.')
	for range scale / decimalDigits {
		buf = appendPadded(buf, group(4), decimalDigits)
	}
	if size := decimalBytes[scale%decimalDigits]; size > 0 {
		buf = appendPadded(buf, group(size), scale%decimalDigits)
	}
	return buf
}

// appendJSON appends a JSON column's value as go-mysql decoded it (MySQL's
// binary JSON rendered as MySQL text) with MySQL's spaces.
func appendJSON(buf []byte, v any) ([]byte, cdc.Kind) {
	switch x := v.(type) {
	case nil:
		return buf, cdc.Null
	case string:
		return appendMySQLJSON(buf, x), cdc.Text
	case []byte: // an empty document
		return append(buf, x...), cdc.Text
	}
	return buf, cdc.Absent // *replication.JsonDiff: the new document is not in the event
}
