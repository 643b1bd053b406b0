package postgres

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tagstream/tagstream/cdc"
)

// streamedTx is an in-progress transaction that the server streams before
// it commits: the top-level Tx and one Tx per subtransaction that changed
// rows (a rolled-back savepoint is aborted on its own).
type streamedTx struct {
	top  cdc.Tx
	subs map[uint32]cdc.Tx
}

// session is the state of one replication connection.
type session struct {
	r            *Reader
	h            cdc.Handler
	conn         *pgconn.PgConn
	cat          catalogReader     // partition trees and domain types
	baseTypes    map[uint32]uint32 // domain type → base type, this session
	curXid       uint32            // xid of the open non-streamed transaction
	lastRelation uint32            // the previous message was this relation's Relation message (0: it was not one)

	cur       cdc.Tx // open non-streamed transaction, nil when none
	streams   map[uint32]*streamedTx
	inStream  bool
	streamXid uint32

	start     uint64 // LSN streaming started from: already confirmed
	delivered uint64 // end LSN of the last transaction handed to Commit (this session)
	idleAck   uint64 // keepalive WAL end seen while nothing was pending (handlers that are no cdc.Idler)
	idleSent  uint64 // the last WAL end handed to a cdc.Idler handler
	received  uint64 // highest WAL position received
	progress  uint64 // highest end reported through Progress

	lastRecv   time.Time
	nextStatus time.Time
	heard      bool // the server sent something after START_REPLICATION

	// Reused per change: a Change and its Values are only valid during Add.
	change         cdc.Change
	oldBuf, newBuf []cdc.Value
	textBuf        []byte // values rewritten to their text cast
}

// session runs one connection: setup, START_REPLICATION, replication.
// streamed reports whether the server sent anything after
// START_REPLICATION (the backoff resets then).
func (r *Reader) session(ctx context.Context, h cdc.Handler) (streamed bool, err error) {
	r.sessions.Add(1)
	sqlConn, err := r.connectSQL(ctx)
	if err != nil {
		return false, err
	}
	defer func() { _ = sqlConn.Close(context.WithoutCancel(ctx)) }()
	si, err := queryServerInfo(ctx, sqlConn)
	if err != nil {
		return false, err
	}
	if err := checkServer(si); err != nil {
		return false, err
	}
	if err := r.ensurePublication(ctx, sqlConn, si.version); err != nil {
		return false, err
	}
	repl, err := r.connectReplication(ctx)
	if err != nil {
		return false, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = repl.Close(cctx)
	}()
	start, walEnd, err := r.startReplication(ctx, sqlConn, repl, si, h)
	if err != nil {
		return false, err
	}
	r.ready.Store(true)
	r.log.Info("streaming", logSlot, r.cfg.Slot, logLSN, start.String(), "server_version", si.version)
	cat := &catalog{conn: sqlConn}
	s := &session{r: r, h: h, conn: repl, cat: cat, streams: map[uint32]*streamedTx{}, start: uint64(start)}
	if end := uint64(walEnd); end > uint64(start) {
		// Before Resumed, which lets waiting clients in: their cursors are
		// judged against it.
		s.progress = end
		h.Progress(cdc.Position(end))
	}
	h.Resumed(cdc.Position(start))

	hbCtx, stopHB := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if r.cfg.HeartbeatInterval > 0 && !r.heartbeatOff.Load() {
		wg.Add(1)
		go r.heartbeat(hbCtx, cat, &wg)
	}
	wg.Go(func() { r.watchRetention(hbCtx, cat) })
	defer func() {
		stopHB()
		wg.Wait()
	}()

	err = s.run(ctx)
	if ctx.Err() != nil {
		s.stop(ctx)
	}
	return s.heard, err
}

