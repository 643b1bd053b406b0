package postgres

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/cdc"
)

// checkedTable is a table in the database that a requirement matched.
type checkedTable struct {
	oid       uint32
	name      qualifiedName
	replIdent byte // 'd' default, 'f' full, 'i' index, 'n' nothing
	hasPK     bool
	columns   map[string]bool
	keyCols   map[string]bool // the columns old rows carry under REPLICA IDENTITY DEFAULT / USING INDEX
}

// Check verifies the rules' requirements against the live database for
// `tagstream check --db`: wal_level and the role's privileges, that every
// table and column exists, that the replica identity gives rules that read
// old values what they need, and that an existing publication covers the
// tables. Every finding carries the SQL that fixes it where there is one.
// The error is for failures to check at all (connection, queries).
func Check(ctx context.Context, cfg Config, reqs []cdc.Requirement) ([]cdc.Finding, error) {
	r, err := New(cfg)
	if err != nil {
		return nil, err
	}
	conn, err := r.connectSQL(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()

	var findings []cdc.Finding
	add := func(sev cdc.Severity, rule, msg, fix string) {
		findings = append(findings, cdc.Finding{Severity: sev, Rule: rule, Message: msg, Fix: fix})
	}

	si, err := queryServerInfo(ctx, conn)
	if err != nil {
		return nil, err
	}
	if si.walLevel != "logical" {
		add(cdc.Error, "", fmt.Sprintf("wal_level is %q; logical replication needs \"logical\"", si.walLevel),
			"ALTER SYSTEM SET wal_level = logical; -- then restart PostgreSQL")
	}
	if !si.superuser && !si.replication {
		add(cdc.Error, "", fmt.Sprintf("role %q may not stream changes (no REPLICATION attribute)", si.role),
			fmt.Sprintf("ALTER ROLE %s WITH REPLICATION;", quoteIdent(si.role)))
	}
	var maxSlots, maxSenders int
	if err := conn.QueryRow(ctx, `SELECT current_setting('max_replication_slots')::int, current_setting('max_wal_senders')::int`).Scan(&maxSlots, &maxSenders); err != nil {
		return nil, fmt.Errorf("postgres: check: %w", err)
	}
	if maxSlots == 0 {
		add(cdc.Error, "", "max_replication_slots is 0", "ALTER SYSTEM SET max_replication_slots = 10; -- then restart PostgreSQL")
	}
	if maxSenders == 0 {
		add(cdc.Error, "", "max_wal_senders is 0", "ALTER SYSTEM SET max_wal_senders = 10; -- then restart PostgreSQL")
	}
	slot, err := querySlot(ctx, conn, r.cfg.Slot)
	if err != nil {
		return nil, err
	}
	if slot.exists && slot.lost() {
		add(cdc.Warning, "", fmt.Sprintf("replication slot %q was invalidated (wal_status %q): tagstream will recreate it and reset its clients", r.cfg.Slot, slot.walStatus),
			fmt.Sprintf("SELECT pg_drop_replication_slot(%s);", quoteLiteral(r.cfg.Slot)))
	} else if slot.exists && (slot.plugin != "pgoutput" || slot.slotType != "logical") {
		add(cdc.Error, "", fmt.Sprintf("replication slot %q exists but is not a logical pgoutput slot", r.cfg.Slot),
			fmt.Sprintf("SELECT pg_drop_replication_slot(%s);", quoteLiteral(r.cfg.Slot)))
	}

	// The publication, when it exists: does it cover the tables?
	var pubExists, pubAll bool
	pubTables := map[qualifiedName]bool{}
	err = conn.QueryRow(ctx, `SELECT puballtables FROM pg_publication WHERE pubname = $1`, r.cfg.Publication).Scan(&pubAll)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("postgres: check: read publication: %w", err)
	default:
		pubExists = true
		if !pubAll {
			rows, err := conn.Query(ctx, `SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1`, r.cfg.Publication)
			if err != nil {
				return nil, fmt.Errorf("postgres: check: read publication tables: %w", err)
			}
			for rows.Next() {
				var q qualifiedName
				if err := rows.Scan(&q.Schema, &q.Name); err != nil {
					rows.Close()
					return nil, fmt.Errorf("postgres: check: %w", err)
				}
				pubTables[q] = true
			}
			if err := rows.Err(); err != nil {
				return nil, fmt.Errorf("postgres: check: %w", err)
			}
		}
	}

	for _, req := range reqs {
		tables, err := matchTables(ctx, conn, req.Schema, req.Table)
		if err != nil {
			return nil, err
		}
		pattern := strings.Contains(req.Schema+req.Table, "*")
		if len(tables) == 0 {
			if pattern {
				add(cdc.Warning, req.Rule, fmt.Sprintf("no table matches %s.%s", req.Schema, req.Table), "")
			} else {
				add(cdc.Error, req.Rule, fmt.Sprintf("table %s.%s does not exist", req.Schema, req.Table), "")
			}
			continue
		}
		for _, t := range tables {
			for _, col := range req.Columns {
				if !t.columns[col] {
					sev := cdc.Error
					if pattern {
						sev = cdc.Warning // the rule still applies to the tables that have it
					}
					add(sev, req.Rule, fmt.Sprintf("column %q does not exist in table %s", col, t.name), "")
				}
			}
			fullFix := fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL;", t.name.sql())
			switch {
			case t.replIdent == 'n' || (t.replIdent == 'd' && !t.hasPK):
				add(cdc.Error, req.Rule, fmt.Sprintf("table %s has no replica identity: once published, UPDATE and DELETE on it fail", t.name), fullFix)
			case req.NeedsOld && t.replIdent != 'f':
				// Old rows carry the key: precise when the rule reads nothing else.
				var nonKey []string
				for _, col := range req.Columns {
					if t.columns[col] && !t.keyCols[col] {
						nonKey = append(nonKey, col)
					}
				}
				if len(nonKey) > 0 {
					add(cdc.Warning, req.Rule, fmt.Sprintf("the rule reads old values of %s but table %s sends only its key in old rows (REPLICA IDENTITY %s): unknown old values become wildcards", strings.Join(nonKey, ", "), t.name, replIdentName(t.replIdent)), fullFix)
				}
			}
			if pubExists && !pubAll && !pubTables[t.name] {
				add(cdc.Error, req.Rule, fmt.Sprintf("publication %q does not include table %s", r.cfg.Publication, t.name),
					fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s;", quoteIdent(r.cfg.Publication), t.name.sql()))
			}
		}
	}
	return dedupFindings(findings), nil
}

func replIdentName(b byte) string {
	switch b {
	case 'd':
		return "DEFAULT"
	case 'f':
		return "FULL"
	case 'i':
		return "USING INDEX"
	case 'n':
		return "NOTHING"
	}
	return string(b)
}

// likePattern turns a `*` pattern into a LIKE pattern (escaping LIKE's own
// wildcards).
func likePattern(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`, `*`, `%`)
	return r.Replace(p)
}

// matchTables returns the ordinary and partitioned tables that match the
// schema and table patterns, with their columns and replica identity.
func matchTables(ctx context.Context, conn *pgx.Conn, schema, table string) ([]*checkedTable, error) {
	if schema == "" {
		schema = "public"
	}
	rows, err := conn.Query(ctx, `SELECT c.oid, n.nspname, c.relname, c.relreplident::text,
			EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
			coalesce((SELECT array_agg(ka.attname::text) FROM pg_index i
				JOIN pg_attribute ka ON ka.attrelid = i.indrelid AND ka.attnum = ANY(i.indkey)
				WHERE i.indrelid = c.oid AND CASE c.relreplident WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END), '{}'),
			coalesce(array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped), '{}')
		FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN pg_attribute a ON a.attrelid = c.oid
		WHERE c.relkind IN ('r', 'p') AND n.nspname LIKE $1 AND c.relname LIKE $2
		  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'
		GROUP BY c.oid, n.nspname, c.relname, c.relreplident
		ORDER BY n.nspname, c.relname`, likePattern(schema), likePattern(table))
	if err != nil {
		return nil, fmt.Errorf("postgres: check: list tables: %w", err)
	}
	defer rows.Close()
	var out []*checkedTable
	for rows.Next() {
		t := &checkedTable{columns: map[string]bool{}, keyCols: map[string]bool{}}
		var ident string
		var cols, keys []string
		if err := rows.Scan(&t.oid, &t.name.Schema, &t.name.Name, &ident, &t.hasPK, &keys, &cols); err != nil {
			return nil, fmt.Errorf("postgres: check: list tables: %w", err)
		}
		if ident != "" {
			t.replIdent = ident[0]
		}
		for _, c := range cols {
			t.columns[c] = true
		}
		for _, c := range keys {
			t.keyCols[c] = true
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: check: list tables: %w", err)
	}
	return out, nil
}

// dedupFindings drops repeated findings (two rules on one table yield one
// database-wide fix once per rule, but the same rule may match a table
// twice through overlapping requirements) and orders errors first.
func dedupFindings(in []cdc.Finding) []cdc.Finding {
	seen := map[cdc.Finding]bool{}
	out := in[:0]
	for _, f := range in {
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Severity > out[j].Severity })
	return out
}
