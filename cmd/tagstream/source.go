package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/cdc/mysql"
	"github.com/tagstream/tagstream/cdc/postgres"
	"github.com/tagstream/tagstream/rules"
)

// sourceFlags are the flags that select and configure the change reader.
type sourceFlags struct {
	fs *flag.FlagSet // the command line they were parsed from (nil: not checked)
	db string

	// Postgres
	slot, publication, publicationTables string
	pgHeartbeat                          time.Duration
	sourceTimeout                        time.Duration

	// MySQL/MariaDB
	serverID uint
	stateDir string
}

func (sf *sourceFlags) register(fs *flag.FlagSet) {
	sf.fs = fs
	fs.StringVar(&sf.db, "db", envOr("TAGSTREAM_DB", ""), "database `DSN`: postgres://… or mysql://user:pass@host:3306/db (env TAGSTREAM_DB)")
	fs.StringVar(&sf.slot, "slot", envOr("TAGSTREAM_SLOT", "tagstream"), "Postgres: logical replication slot, created when missing")
	fs.StringVar(&sf.publication, "publication", envOr("TAGSTREAM_PUBLICATION", "tagstream"), "Postgres: publication, created when missing")
	fs.StringVar(&sf.publicationTables, "publication-tables", envOr("TAGSTREAM_PUBLICATION_TABLES", "all"), "Postgres: a publication created by tagstream covers `all` tables or only the tables the rules name (rules)")
	fs.DurationVar(&sf.pgHeartbeat, "pg-heartbeat", 0, "Postgres: write a logical message this often so that a quiet database's slot keeps advancing (0 = off; not the SSE --heartbeat)")
	fs.DurationVar(&sf.pgHeartbeat, "heartbeat-interval", 0, "the former name of --pg-heartbeat")
	fs.DurationVar(&sf.sourceTimeout, "source-timeout", 0, "a replication connection silent this long is presumed dead and re-established; the reader asks the server for a sign of life before then (default: Postgres 30s, MySQL 15s; env "+envName("source-timeout")+")")
	fs.UintVar(&sf.serverID, "server-id", 0, "MySQL: replica server_id (default: derived from the host name, 1000..2^31)")
	fs.StringVar(&sf.stateDir, "state-dir", envOr("TAGSTREAM_STATE_DIR", "./.tagstream"), "MySQL: directory of the checkpoint file")
}

// source is a configured reader with what the rules need to know about it.
type source struct {
	kind          dbKind
	defaultSchema string
	pg            postgres.Config
	my            mysql.Config
}

// configure validates the source flags without any I/O. set may be nil
// (check without rules tables).
func (sf *sourceFlags) configure(set *rules.Set, logger *slog.Logger) (*source, error) {
	if sf.db == "" {
		return nil, usageErrorf("--db is required (or TAGSTREAM_DB): postgres://user@host:5432/db or mysql://user:pass@host:3306/db")
	}
	kind, err := parseDBKind(sf.db)
	if err != nil {
		return nil, err
	}
	if sf.sourceTimeout < 0 || (sf.sourceTimeout > 0 && sf.sourceTimeout < 30*time.Millisecond) {
		return nil, usageErrorf("--source-timeout: %s is below 30ms", sf.sourceTimeout)
	}
	if err := sf.foreignFlag(kind); err != nil {
		return nil, err
	}
	s := &source{kind: kind}
	switch kind {
	case dbPostgres:
		s.defaultSchema = "public"
		s.pg = postgres.Config{
			DSN:               sf.db,
			Slot:              sf.slot,
			Publication:       sf.publication,
			HeartbeatInterval: sf.pgHeartbeat,
			IdleTimeout:       sf.sourceTimeout,
			Logger:            logger,
		}
		switch sf.publicationTables {
		case "all", "":
		case "rules":
			tables, err := ruleTables(set, s.defaultSchema)
			if err != nil {
				return nil, err
			}
			s.pg.PublicationTables = tables
		default:
			return nil, usageErrorf("--publication-tables: %q is not all or rules", sf.publicationTables)
		}
	case dbMySQL:
		dsn, err := mysql.ParseDSN(sf.db)
		if err != nil {
			return nil, usageErrorf("--db: %v", err)
		}
		if dsn.Database == "" {
			return nil, usageErrorf("--db: %s names no database; add /dbname, the default schema for unqualified tables in rules", redact(sf.db))
		}
		if sf.serverID > 1<<32-1 {
			return nil, usageErrorf("--server-id: %d does not fit in 32 bits", sf.serverID)
		}
		s.defaultSchema = dsn.Database
		s.my = mysql.Config{
			DSN:         sf.db,
			ServerID:    uint32(sf.serverID),
			StateDir:    sf.stateDir,
			ReadTimeout: sf.sourceTimeout,
			Logger:      logger,
		}
	}
	return s, nil
}