// startReplication finds (or creates) the slot and starts replication from
// the later of its confirmed position and what was acknowledged. It returns
// that start and the server's WAL end at this moment: a client cursor up
// to it is a position this session will reach, so clients resuming right
// after a restart wait instead of getting a reset.
func (r *Reader) startReplication(ctx context.Context, sqlConn *pgx.Conn, repl *pgconn.PgConn, si serverInfo, h cdc.Handler) (start, walEnd pglogrepl.LSN, err error) {
	db := repl.ParameterStatus("database")
	if db == "" {
		if err := sqlConn.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
			return 0, 0, fmt.Errorf("postgres: read database name: %w", err)
		}
	}
	start, err = r.ensureSlot(ctx, sqlConn, repl, db, h)
	if err != nil {
		return 0, 0, err
	}
	if a := pglogrepl.LSN(r.acked.Load()); a > start {
		start = a // acknowledged, perhaps not yet reported to the server
	}
	sys, err := pglogrepl.IdentifySystem(ctx, repl)
	if err != nil {
		return 0, 0, fmt.Errorf("postgres: identify system: %w", err)
	}
	args := []string{"proto_version '1'", "publication_names " + quoteLiteral(r.cfg.Publication)}
	if si.version >= 140000 {
		args = []string{"proto_version '2'", "publication_names " + quoteLiteral(r.cfg.Publication), "streaming 'on'"}
	}
	err = pglogrepl.StartReplication(ctx, repl, r.cfg.Slot, start, pglogrepl.StartReplicationOptions{Mode: pglogrepl.LogicalReplication, PluginArgs: args})
	if err != nil {
		if pgCode(err) == codeObjectInUse {
			return 0, 0, fmt.Errorf("postgres: start replication: %w: %w", ErrSlotInUse, err)
		}
		// Otherwise e.g. the slot was invalidated or dropped between the
		// check and now: the next session's check sees it.
		return 0, 0, fmt.Errorf("postgres: start replication: %w", err)
	}
	// The slot is ours now: its confirmed position cannot move under us, so
	// re-read it (a previous holder may have confirmed more after our check).
	if after, err := querySlot(ctx, sqlConn, r.cfg.Slot); err == nil && after.exists && after.confirmed > start {
		start = after.confirmed
	}
	return start, sys.XLogPos, nil
}

// stop ends a session whose ctx was cancelled: the handler finishes what it
// was handed, then the server is told what was acknowledged before leaving.
func (s *session) stop(ctx context.Context) {
	dctx, cancelDrain := context.WithTimeout(context.WithoutCancel(ctx), drainTimeout)
	s.h.Drain(dctx)
	cancelDrain()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.sendStatus(fctx, false); err != nil {
		s.r.log.Warn("final status update failed", logErr, err)
		return
	}
	// End the copy and wait for the server's answer: it processes the
	// status update first, so the slot has confirmed it before we exit (a
	// plain close may race the walsender).
	_ = s.conn.Conn().SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := pglogrepl.SendStandbyCopyDone(fctx, s.conn); err != nil {
		s.r.log.Debug("ending replication", logErr, err)
	}
	s.r.log.Info("stopped", logSlot, s.r.cfg.Slot, "flushed", pglogrepl.LSN(s.flushLSN()).String())
}

// idle handles a keepalive's WAL end while no transaction is open: every
// transaction before it was handed over. A handler that is a cdc.Idler
// passes it through its sinks and acknowledges it like a transaction, so
// that clients' cursors (ping ids) reach it before the slot does;
// otherwise it is acknowledged here once the handler has acknowledged
// everything it was handed.
func (s *session) idle(end uint64) {
	if i, ok := s.h.(cdc.Idler); ok {
		if end > s.idleSent && end > s.delivered {
			s.idleSent = end
			i.Idle(cdc.Position(end))
		}
		return
	}
	if s.delivered <= s.r.acked.Load() && end > s.idleAck {
		s.idleAck = end
	}
}

// pending reports whether a transaction is open (streamed or not): the
// server's WAL end may not be acknowledged or reported then, since that
// transaction ends before it.
func (s *session) pending() bool { return s.cur != nil || len(s.streams) > 0 }

// flushLSN is the position reported as flushed: what the consumer
// acknowledged, never less than where streaming started.
func (s *session) flushLSN() uint64 {
	return max(s.r.acked.Load(), s.start, s.idleAck)
}

func (s *session) sendStatus(ctx context.Context, replyRequested bool) error {
	flush := s.flushLSN()
	write := max(s.received, flush)
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pglogrepl.LSN(write),
		WALFlushPosition: pglogrepl.LSN(flush),
		WALApplyPosition: pglogrepl.LSN(flush),
		ClientTime:       time.Now(),
		ReplyRequested:   replyRequested,
	})
	if err != nil {
		return fmt.Errorf("postgres: send standby status: %w", err)
	}
	s.nextStatus = time.Now().Add(s.r.cfg.StatusInterval)
	return nil
}

