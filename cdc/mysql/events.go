package mysql

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/tagstream/tagstream/cdc"
)

// binlogState is the reader's position and decoding state. It survives
// reconnects; the open transaction does not (a reconnect resumes after the
// last delivered commit and so replays it).
type binlogState struct {
	flavor string
	// The resume point: just after the last transaction handed to the
	// handler. gset is nil when the server has no usable GTIDs.
	gset gomysql.GTIDSet
	file string
	pos  uint32

	// The connection's current binlog file.
	curFile string
	curSeq  uint64
	// The last commit's position and the highest h.Progress.
	lastCommit, lastProgress cdc.Position
	// The binlog head when streaming was set up: every position up to it
	// will be delivered.
	startEnd cdc.Position

	// The open transaction.
	tx      cdc.Tx
	inBegin bool            // inside BEGIN … COMMIT (else a statement is its own transaction)
	txGset  gomysql.GTIDSet // gset including the open transaction
	txTime  time.Time

	collations map[uint64]string // collation id → character set name

	byID     map[uint64]*tableInfo
	byLayout map[string]*tableInfo
	byName   map[tableRef]*tableInfo
	warned   map[*tableInfo]bool

	keyBuf           []byte
	arena            []byte
	oldVals, newVals []cdc.Value
	change           cdc.Change
}

// startAt sets the resume point.
func (st *binlogState) startAt(info *serverInfo, gtid, file string, pos uint32) error {
	st.flavor = info.flavor
	st.collations = info.collations
	st.gset = nil
	switch {
	case info.mariadb():
		g, err := gomysql.ParseMariadbGTIDSet(gtid)
		if err != nil {
			return fmt.Errorf("mysql: GTID position %q: %w", gtid, err)
		}
		st.gset = g
	case info.gtidMode:
		g, err := gomysql.ParseMysqlGTIDSet(gtid)
		if err != nil {
			return fmt.Errorf("mysql: GTID set %q: %w", gtid, err)
		}
		st.gset = g
	}
	st.file, st.pos = file, pos
	return nil
}

// setFloor records where streaming resumes: progress is only reported
// beyond it (a server skipping to a GTID may send heartbeats from before).
func (st *binlogState) setFloor(pos cdc.Position) {
	st.lastCommit, st.lastProgress = pos, pos
}

func (st *binlogState) gtidString() string {
	if st.gset == nil {
		return ""
	}
	return st.gset.String()
}

func (st *binlogState) resetConnection() {
	st.tx, st.inBegin, st.txGset, st.txTime = nil, false, nil, time.Time{}
	st.curFile, st.curSeq = "", 0
	if st.byID == nil {
		st.byID = map[uint64]*tableInfo{}
		st.byLayout = map[string]*tableInfo{}
		st.byName = map[tableRef]*tableInfo{}
		st.warned = map[*tableInfo]bool{}
	}
}

// begin starts a transaction, dropping whatever was open: it can only be
// the remains of one that the server did not finish sending.
func (st *binlogState) begin(h cdc.Handler) {
	st.tx, st.inBegin, st.txGset, st.txTime = h.Begin(), false, nil, time.Time{}
}

func (st *binlogState) ensureTx(h cdc.Handler) {
	if st.tx == nil {
		st.begin(h)
	}
}

