package mysql_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/rules"
)

// valueCase is one column of the canonical-values table: its type, the SQL
// literal written (through a utf8mb4 session with time_zone '+05:00' and
// sql_mode ”), the text the reader must deliver, and the tag `v:{col}`
// makes of it. The reader's text is also compared with the server's own
// text of the column, read as a string through a utf8mb4 session with
// time_zone '+00:00': CAST(col AS CHAR), or serverExpr where the contract
// differs from it (BIT as a number) or a cast would change it (binary).
type valueCase struct {
	name, typ, literal, want string
	serverExpr               string
	tag                      string // the tag `v:{col}` when not "v:"+want
}

// mysqlValueCases: every type a rule may read.
var mysqlValueCases = []valueCase{
	{name: "tinyint", typ: "TINYINT", literal: "-128", want: "-128"},
	{name: "tinyint_u", typ: "TINYINT UNSIGNED", literal: "255", want: "255"},
	{name: "bool1", typ: "TINYINT(1)", literal: "true", want: "1"},
	{name: "bool0", typ: "BOOLEAN", literal: "false", want: "0"},
	{name: "smallint_u", typ: "SMALLINT UNSIGNED", literal: "65535", want: "65535"},
	{name: "mediumint", typ: "MEDIUMINT", literal: "-8388608", want: "-8388608"},
	{name: "mediumint_u", typ: "MEDIUMINT UNSIGNED", literal: "16777215", want: "16777215"},
	{name: "int_u", typ: "INT UNSIGNED", literal: "4294967295", want: "4294967295"},
	{name: "bigint_min", typ: "BIGINT", literal: "-9223372036854775808", want: "-9223372036854775808"},
	{name: "bigint_u", typ: "BIGINT UNSIGNED", literal: "18446744073709551615", want: "18446744073709551615"},
	{name: "decimal_65_30", typ: "DECIMAL(65,30)", literal: "-12345678901234567890123456789012345.123456789012345678901234567890",
		want: "-12345678901234567890123456789012345.123456789012345678901234567890"},
	{name: "decimal_65_0", typ: "DECIMAL(65,0)", literal: "99999999999999999999999999999999999999999999999999999999999999999",
		want: "99999999999999999999999999999999999999999999999999999999999999999"},
	{name: "decimal_frac", typ: "DECIMAL(5,5)", literal: "0.00001", want: "0.00001"},
	{name: "decimal_neg", typ: "DECIMAL(10,2)", literal: "-0.5", want: "-0.50"},
	{name: "decimal_zero", typ: "DECIMAL(10,2)", literal: "-0.00", want: "0.00"},
	{name: "decimal_int", typ: "DECIMAL(20,0)", literal: "-1", want: "-1"},
	{name: "float", typ: "FLOAT", literal: "1.5", want: "1.5"},
	{name: "float_tenth", typ: "FLOAT", literal: "0.1", want: "0.1"},
	{name: "double", typ: "DOUBLE", literal: "0.1", want: "0.1"},
	{name: "double_big", typ: "DOUBLE", literal: "1e20", want: "1e20"},
	{name: "double_int", typ: "DOUBLE", literal: "42", want: "42"},
	{name: "double_max", typ: "DOUBLE", literal: "-1.7976931348623157e308", want: "-1.7976931348623157e308"},
	{name: "double_small", typ: "DOUBLE", literal: "1.5e-7", want: "0.00000015"},
	{name: "double_1e_15", typ: "DOUBLE", literal: "1.5e-15", want: "0.0000000000000015"},
	{name: "double_1e_16", typ: "DOUBLE", literal: "1.5e-16", want: "1.5e-16"},
	{name: "double_1e15", typ: "DOUBLE", literal: "1e15", want: "1e15"},
	{name: "double_1e14", typ: "DOUBLE", literal: "1e14", want: "100000000000000"},
	{name: "double_17", typ: "DOUBLE", literal: "123456789012345678", want: "1.2345678901234568e17"},
	{name: "double_frac", typ: "DOUBLE", literal: "-1234567890123456.7", want: "-1234567890123456.8"},
	{name: "float_6", typ: "FLOAT", literal: "123456789", want: "123457000"},
	{name: "float_max", typ: "FLOAT", literal: "3.4e38", want: "3.4e38"},
	{name: "float_small", typ: "FLOAT", literal: "1.17549435e-38", want: "1.17549e-38"},
	{name: "float_neg", typ: "FLOAT", literal: "-0.000123456789", want: "-0.000123457"},
	{name: "date", typ: "DATE", literal: "'2024-02-29'", want: "2024-02-29"},
	{name: "date_zero", typ: "DATE", literal: "'0000-00-00'", want: "0000-00-00"},
	{name: "datetime6", typ: "DATETIME(6)", literal: "'2024-02-29 23:59:58.123456'", want: "2024-02-29 23:59:58.123456", tag: "v:2024-02-29%2023:59:58.123456"},
	{name: "datetime3", typ: "DATETIME(3)", literal: "'1000-01-01 00:00:00.5'", want: "1000-01-01 00:00:00.500", tag: "v:1000-01-01%2000:00:00.500"},
	{name: "datetime0", typ: "DATETIME", literal: "'9999-12-31 23:59:59'", want: "9999-12-31 23:59:59", tag: "v:9999-12-31%2023:59:59"},
	{name: "datetime_zero", typ: "DATETIME", literal: "'0000-00-00 00:00:00'", want: "0000-00-00 00:00:00", tag: "v:0000-00-00%2000:00:00"},
	{name: "timestamp_utc", typ: "TIMESTAMP(6) NULL", literal: "'2024-01-02 03:04:05.000001'", want: "2024-01-01 22:04:05.000001", tag: "v:2024-01-01%2022:04:05.000001"},
	{name: "timestamp_dst", typ: "TIMESTAMP NULL", literal: "'2038-01-19 08:14:07'", want: "2038-01-19 03:14:07", tag: "v:2038-01-19%2003:14:07"},
	{name: "timestamp_zero", typ: "TIMESTAMP NULL", literal: "'0000-00-00 00:00:00'", want: "0000-00-00 00:00:00", tag: "v:0000-00-00%2000:00:00"},
	{name: "time_neg", typ: "TIME", literal: "'-838:59:59'", want: "-838:59:59"},
	{name: "time6", typ: "TIME(6)", literal: "'-12:30:01.5'", want: "-12:30:01.500000"},
	{name: "time0", typ: "TIME", literal: "'00:00:00'", want: "00:00:00"},
	{name: "year", typ: "YEAR", literal: "2024", want: "2024"},
	{name: "year_zero", typ: "YEAR", literal: "0", want: "0000"},
	{name: "year_1901", typ: "YEAR", literal: "1901", want: "1901"},
	// BIT prints as binary bytes; its value is the number (as c+0 prints it).
	{name: "bit1", typ: "BIT(1)", literal: "b'1'", want: "1", serverExpr: "CAST(c_bit1+0 AS CHAR)"},
	{name: "bit8", typ: "BIT(8)", literal: "b'10101'", want: "21", serverExpr: "CAST(c_bit8+0 AS CHAR)"},
	{name: "bit64", typ: "BIT(64)", literal: "18446744073709551615", want: "18446744073709551615", serverExpr: "CAST(c_bit64+0 AS CHAR)"},
	{name: "set", typ: "SET('a','b','c')", literal: "'c,a'", want: "a,c", tag: "v:a%2Cc"},
	{name: "set_empty", typ: "SET('a','b')", literal: "''", want: "", tag: "v:"},
	{name: "enum", typ: "ENUM('x','y z')", literal: "'y z'", want: "y z", tag: "v:y%20z"},
	{name: "enum_invalid", typ: "ENUM('x','y')", literal: "'nope'", want: "", tag: "v:"},
	{name: "json", typ: "JSON", literal: `'{"a": [1, "x,y"],"b":null}'`, want: `{"a": [1, "x,y"],"b":null}`, tag: `v:{"a":%20[1%2C%20"x%2Cy"]%2C"b":null}`},
	{name: "blob", typ: "BLOB", literal: "x'00ff41'", want: "\x00\xffA", tag: "v:%00%FFA", serverExpr: "c_blob"},
	{name: "varbinary", typ: "VARBINARY(8)", literal: "x'616263'", want: "abc", serverExpr: "c_varbinary"},
	// BINARY(n) holds its trailing zero bytes; the binlog drops them.
	{name: "binary", typ: "BINARY(4)", literal: "'ab'", want: "ab\x00\x00", tag: "v:ab%00%00", serverExpr: "c_binary"},
	{name: "binary_full", typ: "BINARY(2)", literal: "x'0000'", want: "\x00\x00", tag: "v:%00%00", serverExpr: "c_binary_full"},
	{name: "char", typ: "CHAR(4)", literal: "'ab'", want: "ab"},
	{name: "varchar_special", typ: "VARCHAR(20)", literal: "'%,* \\t\\n:'", want: "%,* \t\n:", tag: "v:%25%2C%2A%20%09%0A:"},
	{name: "utf8mb4", typ: "VARCHAR(20) CHARACTER SET utf8mb4", literal: "'日本🎉é'", want: "日本🎉é"},
	{name: "utf8mb4_text", typ: "TEXT CHARACTER SET utf8mb4", literal: "'ünï'", want: "ünï"},
	{name: "utf8mb3", typ: "VARCHAR(20) CHARACTER SET utf8mb3", literal: "'日本é'", want: "日本é"},
	{name: "latin1", typ: "VARCHAR(20) CHARACTER SET latin1", literal: "'café €'", want: "café €", tag: "v:café%20€"},
	{name: "latin1_char", typ: "CHAR(5) CHARACTER SET latin1", literal: "'ñ'", want: "ñ"},
	{name: "latin1_text", typ: "TEXT CHARACTER SET latin1", literal: "'Größe'", want: "Größe"},
	{name: "latin1_enum", typ: "ENUM('é','ü') CHARACTER SET latin1", literal: "'ü'", want: "ü"},
	{name: "latin1_set", typ: "SET('à','ç') CHARACTER SET latin1", literal: "'à,ç'", want: "à,ç", tag: "v:à%2Cç"},
	{name: "latin1_c1", typ: "VARCHAR(5) CHARACTER SET latin1", literal: "x'81'", want: "\u0081", tag: "v:%C2%81"},
	{name: "ascii", typ: "VARCHAR(5) CHARACTER SET ascii", literal: "'abc'", want: "abc"},
	{name: "latin2", typ: "VARCHAR(10) CHARACTER SET latin2", literal: "'łódź'", want: "łódź"},
	{name: "cp1251", typ: "VARCHAR(10) CHARACTER SET cp1251", literal: "'Привет'", want: "Привет"},
	{name: "koi8r", typ: "VARCHAR(10) CHARACTER SET koi8r", literal: "'мир'", want: "мир"},
	{name: "sjis", typ: "VARCHAR(10) CHARACTER SET sjis", literal: "'日本語'", want: "日本語"},
	{name: "gbk", typ: "VARCHAR(10) CHARACTER SET gbk", literal: "'中文'", want: "中文"},
	{name: "utf16", typ: "VARCHAR(10) CHARACTER SET utf16", literal: "'ü🎉'", want: "ü🎉"},
	{name: "ucs2_text", typ: "TEXT CHARACTER SET ucs2", literal: "'ñ'", want: "ñ"},
}

