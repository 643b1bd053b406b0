package mysql

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/tagstream/tagstream/cdc"
)

// serverInfo is what the reader learns about the server before streaming.
type serverInfo struct {
	flavor      string // gomysql.MySQLFlavor or gomysql.MariaDBFlavor
	version     string
	user        string // CURRENT_USER(), user@host
	logBin      bool
	format      string // binlog_format
	rowImage    string // binlog_row_image
	rowMetadata string // binlog_row_metadata; "" when the server has none
	gtidMode    bool   // GTIDs usable for resuming (always on MariaDB)
	grants      []string
	collations  map[uint64]string // collation id → character set name
}

func (s *serverInfo) mariadb() bool { return s.flavor == gomysql.MariaDBFlavor }

// connect opens an admin connection. Authentication failures are
// configuration errors; anything else may be retried.
func connect(ctx context.Context, d DSN) (*client.Conn, error) {
	c, err := client.ConnectWithContext(ctx, d.Addr(), d.User, d.Password, "", 10*time.Second)
	if err != nil {
		if code := errCode(err); code == gomysql.ER_ACCESS_DENIED_ERROR || code == gomysql.ER_DBACCESS_DENIED_ERROR {
			return nil, fmt.Errorf("%w: connect to %s: %w", ErrConfig, d, err)
		}
		return nil, fmt.Errorf("mysql: connect to %s: %w", d.Addr(), err)
	}
	return c, nil
}

// errCode returns the server error code in err, or 0.
func errCode(err error) int {
	var me *gomysql.MyError
	if errors.As(err, &me) {
		return int(me.Code)
	}
	return gomysql.ErrorCode(err.Error())
}

func queryStrings(c *client.Conn, q string) ([]string, error) {
	r, err := c.Execute(q)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if r.RowNumber() == 0 {
		return nil, fmt.Errorf("%s: no rows", q)
	}
	out := make([]string, r.ColumnNumber())
	for i := range out {
		v, err := r.GetString(0, i)
		if err != nil {
			return nil, err
		}
		out[i] = strings.Clone(v) // r's buffers are reused after Close

	}
	return out, nil
}

func inspect(c *client.Conn) (*serverInfo, error) {
	v, err := queryStrings(c, "SELECT VERSION(), CURRENT_USER(), @@global.log_bin, @@global.binlog_format, @@global.binlog_row_image")
	if err != nil {
		return nil, fmt.Errorf("mysql: read server settings: %w", err)
	}
	s := &serverInfo{flavor: gomysql.MySQLFlavor, version: v[0], user: v[1],
		logBin: v[2] == "1" || strings.EqualFold(v[2], "ON"), format: strings.ToUpper(v[3]), rowImage: strings.ToUpper(v[4])}
	if strings.Contains(strings.ToLower(s.version), "mariadb") {
		s.flavor = gomysql.MariaDBFlavor
		s.gtidMode = true
	}
	if m, err := queryStrings(c, "SELECT @@global.binlog_row_metadata"); err == nil {
		s.rowMetadata = strings.ToUpper(m[0])
	}
	if !s.mariadb() {
		if m, err := queryStrings(c, "SELECT @@global.gtid_mode"); err == nil {
			s.gtidMode = strings.EqualFold(m[0], "ON")
		}
	}
	if s.collations, err = readCollations(c); err != nil {
		return nil, err
	}
	r, err := c.Execute("SHOW GRANTS")
	if err != nil {
		return nil, fmt.Errorf("mysql: show grants: %w", err)
	}
	for i := range r.RowNumber() {
		g, _ := r.GetString(i, 0)
		s.grants = append(s.grants, strings.Clone(g))
	}
	r.Close()
	return s, nil
}

