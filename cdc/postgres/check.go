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
	oid         uint32
	name        qualifiedName
	partitioned bool // relkind 'p': its rows live in its leaf partitions
	replIdent   byte // 'd' default, 'f' full, 'i' index, 'n' nothing
	hasPK       bool
	columns     map[string]bool
	generated   map[string]bool // generated columns: pgoutput does not publish them
	keyCols     map[string]bool // the columns old rows carry under REPLICA IDENTITY DEFAULT / USING INDEX
}

// Check verifies the rules' requirements against the live database for
// `tagstream check --db` (and `run` at startup): wal_level and the role's
// privileges, max_slot_wal_keep_size, that every table and column exists
// and is published, and that the replica identity gives rules that read old
// values what they need. A partitioned table is checked through its leaf
// partitions, which hold its rows and log their old rows by their own
// replica identity. Every finding carries the SQL that fixes it where there
// is one. The error is for failures to check at all (connection, queries).
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

	c := &checker{conn: conn, cfg: r.cfg}
	if err := c.server(ctx); err != nil {
		return nil, err
	}
	for _, req := range reqs {
		if err := c.requirement(ctx, req); err != nil {
			return nil, err
		}
	}
	return dedupFindings(c.findings), nil
}

// checker collects the findings of one Check.
type checker struct {
	conn     *pgx.Conn
	cfg      Config
	findings []cdc.Finding

	pubExists, pubAll bool // the publication exists; it is FOR ALL TABLES
}

func (c *checker) add(sev cdc.Severity, rule, msg, fix string) {
	c.findings = append(c.findings, cdc.Finding{Severity: sev, Rule: rule, Message: msg, Fix: fix})
}

// server checks what does not depend on the rules: settings, the role, the
// slot and whether the publication exists.
func (c *checker) server(ctx context.Context) error {
	si, err := queryServerInfo(ctx, c.conn)
	if err != nil {
		return err
	}
	if si.walLevel != "logical" {
		c.add(cdc.Error, "", fmt.Sprintf("wal_level is %q; logical replication needs \"logical\"", si.walLevel),
			"ALTER SYSTEM SET wal_level = logical; -- then restart PostgreSQL")
	}
	if !si.superuser && !si.replication {
		c.add(cdc.Error, "", fmt.Sprintf("role %q may not stream changes (no REPLICATION attribute)", si.role),
			fmt.Sprintf("ALTER ROLE %s WITH REPLICATION;", quoteIdent(si.role)))
	}
	if err := c.settings(ctx, si.version); err != nil {
		return err
	}
	slot, err := querySlot(ctx, c.conn, c.cfg.Slot)
	if err != nil {
		return err
	}
	if slot.exists && slot.lost() {
		c.add(cdc.Warning, "", fmt.Sprintf("replication slot %q was invalidated (wal_status %q): tagstream will recreate it and reset its clients", c.cfg.Slot, slot.walStatus),
			fmt.Sprintf("SELECT pg_drop_replication_slot(%s);", quoteLiteral(c.cfg.Slot)))
	} else if slot.exists && (slot.plugin != "pgoutput" || slot.slotType != "logical") {
		c.add(cdc.Error, "", fmt.Sprintf("replication slot %q exists but is not a logical pgoutput slot", c.cfg.Slot),
			fmt.Sprintf("SELECT pg_drop_replication_slot(%s);", quoteLiteral(c.cfg.Slot)))
	}

	// The publication, when it exists: does it cover the tables?
	err = c.conn.QueryRow(ctx, `SELECT puballtables FROM pg_publication WHERE pubname = $1`, c.cfg.Publication).Scan(&c.pubAll)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return fmt.Errorf("postgres: check: read publication: %w", err)
	default:
		c.pubExists = true
	}
	return nil
}

