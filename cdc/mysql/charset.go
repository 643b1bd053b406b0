package mysql

import (
	"unicode/utf8"

	"golang.org/x/text/encoding"
	"golang.org/x/text/encoding/charmap"
	"golang.org/x/text/encoding/japanese"
	"golang.org/x/text/encoding/korean"
	"golang.org/x/text/encoding/simplifiedchinese"
	"golang.org/x/text/encoding/traditionalchinese"
	"golang.org/x/text/encoding/unicode"
	"golang.org/x/text/encoding/unicode/utf32"
)

// charset turns a column's stored bytes into the UTF-8 text a utf8mb4
// client reads. A nil *charset is UTF-8 (or binary, or ASCII): the bytes as
// they are.
type charset struct {
	single *charmap.Charmap  // a single-byte character set
	latin1 bool              // MySQL's latin1: cp1252 whose five undefined bytes are the C1 controls
	multi  encoding.Encoding // a multi-byte character set
}

// charsets maps the server's character set names to their decoders. Those
// absent (utf8mb4, utf8mb3, ascii, binary and the rare ones without a
// decoder) pass as they are.
var charsets = map[string]*charset{
	"latin1":   {single: charmap.Windows1252, latin1: true},
	"latin2":   {single: charmap.ISO8859_2},
	"latin5":   {single: charmap.ISO8859_9},
	"latin7":   {single: charmap.ISO8859_13},
	"greek":    {single: charmap.ISO8859_7},
	"hebrew":   {single: charmap.ISO8859_8},
	"cp1250":   {single: charmap.Windows1250},
	"cp1251":   {single: charmap.Windows1251},
	"cp1256":   {single: charmap.Windows1256},
	"cp1257":   {single: charmap.Windows1257},
	"cp850":    {single: charmap.CodePage850},
	"cp852":    {single: charmap.CodePage852},
	"cp866":    {single: charmap.CodePage866},
	"koi8r":    {single: charmap.KOI8R},
	"koi8u":    {single: charmap.KOI8U},
	"macroman": {single: charmap.Macintosh},
	"tis620":   {single: charmap.Windows874},
	"sjis":     {multi: japanese.ShiftJIS},
	"cp932":    {multi: japanese.ShiftJIS},
	"ujis":     {multi: japanese.EUCJP},
	"eucjpms":  {multi: japanese.EUCJP},
	"euckr":    {multi: korean.EUCKR},
	"gbk":      {multi: simplifiedchinese.GBK},
	"gb2312":   {multi: simplifiedchinese.GBK},
	"gb18030":  {multi: simplifiedchinese.GB18030},
	"big5":     {multi: traditionalchinese.Big5},
	"ucs2":     {multi: unicode.UTF16(unicode.BigEndian, unicode.IgnoreBOM)},
	"utf16":    {multi: unicode.UTF16(unicode.BigEndian, unicode.IgnoreBOM)},
	"utf16le":  {multi: unicode.UTF16(unicode.LittleEndian, unicode.IgnoreBOM)},
	"utf32":    {multi: utf32.UTF32(utf32.BigEndian, utf32.IgnoreBOM)},
}

// appendUTF8 appends raw decoded to UTF-8. Bytes a multi-byte decoder
// rejects are kept as they are (the tag percent-encodes them).
func (cs *charset) appendUTF8(buf, raw []byte) []byte {
	if cs.single != nil {
		for _, b := range raw {
			r := cs.single.DecodeByte(b)
			if cs.latin1 && r == utf8.RuneError {
				r = rune(b)
			}
			buf = utf8.AppendRune(buf, r)
		}
		return buf
	}
	out, err := cs.multi.NewDecoder().Bytes(raw)
	if err != nil {
		return append(buf, raw...)
	}
	return append(buf, out...)
}

// text decodes a label (ENUM, SET) once, when the table is mapped.
func (cs *charset) text(raw []byte) string {
	if cs == nil {
		return string(raw)
	}
	return string(cs.appendUTF8(nil, raw))
}