// readCollations maps the server's collation ids to their character sets:
// a TABLE_MAP names a column's collation by id.
func readCollations(c *client.Conn) (map[uint64]string, error) {
	r, err := c.Execute("SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE ID IS NOT NULL")
	if err != nil {
		return nil, fmt.Errorf("mysql: read collations: %w", err)
	}
	defer r.Close()
	m := make(map[uint64]string, r.RowNumber())
	for i := range r.RowNumber() {
		id, _ := r.GetUint(i, 0)
		name, _ := r.GetString(i, 1)
		m[id] = strings.Clone(name)
	}
	return m, nil
}

// grantee renders CURRENT_USER() as 'user'@'host' for a GRANT statement.
func (s *serverInfo) grantee() string {
	u, h, ok := strings.Cut(s.user, "@")
	if !ok {
		h = "%"
	}
	return "'" + u + "'@'" + h + "'"
}

// privileges returns the privileges granted on scope ("*.*" or "`db`.*")
// and whether the grants include roles (which SHOW GRANTS does not expand).
func (s *serverInfo) privileges(scope string) (privs map[string]bool, roles bool) {
	privs = map[string]bool{}
	for _, g := range s.grants {
		rest, ok := strings.CutPrefix(g, "GRANT ")
		if !ok {
			continue
		}
		list, on, ok := strings.Cut(rest, " ON ")
		if !ok {
			roles = true // GRANT `role` TO …
			continue
		}
		obj, _, _ := strings.Cut(on, " TO ")
		if obj != scope {
			continue
		}
		depth := 0
		start := 0
		for i := 0; i <= len(list); i++ {
			if i < len(list) {
				switch list[i] {
				case '(':
					depth++
					continue
				case ')':
					depth--
					continue
				case ',':
					if depth > 0 {
						continue
					}
				default:
					continue
				}
			}
			p := strings.TrimSpace(list[start:i])
			if j := strings.IndexByte(p, '('); j >= 0 {
				p = strings.TrimSpace(p[:j])
			}
			privs[strings.ToUpper(p)] = true
			start = i + 1
		}
	}
	return privs, roles
}

// serverFindings checks the settings and grants streaming needs; each
// finding names its fix. Errors stop Run; warnings are logged.
func (s *serverInfo) serverFindings(d DSN) []cdc.Finding {
	var fs []cdc.Finding
	add := func(sev cdc.Severity, msg, fix string) {
		fs = append(fs, cdc.Finding{Severity: sev, Message: msg, Fix: fix})
	}
	if !s.logBin {
		add(cdc.Error, "binary logging is off (log_bin=OFF)",
			"in my.cnf [mysqld]: log_bin = mysql-bin and server_id = 1, then restart the server (log_bin cannot be changed at run time)")
	}
	if s.format != "ROW" {
		add(cdc.Error, fmt.Sprintf("binlog_format is %s; row changes are only logged with ROW", s.format),
			"SET GLOBAL binlog_format = 'ROW'; and in my.cnf [mysqld]: binlog_format = ROW (connections opened before keep their format until they reconnect)")
	}
	switch s.rowMetadata {
	case "FULL":
	case "":
		add(cdc.Error, fmt.Sprintf("server %s has no binlog_row_metadata: column names are not logged", s.version),
			"upgrade to MySQL 8.0.1+ or MariaDB 10.5+ and set binlog_row_metadata = FULL")
	default:
		add(cdc.Error, fmt.Sprintf("binlog_row_metadata is %s; column names are only logged with FULL", s.rowMetadata),
			"SET GLOBAL binlog_row_metadata = 'FULL'; and in my.cnf [mysqld]: binlog_row_metadata = FULL")
	}
	global, roles := s.privileges("*.*")
	sev := cdc.Error
	if roles {
		sev = cdc.Warning // a role may grant what SHOW GRANTS does not list
	}
	all := global["ALL PRIVILEGES"] || global["ALL"]
	var missing []string
	if !all && !global["REPLICATION SLAVE"] && !global["REPLICATION REPLICA"] {
		missing = append(missing, "REPLICATION SLAVE")
	}
	if !all && !global["REPLICATION CLIENT"] && !global["BINLOG MONITOR"] {
		if s.mariadb() {
			missing = append(missing, "BINLOG MONITOR")
		} else {
			missing = append(missing, "REPLICATION CLIENT")
		}
	}
	if len(missing) > 0 {
		add(sev, fmt.Sprintf("user %s lacks %s (needed to read the binlog and its head)", s.user, strings.Join(missing, " and ")),
			fmt.Sprintf("GRANT %s ON *.* TO %s;", strings.Join(missing, ", "), s.grantee()))
	}
	if !all && !global["SELECT"] {
		scope, fix := "*.*", "*.*"
		if d.Database != "" {
			scope = "`" + strings.ReplaceAll(d.Database, "`", "``") + "`.*"
			fix = scope
		}
		p, _ := s.privileges(scope)
		if !p["SELECT"] && !p["ALL PRIVILEGES"] {
			add(cdc.Warning, fmt.Sprintf("user %s lacks SELECT (tagstream check reads table definitions)", s.user),
				fmt.Sprintf("GRANT SELECT ON %s TO %s;", fix, s.grantee()))
		}
	}
	if s.rowImage != "FULL" {
		// A startup error (docs/rules.md, "Updates without an old row"): with partial images every
		// rule that reads an old or unchanged column over-invalidates.
		add(cdc.Error, fmt.Sprintf("binlog_row_image is %s, but tagstream needs FULL row images", s.rowImage),
			"SET GLOBAL binlog_row_image = 'FULL'; and in my.cnf [mysqld]: binlog_row_image = FULL")
	}
	return fs
}