func (s *session) run(ctx context.Context) error {
	cfg := &s.r.cfg
	s.lastRecv = time.Now()
	s.nextStatus = time.Now() // report the start position at once
	// Receives pass context.Background so that pgconn sets up no context
	// watcher per message (its largest allocation on the hot path); the
	// read deadline of the connection bounds each receive instead, and a
	// cancelled ctx moves that deadline to the past to end a blocked read.
	netConn := s.conn.Conn()
	stop := context.AfterFunc(ctx, func() { _ = netConn.SetReadDeadline(time.Unix(1, 0)) })
	defer func() {
		stop()
		_ = netConn.SetReadDeadline(time.Time{})
	}()
	var rdeadline time.Time
	for {
		now := time.Now()
		if !now.Before(s.nextStatus) {
			// Ask for a reply when the server has been quiet: its keepalive
			// proves the connection alive.
			if err := s.sendStatus(ctx, now.Sub(s.lastRecv) >= cfg.StatusInterval); err != nil {
				return err
			}
		}
		if idle := now.Sub(s.lastRecv); idle >= cfg.IdleTimeout {
			return fmt.Errorf("postgres: no message from the server for %s: connection presumed dead", idle.Round(time.Millisecond))
		}
		deadline := s.lastRecv.Add(cfg.IdleTimeout)
		if s.nextStatus.Before(deadline) {
			deadline = s.nextStatus
		}
		if !deadline.Equal(rdeadline) {
			if err := netConn.SetReadDeadline(deadline); err != nil {
				return fmt.Errorf("postgres: receive: %w", err)
			}
			rdeadline = deadline
		}
		if ctx.Err() != nil { // cancelled before the deadline above was set
			return ctx.Err()
		}
		msg, err := s.conn.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("postgres: receive: %w", err)
		}
		s.lastRecv, s.heard = time.Now(), true
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := s.copyData(ctx, msg.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("postgres: replication: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return errors.New("postgres: the server ended replication")
		}
	}
}

func (s *session) copyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("postgres: keepalive: %w", err)
		}
		end := uint64(ka.ServerWALEnd)
		if !s.pending() {
			if end > s.progress {
				s.progress = end
				s.h.Progress(cdc.Position(end))
			}
			s.idle(end)
		}
		if ka.ReplyRequested {
			return s.sendStatus(ctx, false)
		}
		return nil
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("postgres: xlogdata: %w", err)
		}
		if end := uint64(xld.WALStart) + uint64(len(xld.WALData)); end > s.received {
			s.received = end
		}
		if err := s.message(ctx, xld.WALData); err != nil {
			return err
		}
		return nil
	}
	return nil
}

// message handles one pgoutput message.
func (s *session) message(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	if data[0] != 'R' && data[0] != 'Y' {
		s.lastRelation = 0 // a root's Relation message is followed by its partition's, types aside
	}
	switch data[0] {
	case 'I', 'U', 'D':
		return s.row(data)
	case 'B':
		if s.cur != nil {
			return errors.New("postgres: protocol: begin inside a transaction")
		}
		// Begin: final LSN (8 bytes), commit time (8), xid (4).
		if len(data) < 21 {
			return errShort
		}
		s.curXid = binary.BigEndian.Uint32(data[17:21])
		s.cur = s.h.Begin()
		return nil
	case 'T':
		return s.truncate(data[1:])
	case 'Y', 'O', 'M':
		return nil // types, origins and logical messages carry no row changes
	}
	m, err := parseV2(data, s.inStream)
	if err != nil {
		return fmt.Errorf("postgres: decode %q message: %w", data[0], err)
	}
	switch m := m.(type) {
	case *pglogrepl.CommitMessage:
		if s.cur == nil {
			return errors.New("postgres: protocol: commit outside a transaction")
		}
		tx := s.cur
		s.cur = nil
		return s.commit(ctx, tx, cdc.Commit{Position: cdc.Position(m.TransactionEndLSN), Time: m.CommitTime, Xid: uint64(s.curXid)})
	case *pglogrepl.RelationMessageV2:
		return s.relationMsg(ctx, &m.RelationMessage)
	case *pglogrepl.StreamStartMessageV2:
		if s.inStream {
			return errors.New("postgres: protocol: stream start inside a stream")
		}
		s.inStream, s.streamXid = true, m.Xid
		if s.streams[m.Xid] == nil {
			s.streams[m.Xid] = &streamedTx{top: s.h.Begin(), subs: map[uint32]cdc.Tx{}}
		}
	case *pglogrepl.StreamStopMessageV2:
		s.inStream = false
	case *pglogrepl.StreamCommitMessageV2:
		st := s.streams[m.Xid]
		if st == nil {
			return fmt.Errorf("postgres: protocol: stream commit of unknown transaction %d", m.Xid)
		}
		delete(s.streams, m.Xid)
		for _, sub := range st.subs {
			st.top.Merge(sub)
		}
		return s.commit(ctx, st.top, cdc.Commit{Position: cdc.Position(m.TransactionEndLSN), Time: m.CommitTime, Xid: uint64(m.Xid)})
	case *pglogrepl.StreamAbortMessageV2:
		if m.SubXid == m.Xid {
			delete(s.streams, m.Xid) // the whole transaction: nothing of it is published
		} else if st := s.streams[m.Xid]; st != nil {
			delete(st.subs, m.SubXid) // a rolled-back savepoint
		}
	}
	return nil
}