// TestCanonicalValues writes one row holding every type a rule may read and
// asserts, per column, the exact text the reader delivers, that it is the
// server's own text of the column (where the contract does not say
// otherwise), and the tag `v:{col}` makes of it. Run alone:
// go test ./cdc/mysql -run TestCanonicalValues
func TestCanonicalValues(t *testing.T) {
	e := setup(t)
	cols := make([]string, len(mysqlValueCases))
	lits := make([]string, len(mysqlValueCases))
	for i, c := range mysqlValueCases {
		cols[i] = "c_" + c.name + " " + c.typ
		lits[i] = c.literal
	}
	e.exec("SET NAMES utf8mb4") // the labels of ENUM and SET are text too
	e.exec("CREATE TABLE vals (id INT PRIMARY KEY, " + strings.Join(cols, ", ") + ") DEFAULT CHARSET utf8mb4")
	rec := newRecorder(t, e.schema)
	var got []cdc.Value
	rec.Render = func(c *cdc.Change) string {
		for _, v := range c.New {
			got = append(got, cdc.Value{Kind: v.Kind, Text: []byte(string(v.Text))})
		}
		return ""
	}
	e.start(rec)
	e.exec("SET time_zone = '+05:00', sql_mode = ''",
		"INSERT INTO vals VALUES (1, "+strings.Join(lits, ", ")+")")
	rec.Lines(t, 1)

	e.exec("SET time_zone = '+00:00'")
	set, err := rules.Parse([]byte("rules:\n  - table: vals\n    tags: [\"v:{v}\"]\n"), "rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	engine := rules.Compile(set, rules.Options{DefaultSchema: e.schema})
	for i, c := range mysqlValueCases {
		v := got[i+1]
		t.Run(c.name, func(t *testing.T) {
			if v.Kind != cdc.Text || string(v.Text) != c.want {
				t.Errorf("%s %s: reader delivered %q (kind %d), want %q", c.typ, c.literal, v.Text, v.Kind, c.want)
			}
			expr := c.serverExpr
			if expr == "" {
				expr = "CAST(c_" + c.name + " AS CHAR)"
			}
			r, err := e.conn.Execute("SELECT " + expr + " FROM vals")
			if err != nil {
				t.Fatal(err)
			}
			s, _ := r.GetString(0, 0)
			if s != string(v.Text) {
				t.Errorf("the server prints %q, the reader delivered %q", s, v.Text)
			}
			r.Close()
			one := &cdc.Table{Schema: e.schema, Name: "vals", Columns: []string{"v"}}
			tags := engine.Eval(nil, &cdc.Change{Table: one, Op: cdc.Insert, New: []cdc.Value{v}})
			want := c.tag
			if want == "" {
				want = "v:" + c.want
			}
			if len(tags) != 1 || string(tags[0]) != want {
				t.Errorf("tag %q, want %q", fmt.Sprint(tags), want)
			}
		})
	}
}