// handle processes one event. pos, when not 0, overrides the event's end
// position (events inside a compressed transaction payload).
func (r *Reader) handle(ctx context.Context, h cdc.Handler, ev *replication.BinlogEvent, pos uint32) error {
	st := &r.st
	if pos == 0 {
		pos = ev.Header.LogPos
	}
	switch e := ev.Event.(type) {
	case *replication.RotateEvent:
		st.curFile = string(e.NextLogName)
		st.curSeq = fileSeq(st.curFile)
		if ev.Header.Flags&replication.LOG_EVENT_ARTIFICIAL_F == 0 && ev.Header.Timestamp != 0 {
			r.progress(h, makePosition(st.curSeq, uint32(e.Position)))
		}
	case *replication.HeartbeatEvent:
		seq := st.curSeq
		if e.Filename != "" {
			seq = fileSeq(e.Filename)
		}
		end := ev.Header.LogPos
		if e.Offset != 0 {
			end = uint32(e.Offset)
		}
		if st.tx == nil {
			r.progress(h, makePosition(seq, end))
		}
	case *replication.MariadbGTIDEvent:
		st.begin(h)
		if st.gset != nil {
			g := st.gset.Clone()
			if err := g.(*gomysql.MariadbGTIDSet).AddSet(&e.GTID); err == nil {
				st.txGset = g
			}
		}
	case *replication.GTIDEvent:
		r.beginMySQL(h, e, nil)
	case *replication.GtidTaggedLogEvent:
		r.beginMySQL(h, &e.GTIDEvent, &e.Tag)
	case *replication.QueryEvent:
		return r.query(ctx, h, ev.Header, e, pos)
	case *replication.TableMapEvent:
		st.tableMap(e)
	case *replication.RowsEvent:
		return r.rows(h, e, ev.Header.EventType)
	case *replication.XIDEvent:
		return r.commit(ctx, h, ev.Header, pos)
	case *replication.TransactionPayloadEvent:
		// MySQL binlog transaction compression: the transaction's events
		// inside one event; its end position is the payload's.
		for _, inner := range e.Events {
			if err := r.handle(ctx, h, inner, ev.Header.LogPos); err != nil {
				return err
			}
		}
	default:
		if ev.Header.EventType == replication.XA_PREPARE_LOG_EVENT {
			// XA PREPARE ends what XA START began. Publishing at prepare
			// invalidates early, never late.
			return r.commit(ctx, h, ev.Header, pos)
		}
	}
	return nil
}

func (r *Reader) beginMySQL(h cdc.Handler, e *replication.GTIDEvent, tag *gomysql.Tag) {
	st := &r.st
	st.begin(h)
	if e.ImmediateCommitTimestamp != 0 {
		st.txTime = time.UnixMicro(int64(e.ImmediateCommitTimestamp))
	}
	if st.gset == nil || e.GNO <= 0 {
		return // anonymous transaction (gtid_mode=OFF)
	}
	u, err := uuid.FromBytes(e.SID)
	if err != nil {
		return
	}
	g := st.gset.Clone().(*gomysql.MysqlGTIDSet)
	if tag != nil && *tag != (gomysql.Tag{}) {
		g.AddGTIDWithTag(u, *tag, e.GNO)
	} else {
		g.AddGTID(u, e.GNO)
	}
	st.txGset = g
}

func (r *Reader) progress(h cdc.Handler, end cdc.Position) {
	if end > r.st.lastProgress && end >= r.st.lastCommit {
		r.st.lastProgress = end
		h.Progress(end)
	}
}

// commit hands the open transaction to the handler with the position of
// the event that ends it.
func (r *Reader) commit(ctx context.Context, h cdc.Handler, hdr *replication.EventHeader, end uint32) error {
	st := &r.st
	st.ensureTx(h)
	pos := makePosition(st.curSeq, end)
	t := st.txTime
	if t.IsZero() {
		t = time.Unix(int64(hdr.Timestamp), 0)
	}
	if st.txGset != nil {
		st.gset = st.txGset
	}
	st.file, st.pos = st.curFile, end
	st.lastCommit = pos
	// Pending before Commit: the pipeline may Ack from inside it.
	r.addPending(checkpoint{Flavor: st.flavor, GTIDSet: st.gtidString(), File: st.file, Pos: end, Position: pos})
	tx := st.tx
	st.tx, st.inBegin, st.txGset, st.txTime = nil, false, nil, time.Time{}
	if err := h.Commit(ctx, tx, cdc.Commit{Position: pos, Time: t}); err != nil {
		return handlerError{err}
	}
	return nil
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && bytes.EqualFold(b[:len(prefix)], []byte(prefix))
}

func (r *Reader) query(ctx context.Context, h cdc.Handler, hdr *replication.EventHeader, e *replication.QueryEvent, pos uint32) error {
	st := &r.st
	q := bytes.TrimSpace(e.Query)
	switch {
	case bytes.EqualFold(q, []byte("BEGIN")), hasPrefixFold(q, "XA START"), hasPrefixFold(q, "XA BEGIN"):
		st.ensureTx(h)
		st.inBegin = true
		return nil
	case bytes.EqualFold(q, []byte("COMMIT")), bytes.EqualFold(q, []byte("ROLLBACK")):
		// A logged ROLLBACK ends changes to non-transactional tables, which
		// stay applied: publish them like a commit.
		return r.commit(ctx, h, hdr, pos)
	case hasPrefixFold(q, "XA END"), hasPrefixFold(q, "SAVEPOINT"), hasPrefixFold(q, "ROLLBACK TO"), hasPrefixFold(q, "RELEASE SAVEPOINT"):
		return nil
	}
	st.ensureTx(h)
	eff := parseDDL(string(q), string(e.Schema))
	for _, t := range eff.Tables {
		r.truncate(t)
	}
	for _, schema := range eff.Schemas {
		// The tables of the schema that the reader has seen rows of.
		var refs []tableRef
		for ref := range st.byName {
			if ref.Schema == schema {
				refs = append(refs, ref)
			}
		}
		slices.SortFunc(refs, func(a, b tableRef) int { return strings.Compare(a.Name, b.Name) })
		for _, ref := range refs {
			r.truncate(ref)
			delete(st.byName, ref)
		}
	}
	if st.inBegin {
		return nil
	}
	// DDL and other statements outside BEGIN are transactions of their own.
	return r.commit(ctx, h, hdr, pos)
}