func (s *session) commit(ctx context.Context, tx cdc.Tx, c cdc.Commit) error {
	if err := s.h.Commit(ctx, tx, c); err != nil {
		return errHandler{fmt.Errorf("postgres: commit %s: %w", pglogrepl.LSN(c.Position), err)}
	}
	if end := uint64(c.Position); end > s.delivered {
		s.delivered = end
	}
	return nil
}

// parseV2 decodes a non-row pgoutput message with pglogrepl, turning a
// decoder panic on a malformed message into an error.
func parseV2(data []byte, inStream bool) (m pglogrepl.Message, err error) {
	defer func() {
		if p := recover(); p != nil {
			m, err = nil, fmt.Errorf("malformed message: %v", p)
		}
	}()
	return pglogrepl.ParseV2(data, inStream)
}

// txFor returns the Tx a change belongs to: the open transaction, or inside
// a stream the streamed transaction or its subtransaction xid.
func (s *session) txFor(xid uint32) (cdc.Tx, error) {
	if !s.inStream {
		if s.cur == nil {
			return nil, errors.New("postgres: protocol: change outside a transaction")
		}
		return s.cur, nil
	}
	st := s.streams[s.streamXid]
	if st == nil {
		return nil, fmt.Errorf("postgres: protocol: change in unknown stream %d", s.streamXid)
	}
	if xid == s.streamXid || xid == 0 {
		return st.top, nil
	}
	sub := st.subs[xid]
	if sub == nil {
		sub = s.h.Begin()
		st.subs[xid] = sub
	}
	return sub, nil
}

var errShort = errors.New("postgres: protocol: message too short")

// changeXid splits off the (sub)transaction id that a change message carries
// inside a streamed transaction (0 outside one), and checks that at least
// the 5 bytes every change message has next (a relation id or count, then a
// flag byte) are there.
func (s *session) changeXid(p []byte) (uint32, []byte, error) {
	var xid uint32
	if s.inStream {
		if len(p) < 4 {
			return 0, nil, errShort
		}
		xid, p = binary.BigEndian.Uint32(p), p[4:]
	}
	if len(p) < 5 {
		return 0, nil, errShort
	}
	return xid, p, nil
}

// truncate decodes a Truncate message (bounds-checked: pglogrepl trusts the
// relation count) into one Truncate change per relation.
func (s *session) truncate(p []byte) error {
	xid, p, err := s.changeXid(p)
	if err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(p)
	p = p[5:] // count, options
	if uint64(n)*4 > uint64(len(p)) {
		return errShort
	}
	tx, err := s.txFor(xid)
	if err != nil {
		return err
	}
	for i := uint32(0); i < n; i++ {
		id := binary.BigEndian.Uint32(p[4*i:])
		rel := s.r.relations[id]
		if rel == nil {
			return fmt.Errorf("postgres: protocol: truncate of unknown relation %d", id)
		}
		s.change = cdc.Change{Table: rel.table, Op: cdc.Truncate}
		tx.Add(&s.change)
	}
	return nil
}

