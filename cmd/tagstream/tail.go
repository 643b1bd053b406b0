package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/cdc/mysql"
	"github.com/tagstream/tagstream/rules"
)

// runTail is a dry run against a live database: it prints every committed
// transaction's position, rows per table and tags, and changes nothing
// durable. Postgres: a TEMPORARY slot, dropped by the server when tail
// exits; the publication must exist (tail creates none and says which SQL
// would). MySQL/MariaDB: from the current binlog head, with a server_id of
// its own, and no checkpoint file. SIGINT/SIGTERM: exit 0.
func runTail(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tail", stdout)
	sf := sourceFlags{fs: fs}
	fs.StringVar(&sf.db, "db", "", "database `DSN`: postgres://… or mysql://user:pass@host:3306/db (env TAGSTREAM_DB)")
	rulesPath := fs.String("rules", "", "rules `FILE` (env TAGSTREAM_RULES)")
	fs.StringVar(&sf.publication, "publication", "tagstream", "Postgres: an existing publication to read (env TAGSTREAM_PUBLICATION); tail creates none")
	defaultSlot := "tagstream_tail_" + strconv.Itoa(os.Getpid())
	fs.StringVar(&sf.slot, "temporary-slot", defaultSlot, "Postgres: `name` of the temporary slot, dropped when tail exits")
	fs.UintVar(&sf.serverID, "server-id", 0, "MySQL: replica server_id of tail, not the daemon's (default: derived from the host name and process id)")
	oldImages := fs.String("old-images", "wildcard", "an update without an old row: wildcard or new-only, as for run (env TAGSTREAM_OLD_IMAGES)")
	logLevel := fs.String("log-level", "warn", "level of the logs on stderr: debug, info, warn or error")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	// Only these come from the environment: the daemon's TAGSTREAM_SLOT or
	// TAGSTREAM_SERVER_ID would make tail take over the daemon's slot or
	// replica connection.
	if err := applyEnv(fs, []string{"db", "rules", "publication", "old-images"}); err != nil {
		return err
	}
	if *rulesPath == "" {
		return usageErrorf("tail: --rules is required (or TAGSTREAM_RULES)")
	}
	oi, err := rules.ParseOldImages(*oldImages)
	if err != nil {
		return usageErrorf("tail: --old-images: %q is not wildcard or new-only", *oldImages)
	}
	logger, err := newLogger(stderr, "text", *logLevel)
	if err != nil {
		return err
	}
	set, err := rules.Load(*rulesPath)
	if err != nil {
		return usageErrorf("tail: %s", oneLine(err))
	}
	if sf.serverID == 0 {
		host, _ := os.Hostname()
		sf.serverID = uint(mysql.DefaultServerID(host + "/tail/" + strconv.Itoa(os.Getpid())))
	}
	src, err := sf.configure(set, logger)
	if err != nil {
		return err
	}
	src.pg.Temporary = true
	src.my.DryRun = true
	reader, err := src.open()
	if err != nil {
		return err
	}
	h := &tailHandler{
		engine: rules.Compile(set, rules.Options{DefaultSchema: src.defaultSchema, OldImages: oi, Logger: logger}),
		source: reader,
		stdout: stdout,
		stderr: stderr,
		what:   "the binlog head, writing no checkpoint",
	}
	if src.kind == dbPostgres {
		h.what = "temporary slot " + src.pg.Slot
	}
	return configError(reader.Run(ctx, h))
}

// tailHandler prints each committed transaction that changed rows.
type tailHandler struct {
	engine  *rules.Engine
	source  cdc.Source
	stdout  io.Writer
	stderr  io.Writer
	what    string
	started bool
}

// tailTx counts a transaction's rows per table beside its tags.
type tailTx struct {
	rules *rules.Tx
	rows  map[cdc.TableName]int
}

func (t *tailTx) Add(c *cdc.Change) {
	t.rules.Add(c)
	t.rows[cdc.TableName{Schema: c.Table.Schema, Name: c.Table.Name}]++
}

func (t *tailTx) Merge(other cdc.Tx) {
	o, ok := other.(*tailTx)
	if !ok {
		t.rules.Merge(other)
		return
	}
	t.rules.Merge(o.rules)
	for k, n := range o.rows {
		t.rows[k] += n
	}
}

func (t *tailTx) Tags() []string { return t.rules.Tags() }

// Reads passes the rules' projection on: the reader decodes only the
// columns the rules read.
func (t *tailTx) Reads(tbl *cdc.Table, op cdc.Op) []bool { return t.rules.Reads(tbl, op) }

func (h *tailHandler) Begin() cdc.Tx {
	return &tailTx{rules: h.engine.NewTx(), rows: map[cdc.TableName]int{}}
}

// Commit prints `position=N rows=schema.table:n,… tags=a,b,…` (tags never
// hold commas or spaces; tables and tags sorted) for a transaction that
// changed rows, and acknowledges it.
func (h *tailHandler) Commit(_ context.Context, tx cdc.Tx, c cdc.Commit) error {
	t, ok := tx.(*tailTx)
	if ok && len(t.rows) > 0 {
		tables := make([]cdc.TableName, 0, len(t.rows))
		for k := range t.rows {
			tables = append(tables, k)
		}
		slices.SortFunc(tables, func(a, b cdc.TableName) int {
			return strings.Compare(a.Schema+"."+a.Name, b.Schema+"."+b.Name)
		})
		var b strings.Builder
		fmt.Fprintf(&b, "position=%d rows=", uint64(c.Position))
		for i, k := range tables {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%s.%s:%d", k.Schema, k.Name, t.rows[k])
		}
		b.WriteString(" tags=" + strings.Join(t.Tags(), ",") + "\n")
		if _, err := io.WriteString(h.stdout, b.String()); err != nil {
			return fmt.Errorf("tail: %w", err)
		}
	}
	h.source.Ack(c.Position)
	return nil
}

// Resumed says once, on stderr, that tail is streaming: from here every
// commit is printed.
func (h *tailHandler) Resumed(pos cdc.Position) {
	if h.started {
		return
	}
	h.started = true
	fmt.Fprintf(h.stderr, "tagstream tail: streaming from position %d on %s; nothing durable is written (Ctrl-C stops)\n", uint64(pos), h.what)
}

func (h *tailHandler) Progress(cdc.Position) {}

// Lost prints `reset reason="…"`: transactions may be missing from here.
func (h *tailHandler) Lost(_ context.Context, reason string) error {
	_, err := fmt.Fprintf(h.stdout, "reset reason=%q\n", reason)
	return err
}

func (h *tailHandler) Drain(context.Context) {}