// binlogHead is the server's current end of the binlog.
type binlogHead struct {
	gtid string
	file string
	pos  uint32
}

func (h binlogHead) position() cdc.Position { return makePosition(fileSeq(h.file), h.pos) }

// readHead reads the GTID set first and file:pos second: a transaction
// committed in between is then delivered (the GTID set is the resume
// point), never skipped.
func readHead(c *client.Conn, s *serverInfo) (binlogHead, error) {
	var h binlogHead
	if s.gtidMode {
		q := "SELECT @@global.gtid_executed"
		if s.mariadb() {
			q = "SELECT @@global.gtid_binlog_pos"
		}
		v, err := queryStrings(c, q)
		if err != nil {
			return h, fmt.Errorf("mysql: read GTID position: %w", err)
		}
		h.gtid = strings.ReplaceAll(strings.TrimSpace(v[0]), "\n", "")
	}
	stmts := []string{"SHOW BINARY LOG STATUS", "SHOW MASTER STATUS"}
	if s.mariadb() {
		stmts = []string{"SHOW MASTER STATUS", "SHOW BINLOG STATUS"}
	}
	var lastErr error
	for _, q := range stmts {
		r, err := c.Execute(q)
		if err != nil {
			lastErr = err
			continue
		}
		defer r.Close()
		if r.RowNumber() == 0 {
			return h, fmt.Errorf("%w: %s returned nothing: binary logging is off", ErrConfig, q)
		}
		file, _ := r.GetString(0, 0)
		h.file = strings.Clone(file)
		pos, _ := r.GetUint(0, 1)
		h.pos = uint32(pos)
		return h, nil
	}
	if errCode(lastErr) == gomysql.ER_SPECIFIC_ACCESS_DENIED_ERROR {
		return h, fmt.Errorf("%w: read binlog head: %w", ErrConfig, lastErr)
	}
	return h, fmt.Errorf("mysql: read binlog head: %w", lastErr)
}

// makePosition builds a cdc.Position from a binlog file's sequence number
// and an end position inside it.
func makePosition(seq uint64, pos uint32) cdc.Position {
	return cdc.Position(seq<<32 | uint64(pos))
}

// fileSeq is the sequence number of a binlog file name (mysql-bin.000042 → 42).
func fileSeq(name string) uint64 {
	i := strings.LastIndexByte(name, '.')
	n, err := strconv.ParseUint(name[i+1:], 10, 32)
	if err != nil {
		return 0
	}
	return n
}

