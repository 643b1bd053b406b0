package postgres

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/rules"
)

// valueCase is one column of the canonical-values table: its type, the SQL
// literal written, the text the reader must deliver (exactly `col::text` in
// a session of the same role on the same database) and, when it differs
// from "v:"+want, the tag the rule `v:{col}` makes of it.
type valueCase struct {
	name, typ, literal, want, tag string
	minVersion                    int
}

// pgValueCases: every type a rule may read. The database's TimeZone is
// Asia/Kathmandu (+05:45): timestamptz is rendered in the session time zone
// of tagstream's role on that database, as `col::text` is.
var pgValueCases = []valueCase{
	{name: "int_min", typ: "int", literal: "-2147483648", want: "-2147483648"},
	{name: "smallint", typ: "smallint", literal: "32767", want: "32767"},
	{name: "bigint", typ: "bigint", literal: "9223372036854775807", want: "9223372036854775807"},
	{name: "numeric", typ: "numeric", literal: "-123456789012345678901234567890.000000000000000000001", want: "-123456789012345678901234567890.000000000000000000001"},
	{name: "numeric_scale", typ: "numeric(12,6)", literal: "1.5", want: "1.500000"},
	{name: "numeric_nan", typ: "numeric", literal: "'NaN'", want: "NaN"},
	{name: "numeric_inf", typ: "numeric", literal: "'-Infinity'", want: "-Infinity", minVersion: 140000},
	{name: "real", typ: "real", literal: "0.1", want: "0.1"},
	{name: "double", typ: "double precision", literal: "0.1", want: "0.1"},
	{name: "double_exp", typ: "double precision", literal: "1e300", want: "1e+300"},
	{name: "double_small", typ: "double precision", literal: "1.5e-7", want: "1.5e-07"},
	{name: "double_nan", typ: "double precision", literal: "'NaN'", want: "NaN"},
	{name: "double_inf", typ: "double precision", literal: "'Infinity'", want: "Infinity"},
	{name: "double_neg_zero", typ: "double precision", literal: "'-0'", want: "-0"},
	// pgoutput sends the output function's t/f; the text cast is true/false.
	{name: "bool_true", typ: "bool", literal: "true", want: "true"},
	{name: "bool_false", typ: "bool", literal: "false", want: "false"},
	{name: "bool_domain", typ: "flag", literal: "true", want: "true"},
	{name: "bool_array", typ: "bool[]", literal: "'{t,f}'", want: "{t,f}", tag: "v:{t%2Cf}"},
	{name: "text_unicode", typ: "text", literal: "'héllo wörld 日本 🎉'", want: "héllo wörld 日本 🎉", tag: "v:héllo%20wörld%20日本%20🎉"},
	{name: "text_encoded", typ: "text", literal: `E'%,*\t\n\r \x01\x7f\u00a0\u2028:/{}'`, want: "%,*\t\n\r \x01\x7f\u00a0\u2028:/{}",
		tag: "v:%25%2C%2A%09%0A%0D%20%01%7F%C2%A0%E2%80%A8:/{}"},
	{name: "text_empty", typ: "text", literal: "''", want: "", tag: "v:"},
	{name: "varchar", typ: "varchar(10)", literal: "'abc'", want: "abc"},
	// char(n) is padded on output; its text cast drops trailing spaces.
	{name: "char", typ: "char(5)", literal: "' a'", want: " a", tag: "v:%20a"},
	{name: "char_empty", typ: "char(3)", literal: "''", want: "", tag: "v:"},
	{name: "uuid", typ: "uuid", literal: "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", want: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
	{name: "date", typ: "date", literal: "'2024-02-29'", want: "2024-02-29"},
	{name: "date_bc", typ: "date", literal: "'0044-03-15 BC'", want: "0044-03-15 BC", tag: "v:0044-03-15%20BC"},
	{name: "date_inf", typ: "date", literal: "'infinity'", want: "infinity"},
	{name: "timestamp", typ: "timestamp(6)", literal: "'2024-01-02 03:04:05.123456'", want: "2024-01-02 03:04:05.123456", tag: "v:2024-01-02%2003:04:05.123456"},
	{name: "timestamp_0", typ: "timestamp", literal: "'2024-01-02 03:04:05'", want: "2024-01-02 03:04:05", tag: "v:2024-01-02%2003:04:05"},
	{name: "timestamptz", typ: "timestamptz", literal: "'2024-01-02 03:04:05.123456+02'", want: "2024-01-02 06:49:05.123456+05:45", tag: "v:2024-01-02%2006:49:05.123456+05:45"},
	{name: "time", typ: "time", literal: "'23:59:59.5'", want: "23:59:59.5"},
	{name: "timetz", typ: "timetz", literal: "'12:00:00+02'", want: "12:00:00+02"},
	{name: "interval", typ: "interval", literal: "'1 year 2 months 3 days 04:05:06.7'", want: "1 year 2 mons 3 days 04:05:06.7", tag: "v:1%20year%202%20mons%203%20days%2004:05:06.7"},
	{name: "interval_neg", typ: "interval", literal: "'-1 day -00:00:01'", want: "-1 days -00:00:01", tag: "v:-1%20days%20-00:00:01"},
	{name: "json", typ: "json", literal: `'{"b": 2,  "a": [1, "x,y"]}'`, want: `{"b": 2,  "a": [1, "x,y"]}`, tag: `v:{"b":%202%2C%20%20"a":%20[1%2C%20"x%2Cy"]}`},
	{name: "jsonb", typ: "jsonb", literal: `'{"b": 2, "a": [1, "é"]}'`, want: `{"a": [1, "é"], "b": 2}`, tag: `v:{"a":%20[1%2C%20"é"]%2C%20"b":%202}`},
	{name: "int_array", typ: "int[]", literal: "'{1,2,NULL}'", want: "{1,2,NULL}", tag: "v:{1%2C2%2CNULL}"},
	{name: "text_array", typ: "text[]", literal: `'{a,"b c","d,e",""}'`, want: `{a,"b c","d,e",""}`, tag: `v:{a%2C"b%20c"%2C"d%2Ce"%2C""}`},
	{name: "bytea", typ: "bytea", literal: `'\x00ff41'`, want: `\x00ff41`},
	{name: "enum", typ: "mood", literal: "'happy'", want: "happy"},
	{name: "domain", typ: "posint", literal: "42", want: "42"},
	// inet's output omits a host's netmask; its text cast keeps it.
	{name: "inet", typ: "inet", literal: "'192.168.0.1/24'", want: "192.168.0.1/24"},
	{name: "inet_host", typ: "inet", literal: "'192.168.0.1'", want: "192.168.0.1/32"},
	{name: "inet_host6", typ: "inet", literal: "'::1'", want: "::1/128"},
	{name: "cidr", typ: "cidr", literal: "'10.0.0.0/8'", want: "10.0.0.0/8"},
	{name: "range", typ: "int4range", literal: "'[1,10)'", want: "[1,10)", tag: "v:[1%2C10)"},
	{name: "money", typ: "money", literal: "1.5", want: "$1.50"},
}

// TestCanonicalValues writes one row holding every type a rule may read and
// asserts, per column, the exact text the reader delivers, that it equals
// `col::text` in a session of the same role on the same database, and the
// tag a rule makes of it. Run alone: go test ./cdc/postgres -run TestCanonicalValues
func TestCanonicalValues(t *testing.T) {
	t.Parallel()
	f := setupNoTimeZone(t)
	version := f.serverVersion()
	var cases []valueCase
	for _, c := range pgValueCases {
		if version >= c.minVersion {
			cases = append(cases, c)
		}
	}
	cols := make([]string, len(cases))
	lits := make([]string, len(cases))
	for i, c := range cases {
		cols[i] = "c_" + c.name + " " + c.typ
		lits[i] = c.literal
	}
	f.exec(`ALTER DATABASE `+quoteIdent(f.slot)+` SET timezone = 'Asia/Kathmandu'`,
		`CREATE TYPE mood AS ENUM ('sad', 'happy')`,
		`CREATE DOMAIN posint AS int CHECK (VALUE > 0)`,
		`CREATE DOMAIN bool_d AS bool`, `CREATE DOMAIN flag AS bool_d`, // a domain of a domain
		`CREATE TABLE vals (id int PRIMARY KEY, `+strings.Join(cols, ", ")+`)`)
	f.reconnect() // the database's TimeZone applies to new sessions

	e := compileRules(t, "rules:\n  - table: vals\n    tags: [\"v:{v}\"]\n")
	rec := newRecorder(t)
	var got []cdc.Value
	var table *cdc.Table
	rec.Render = func(c *cdc.Change) string {
		table = c.Table
		for _, v := range c.New {
			got = append(got, cdc.Value{Kind: v.Kind, Text: []byte(string(v.Text))})
		}
		return ""
	}
	f.startStreaming(f.config(), rec)
	f.exec(`INSERT INTO vals VALUES (1, ` + strings.Join(lits, ", ") + `)`)
	rec.WaitCommits(t, 1)

	for i, c := range cases {
		v := got[i+1]
		t.Run(c.name, func(t *testing.T) {
			if v.Kind != cdc.Text || string(v.Text) != c.want {
				t.Errorf("%s %s: reader delivered %q (kind %d), want %q", c.typ, c.literal, v.Text, v.Kind, c.want)
			}
			if s := f.queryString(`SELECT c_` + c.name + `::text FROM vals`); s != string(v.Text) {
				t.Errorf("col::text is %q, the reader delivered %q", s, v.Text)
			}
			// The tag of a column renamed to v for the rule.
			one := &cdc.Table{Schema: table.Schema, Name: "vals", Columns: []string{"v"}}
			tags := e.Eval(nil, &cdc.Change{Table: one, Op: cdc.Insert, New: []cdc.Value{v}})
			want := c.tag
			if want == "" {
				want = "v:" + c.want
			}
			if len(tags) != 1 || string(tags[0]) != want {
				t.Errorf("tag %q, want %q", tags, want)
			}
		})
	}
}

func compileRules(t *testing.T, yaml string) *rules.Engine {
	t.Helper()
	set, err := rules.Parse([]byte(yaml), "rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return rules.Compile(set, rules.Options{DefaultSchema: "public"})
}

// setupNoTimeZone is setup without the DSN's timezone=UTC: the database's
// own settings apply.
func setupNoTimeZone(t *testing.T) *fixture {
	t.Helper()
	f := setup(t)
	u, err := url.Parse(f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Del("timezone")
	u.RawQuery = q.Encode()
	f.dsn = u.String()
	f.reconnect()
	return f
}

// reconnect replaces the fixture's connection with a new session.
func (f *fixture) reconnect() {
	f.t.Helper()
	conn, err := pgx.Connect(context.Background(), f.dsn)
	if err != nil {
		f.t.Fatal(err)
	}
	old := f.conn
	f.conn = conn
	_ = old.Close(context.Background())
	f.t.Cleanup(func() { conn.Close(context.Background()) })
}

// TestToastAndGeneratedColumns: an unchanged TOAST value is unchanged for a
// columns filter and unknown (`*`) where its value is read without an old
// image; generated columns are not published, so they read as unknown.
func TestToastAndGeneratedColumns(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`CREATE TABLE docs (id int PRIMARY KEY, body text, n int, g int GENERATED ALWAYS AS (n * 2) STORED)`,
		`ALTER TABLE docs ALTER body SET STORAGE EXTERNAL`, // out of line, uncompressed
		`INSERT INTO docs (id, body, n) SELECT 1, string_agg(md5(i::text), ''), 1 FROM generate_series(1, 200) i`)
	rec := newRecorder(t)
	rec.Render = tagRenderer(t, `rules:
  - name: body-changed
    table: docs
    columns: [body]
    tags: ["doc:{id}"]
  - name: values
    table: docs
    tags: ["n:{n}", "g:{g}", "head:{new.body}"]
`, rules.Options{})
	f.startStreaming(f.config(), rec)
	f.exec(`UPDATE docs SET n = 2 WHERE id = 1`, // body unchanged ('u'), no old image
		`ALTER TABLE docs REPLICA IDENTITY FULL`,
		`UPDATE docs SET n = 3 WHERE id = 1`, // the old image carries the body
		`UPDATE docs SET body = 'short' WHERE id = 1`)
	assertLines(t, rec.WaitCommits(t, 3),
		[]string{"g:* head:* n:* n:2"},
		// The body is known through the old image: its tag is over 256
		// bytes, so the rule's wildcard form stands for it.
		[]string{"g:* head:* n:2 n:3"},
		[]string{"doc:1 g:* head:short n:3"},
	)
}