// settings checks the replication slots and senders, and the WAL a slot may
// keep.
func (c *checker) settings(ctx context.Context, version int) error {
	var maxSlots, maxSenders int
	if err := c.conn.QueryRow(ctx, `SELECT current_setting('max_replication_slots')::int, current_setting('max_wal_senders')::int`).Scan(&maxSlots, &maxSenders); err != nil {
		return fmt.Errorf("postgres: check: %w", err)
	}
	if maxSlots == 0 {
		c.add(cdc.Error, "", "max_replication_slots is 0", "ALTER SYSTEM SET max_replication_slots = 10; -- then restart PostgreSQL")
	}
	if maxSenders == 0 {
		c.add(cdc.Error, "", "max_wal_senders is 0", "ALTER SYSTEM SET max_wal_senders = 10; -- then restart PostgreSQL")
	}
	if version >= 130000 {
		var keep string
		if err := c.conn.QueryRow(ctx, `SELECT current_setting('max_slot_wal_keep_size')`).Scan(&keep); err != nil {
			return fmt.Errorf("postgres: check: %w", err)
		}
		if keep == "-1" {
			c.add(cdc.Warning, "", "max_slot_wal_keep_size is -1 (unlimited): while tagstream is stopped or stuck, its slot keeps WAL until the disk is full",
				"ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf(); -- size it to what the disk can spare; if the slot loses WAL, tagstream resets its clients and continues")
		}
	}
	return nil
}

// requirement checks one rule's tables: they exist, have the columns, log
// the old rows the rule reads and are published.
func (c *checker) requirement(ctx context.Context, req cdc.Requirement) error {
	tables, err := queryTables(ctx, c.conn, `n.nspname LIKE $1 AND c.relname LIKE $2
			AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'`,
		likePattern(defaultSchema(req.Schema)), likePattern(req.Table))
	if err != nil {
		return err
	}
	pattern := strings.Contains(req.Schema+req.Table, "*")
	if len(tables) == 0 {
		if pattern {
			c.add(cdc.Warning, req.Rule, fmt.Sprintf("no table matches %s.%s", req.Schema, req.Table), "")
		} else {
			c.add(cdc.Error, req.Rule, fmt.Sprintf("table %s.%s does not exist", req.Schema, req.Table), "")
		}
		return nil
	}
	for _, t := range tables {
		checkColumns(c.add, req, t, pattern)
		leaves := []*checkedTable{t}
		if t.partitioned {
			if leaves, err = queryTables(ctx, c.conn, partitionLeavesSQL, t.oid); err != nil {
				return err
			}
		}
		for _, l := range leaves {
			c.findings = append(c.findings, identityFindings(req, l)...)
		}
		if c.pubExists && !c.pubAll {
			f, err := publicationFinding(ctx, c.conn, c.cfg.Publication, req.Rule, t)
			if err != nil {
				return err
			}
			if f != nil {
				c.findings = append(c.findings, *f)
			}
		}
	}
	return nil
}

func defaultSchema(s string) string {
	if s == "" {
		return "public"
	}
	return s
}

// checkColumns reports the columns a rule reads that t lacks, and those it
// has but does not publish (generated columns).
func checkColumns(add func(sev cdc.Severity, rule, msg, fix string), req cdc.Requirement, t *checkedTable, pattern bool) {
	for _, col := range req.Columns {
		switch {
		case !t.columns[col]:
			sev := cdc.Error
			if pattern {
				sev = cdc.Warning // the rule still applies to the tables that have it
			}
			add(sev, req.Rule, fmt.Sprintf("column %q does not exist in table %s", col, t.name), "")
		case t.generated[col]:
			add(cdc.Warning, req.Rule, fmt.Sprintf("column %q of table %s is generated: logical replication does not publish generated columns, so the rule reads it as unknown (`*`)", col, t.name), "")
		}
	}
}

// identityFindings checks that table t (a leaf: it holds rows) has a
// replica identity, and one that gives a rule reading old values what it
// reads.
func identityFindings(req cdc.Requirement, t *checkedTable) []cdc.Finding {
	fix := fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL;", t.name.sql())
	switch {
	case t.replIdent == 'n' || (t.replIdent == 'd' && !t.hasPK):
		return []cdc.Finding{{Severity: cdc.Error, Rule: req.Rule, Fix: fix, Apply: true,
			Message: fmt.Sprintf("table %s has no replica identity: once published, UPDATE and DELETE on it fail", t.name)}}
	case req.NeedsOld && t.replIdent != 'f':
		// Old rows carry the key: precise when the rule reads nothing else.
		var nonKey []string
		for _, col := range req.Columns {
			if t.columns[col] && !t.keyCols[col] {
				nonKey = append(nonKey, col)
			}
		}
		if len(nonKey) > 0 {
			return []cdc.Finding{{Severity: cdc.Warning, Rule: req.Rule, Fix: fix, Apply: true,
				Message: fmt.Sprintf("the rule reads old values of %s but table %s sends only its key in old rows (REPLICA IDENTITY %s): unknown old values become wildcards", strings.Join(nonKey, ", "), t.name, replIdentName(t.replIdent))}}
		}
	}
	return nil
}