// readerFlags are the flags only one reader reads. A command could
// ignore the other reader's, but one given on the command line is a
// mistake (a MySQL DSN with --publication-tables=rules limits nothing):
// it is refused. The environment is not checked — one set of variables
// may serve several deployments.
var readerFlags = map[string]dbKind{
	"slot": dbPostgres, "publication": dbPostgres, "publication-tables": dbPostgres,
	"pg-heartbeat": dbPostgres, "heartbeat-interval": dbPostgres, "temporary-slot": dbPostgres,
	"server-id": dbMySQL, "state-dir": dbMySQL,
}

// foreignFlag refuses a flag given on the command line that the reader
// --db selects does not read.
func (sf *sourceFlags) foreignFlag(kind dbKind) error {
	if sf.fs == nil {
		return nil
	}
	var err error
	sf.fs.Visit(func(f *flag.Flag) {
		if k, ok := readerFlags[f.Name]; ok && k != kind && err == nil {
			err = usageErrorf("--%s is a %s flag, and --db selects %s: remove it", f.Name, k.label(), kind.label())
		}
	})
	return err
}

// ruleTables lists the exact tables the rules name, for a publication that
// covers only them.
func ruleTables(set *rules.Set, defaultSchema string) ([]string, error) {
	if set == nil {
		return nil, nil
	}
	seen := map[string]bool{}
	var tables []string
	for _, r := range set.Rules {
		schema := r.Schema
		if schema == "" {
			schema = defaultSchema
		}
		if strings.Contains(schema, "*") || strings.Contains(r.Table, "*") {
			return nil, usageErrorf("--publication-tables=rules: %s names the pattern %s.%s; a publication lists exact tables: use --publication-tables=all", r.Label(), schema, r.Table)
		}
		t := schema + "." + r.Table
		if !seen[t] {
			seen[t] = true
			tables = append(tables, t)
		}
	}
	return tables, nil
}

// open builds the reader.
func (s *source) open() (cdc.Source, error) {
	var (
		src cdc.Source
		err error
	)
	switch s.kind {
	case dbPostgres:
		src, err = postgres.New(s.pg)
	case dbMySQL:
		src, err = mysql.New(s.my)
	}
	if err != nil {
		return nil, configError(err)
	}
	return src, nil
}

// check checks the rules' requirements against the live database.
func (s *source) check(ctx context.Context, reqs []cdc.Requirement) ([]cdc.Finding, error) {
	var (
		findings []cdc.Finding
		err      error
	)
	switch s.kind {
	case dbPostgres:
		findings, err = postgres.Check(ctx, s.pg, reqs)
	case dbMySQL:
		findings, err = mysql.Check(ctx, s.my, reqs)
	}
	return findings, configError(err)
}

// applyFix runs one finding's fix (a Finding with Apply set).
func (s *source) applyFix(ctx context.Context, stmt string) error {
	if s.kind != dbPostgres {
		return fmt.Errorf("no fix is applied to MySQL/MariaDB: %s", stmt)
	}
	return configError(postgres.ApplyFix(ctx, s.pg, stmt))
}

// configError turns a reader's configuration error into a usage error
// (exit 2); other errors pass through.
func configError(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, postgres.ErrConfig) || errors.Is(err, mysql.ErrConfig) {
		return usageErrorf("%v", err)
	}
	return err
}

// printFindings writes check --db findings, one per line, each followed by
// its fix, and returns how many are errors.
func printFindings(w interface{ Write([]byte) (int, error) }, findings []cdc.Finding) (errs int) {
	for _, f := range findings {
		where := ""
		if f.Rule != "" {
			where = rules.Mention(f.Rule) + ": "
		}
		fmt.Fprintf(w, "%s: %s%s\n", f.Severity, where, f.Message)
		if f.Fix != "" {
			fmt.Fprintf(w, "  fix: %s\n", f.Fix)
		}
		if f.Severity == cdc.Error {
			errs++
		}
	}
	return errs
}