// row decodes an Insert, Update or Delete message without copying: the
// values point into the wire buffer, valid until Add returns.
func (s *session) row(data []byte) error {
	op, p := data[0], data[1:]
	xid, p, err := s.changeXid(p)
	if err != nil {
		return err
	}
	relID := binary.BigEndian.Uint32(p)
	p = p[4:]
	rel := s.r.relations[relID]
	if rel == nil {
		return fmt.Errorf("postgres: protocol: change to unknown relation %d", relID)
	}
	tx, err := s.txFor(xid)
	if err != nil {
		return err
	}
	c := &s.change
	*c = cdc.Change{Table: rel.table}
	switch op {
	case 'I':
		c.Op = cdc.Insert
		if p[0] != 'N' {
			return fmt.Errorf("postgres: protocol: insert tuple type %q", p[0])
		}
		if s.newBuf, _, err = decodeTuple(p[1:], s.newBuf[:0], rel, false); err != nil {
			return err
		}
		c.New = s.newBuf
	case 'U':
		c.Op = cdc.Update
		if kind := p[0]; kind == 'K' || kind == 'O' {
			if s.oldBuf, p, err = decodeTuple(p[1:], s.oldBuf[:0], rel, kind == 'K'); err != nil {
				return err
			}
			c.Old = s.oldBuf
			if len(p) == 0 {
				return errShort
			}
		}
		if p[0] != 'N' {
			return fmt.Errorf("postgres: protocol: update tuple type %q", p[0])
		}
		if s.newBuf, _, err = decodeTuple(p[1:], s.newBuf[:0], rel, false); err != nil {
			return err
		}
		c.New = s.newBuf
	case 'D':
		c.Op = cdc.Delete
		kind := p[0]
		if kind != 'K' && kind != 'O' {
			return fmt.Errorf("postgres: protocol: delete tuple type %q", kind)
		}
		if s.oldBuf, _, err = decodeTuple(p[1:], s.oldBuf[:0], rel, kind == 'K'); err != nil {
			return err
		}
		c.Old = s.oldBuf
	}
	if rel.hasConv {
		s.textBuf = s.textBuf[:0]
		castImage(rel, c.Old, &s.textBuf)
		castImage(rel, c.New, &s.textBuf)
	}
	tx.Add(c)
	return nil
}

// castImage rewrites the values whose output text differs from their text
// cast.
func castImage(rel *relation, img []cdc.Value, scratch *[]byte) {
	for i := range img {
		if img[i].Kind == cdc.Text && rel.conv[i] != convNone {
			img[i].Text = castText(rel.conv[i], img[i].Text, scratch)
		}
	}
}

// decodeTuple appends one TupleData's columns to buf. keyOnly marks an old
// key image: Postgres sends its non-key columns as NULL, they are Absent.
func decodeTuple(p []byte, buf []cdc.Value, rel *relation, keyOnly bool) ([]cdc.Value, []byte, error) {
	if len(p) < 2 {
		return buf, p, errShort
	}
	n := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	t := rel.table
	if n != len(t.Columns) {
		return buf, p, fmt.Errorf("postgres: protocol: %s.%s: row has %d columns, relation has %d", t.Schema, t.Name, n, len(t.Columns))
	}
	for i := 0; i < n; i++ {
		if len(p) < 1 {
			return buf, p, errShort
		}
		kind := p[0]
		p = p[1:]
		var v cdc.Value
		switch kind {
		case 'n':
			v.Kind = cdc.Null
		case 'u':
			v.Kind = cdc.Unchanged
		case 't', 'b':
			if len(p) < 4 {
				return buf, p, errShort
			}
			l := binary.BigEndian.Uint32(p)
			p = p[4:]
			if uint64(l) > uint64(len(p)) {
				return buf, p, errShort
			}
			v = cdc.Value{Kind: cdc.Text, Text: p[:l:l]}
			p = p[l:]
		default:
			return buf, p, fmt.Errorf("postgres: protocol: column kind %q", kind)
		}
		if keyOnly && !t.Key[i] {
			v = cdc.Value{Kind: cdc.Absent}
		}
		buf = append(buf, v)
	}
	return buf, p, nil
}