// truncate reports that every row of t may have changed.
func (r *Reader) truncate(t tableRef) {
	st := &r.st
	table := &cdc.Table{Schema: t.Schema, Name: t.Name}
	if info := st.byName[t]; info != nil {
		table = info.table
	}
	st.change = cdc.Change{Table: table, Op: cdc.Truncate}
	st.tx.Add(&st.change)
	st.change = cdc.Change{}
}

// tableMap records a TABLE_MAP, keeping one *cdc.Table per layout.
func (st *binlogState) tableMap(tm *replication.TableMapEvent) *tableInfo {
	st.keyBuf = layoutKey(st.keyBuf[:0], tm)
	info := st.byID[tm.TableID]
	if info == nil || info.key != string(st.keyBuf) {
		info = st.byLayout[string(st.keyBuf)]
		if info == nil {
			key := string(st.keyBuf)
			info = newTableInfo(key, tm, st.collations)
			st.byLayout[key] = info
		}
		st.byID[tm.TableID] = info
	}
	st.byName[tableRef{Schema: info.table.Schema, Name: info.table.Name}] = info
	return info
}

func (r *Reader) rows(h cdc.Handler, e *replication.RowsEvent, typ replication.EventType) error {
	st := &r.st
	st.ensureTx(h)
	info := st.byID[e.TableID]
	if info == nil {
		info = st.tableMap(e.Table)
	}
	if !info.named {
		// Without column names (binlog_row_metadata=MINIMAL set at run
		// time) rows cannot be matched to rules: invalidate the table.
		if !st.warned[info] {
			st.warned[info] = true
			r.log.Error("mysql: binlog rows carry no column names; invalidating the whole table instead",
				"table", info.table.Schema+"."+info.table.Name, "fix", "SET GLOBAL binlog_row_metadata = 'FULL'")
		}
		r.truncate(tableRef{Schema: info.table.Schema, Name: info.table.Name})
		return nil
	}
	op, partial, compressed := rowsOp(typ)
	if op == 0 {
		return nil
	}
	data, err := rowImages(e, compressed)
	if err != nil {
		return err
	}
	d := rowDecoder{info: info, n: int(e.ColumnCount), partial: partial}
	if d.n > len(info.cols) {
		return fmt.Errorf("mysql: rows event of %s.%s: %d columns, its TABLE_MAP %d", info.table.Schema, info.table.Name, d.n, len(info.cols))
	}
	if p, ok := st.tx.(cdc.Projection); ok {
		d.reads = p.Reads(info.table, op)
	}
	if info.jsonCols > 0 && d.readsJSON() {
		if d.json, err = jsonRows(e); err != nil {
			return err
		}
	}
	c := &st.change
	*c = cdc.Change{Table: info.table, Op: op}
	defer func() { *c = cdc.Change{} }()
	for len(data) > 0 {
		st.arena = st.arena[:0]
		switch op {
		case cdc.Insert:
			c.New, st.arena, data, err = d.image(&st.newVals, st.arena, e.ColumnBitmap1, data, false)
		case cdc.Delete:
			c.Old, st.arena, data, err = d.image(&st.oldVals, st.arena, e.ColumnBitmap1, data, false)
		case cdc.Update:
			c.Old, st.arena, data, err = d.image(&st.oldVals, st.arena, e.ColumnBitmap1, data, false)
			if err == nil {
				c.New, st.arena, data, err = d.image(&st.newVals, st.arena, e.ColumnBitmap2, data, true)
			}
		}
		if err != nil {
			return fmt.Errorf("mysql: rows event of %s.%s: %w", info.table.Schema, info.table.Name, err)
		}
		st.tx.Add(c)
	}
	return nil
}