// publicationFinding reports the rows of t that the publication does not
// publish: t itself, or some of its partitions.
func publicationFinding(ctx context.Context, conn *pgx.Conn, pub, rule string, t *checkedTable) (*cdc.Finding, error) {
	missing, err := unpublishedLeaves(ctx, conn, pub, t.oid)
	if err != nil || len(missing) == 0 {
		return nil, err
	}
	msg := fmt.Sprintf("publication %q does not include table %s", pub, t.name)
	if t.partitioned {
		names := make([]string, len(missing))
		for i, m := range missing {
			names[i] = m.String()
		}
		msg = fmt.Sprintf("publication %q does not include partitions %s of table %s", pub, strings.Join(names, ", "), t.name)
	}
	return &cdc.Finding{Severity: cdc.Error, Rule: rule, Message: msg, Apply: true,
		Fix: fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s;", quoteIdent(pub), t.name.sql())}, nil
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

// partitionLeavesSQL selects the leaf partitions (at every level) of the
// partitioned table $1.
const partitionLeavesSQL = `c.relkind = 'r' AND c.oid IN (WITH RECURSIVE down(oid) AS (
		SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = $1::oid
		UNION ALL
		SELECT i.inhrelid FROM down d JOIN pg_inherits i ON i.inhparent = d.oid)
	SELECT oid FROM down)`

// queryTables returns the ordinary and partitioned tables that where
// selects (on pg_class c and pg_namespace n), with their columns and
// replica identity.
func queryTables(ctx context.Context, conn *pgx.Conn, where string, args ...any) ([]*checkedTable, error) {
	rows, err := conn.Query(ctx, `SELECT c.oid, n.nspname, c.relname, c.relkind = 'p', c.relreplident::text,
			EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
			coalesce((SELECT array_agg(ka.attname::text) FROM pg_index i
				JOIN pg_attribute ka ON ka.attrelid = i.indrelid AND ka.attnum = ANY(i.indkey)
				WHERE i.indrelid = c.oid AND CASE c.relreplident WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END), '{}'),
			coalesce(array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped), '{}'),
			coalesce(array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped
				AND coalesce(to_jsonb(a)->>'attgenerated', '') <> ''), '{}')
		FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN pg_attribute a ON a.attrelid = c.oid
		WHERE c.relkind IN ('r', 'p') AND `+where+`
		GROUP BY c.oid, n.nspname, c.relname, c.relkind, c.relreplident
		ORDER BY n.nspname, c.relname`, args...)
	if err != nil {
		return nil, fmt.Errorf("postgres: check: list tables: %w", err)
	}
	defer rows.Close()
	var out []*checkedTable
	for rows.Next() {
		t := &checkedTable{columns: map[string]bool{}, keyCols: map[string]bool{}, generated: map[string]bool{}}
		var ident string
		var cols, keys, gen []string
		if err := rows.Scan(&t.oid, &t.name.Schema, &t.name.Name, &t.partitioned, &ident, &t.hasPK, &keys, &cols, &gen); err != nil {
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
		for _, c := range gen {
			t.generated[c] = true
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: check: list tables: %w", err)
	}
	return out, nil
}

// ApplyFix runs one finding's fix (a Finding with Apply set) for
// `tagstream check --db --apply`.
func ApplyFix(ctx context.Context, cfg Config, stmt string) error {
	r, err := New(cfg)
	if err != nil {
		return err
	}
	conn, err := r.connectSQL(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	if _, err := conn.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("postgres: %s: %w", stmt, err)
	}
	return nil
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