// Check connects to the server named by cfg.DSN and checks the settings,
// the grants and the tables and columns that reqs need. Findings carry
// their fix; the error is for what prevented checking at all.
func Check(ctx context.Context, cfg Config, reqs []cdc.Requirement) ([]cdc.Finding, error) {
	d, err := ParseDSN(cfg.DSN)
	if err != nil {
		return nil, err
	}
	c, err := connect(ctx, d)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	s, err := inspect(c)
	if err != nil {
		return nil, err
	}
	var fs []cdc.Finding
	fs = append(fs, s.serverFindings(d)...)
	if d.Database != "" {
		r, err := c.Execute("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?", d.Database)
		if err != nil {
			return nil, fmt.Errorf("mysql: check database: %w", err)
		}
		n, _ := r.GetInt(0, 0)
		r.Close()
		if n == 0 {
			fs = append(fs, cdc.Finding{Severity: cdc.Error, Message: fmt.Sprintf("database %q (the DSN's default schema) does not exist", d.Database),
				Fix: fmt.Sprintf("CREATE DATABASE `%s`; or name an existing database in the DSN", d.Database)})
		}
	}
	for _, req := range reqs {
		rfs, err := checkRequirement(c, s, req)
		if err != nil {
			return nil, err
		}
		fs = append(fs, rfs...)
	}
	return fs, nil
}

var systemSchemas = map[string]bool{"mysql": true, "information_schema": true, "performance_schema": true, "sys": true}

func likePattern(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`, `*`, `%`)
	return r.Replace(p)
}

func checkRequirement(c *client.Conn, s *serverInfo, req cdc.Requirement) ([]cdc.Finding, error) {
	r, err := c.Execute(`SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS
		WHERE TABLE_SCHEMA LIKE ? AND TABLE_NAME LIKE ?`, likePattern(req.Schema), likePattern(req.Table))
	if err != nil {
		return nil, fmt.Errorf("mysql: read columns: %w", err)
	}
	defer r.Close()
	tables := map[string]map[string]bool{}
	for i := range r.RowNumber() {
		schema, _ := r.GetString(i, 0)
		table, _ := r.GetString(i, 1)
		col, _ := r.GetString(i, 2)
		schema, table, col = strings.Clone(schema), strings.Clone(table), strings.Clone(col)
		if strings.Contains(req.Schema, "*") && systemSchemas[strings.ToLower(schema)] {
			continue
		}
		key := schema + "." + table
		if tables[key] == nil {
			tables[key] = map[string]bool{}
		}
		tables[key][col] = true
	}
	var fs []cdc.Finding
	add := func(sev cdc.Severity, msg, fix string) {
		fs = append(fs, cdc.Finding{Severity: sev, Rule: req.Rule, Message: msg, Fix: fix})
	}
	pattern := req.Schema + "." + req.Table
	if len(tables) == 0 {
		add(cdc.Error, fmt.Sprintf("no table matches %s", pattern), "")
		return fs, nil
	}
	names := make([]string, 0, len(tables))
	for k := range tables {
		names = append(names, k)
	}
	sort.Strings(names)
	wildcard := strings.Contains(pattern, "*")
	for _, col := range req.Columns {
		var lacking []string
		for _, t := range names {
			if !tables[t][col] {
				lacking = append(lacking, t)
			}
		}
		switch {
		case len(lacking) == 0:
		case !wildcard:
			add(cdc.Error, fmt.Sprintf("table %s has no column %q", lacking[0], col), "")
		case len(lacking) == len(names):
			add(cdc.Error, fmt.Sprintf("no table matching %s has a column %q", pattern, col), "")
		}
	}
	if req.NeedsOld && s.rowImage != "FULL" {
		add(cdc.Warning, fmt.Sprintf("the rule reads old values but binlog_row_image is %s: columns missing from old images become wildcards", s.rowImage),
			"SET GLOBAL binlog_row_image = 'FULL'; and in my.cnf [mysqld]: binlog_row_image = FULL")
	}
	return fs, nil
}
