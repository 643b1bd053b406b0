package main

// The fault-injection suite: the built binary reads a private database
// through a TCP proxy while the tests break things — the replication
// session, the server, the network path, the state dir, the daemon itself.
// After every fault, a steady SSE client must have received every committed
// row's tag (or an honest reset, where one is allowed), and the slot's
// confirmed_flush_lsn / the MySQL checkpoint must never cover a row that
// the client had not received.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/client"
	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/stream/ssereader"
	"github.com/tagstream/tagstream/testcontainers"
)

// faultSourceTimeout is --source-timeout in the suite: a stalled connection
// is noticed after it (the tests wait for the reconnect, never for a time).
const faultSourceTimeout = "1500ms"

// faultDB is the database side of a rig.
type faultDB interface {
	// insert commits todo id and returns an upper bound of its commit's
	// position (read after the commit, on the same connection).
	insert(id int) (uint64, error)
	// durable returns the position a restart of tagstream resumes from:
	// the slot's confirmed_flush_lsn, or the checkpoint file's position.
	durable(t *testing.T) uint64
	// session identifies the reader's replication session on the server
	// (walsender pid, binlog dump thread id); 0 when there is none.
	session(t *testing.T) uint64
}

// rig is a tagstream process, a steady client subscribed to todo:*, and
// what that client has received.
type rig struct {
	t    *testing.T
	db   faultDB
	args []string
	d    *daemon
	c    *sseClient
	wrap []string // starts the binary (startDaemonWrapped); nil: directly

	mu     sync.Mutex
	next   int            // the next todo id to insert
	upper  map[int]uint64 // id -> upper bound of its commit position
	seen   map[int]bool
	lastID string // the id of the last event of any kind: the client's resume cursor
}

func newRig(t *testing.T, db faultDB, args ...string) *rig {
	return newWrappedRig(t, db, nil, args...)
}

func newWrappedRig(t *testing.T, db faultDB, wrap []string, args ...string) *rig {
	r := &rig{t: t, db: db, args: args, wrap: wrap, next: 1, upper: map[int]uint64{}, seen: map[int]bool{}}
	r.start()
	return r
}

// start runs the daemon and (re)subscribes the steady client with its
// cursor: a first start is `ready resumed:false`, every later one must
// resume without a reset.
func (r *rig) start() {
	r.t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	r.d = startDaemonWrapped(r.t, addr, r.wrap, r.args...)
	first := r.lastID == ""
	r.c = subscribe(r.t, r.d.base, "tags=todo:*", r.lastID)
	for {
		ev := r.event()
		if ev.Event != "ready" {
			continue
		}
		if want := fmt.Sprintf(`{"resumed":%v}`, !first); ev.Data != want {
			r.t.Fatalf("after a restart with cursor %s: %s, want ready %s", r.lastID, ev, want)
		}
		return
	}
}

// event returns the client's next event and records it; a reset fails the
// test: in every scenario of this suite continuity is provable.
func (r *rig) event() sseEvent {
	r.t.Helper()
	ev, ok := r.recv()
	if !ok {
		r.t.Fatal("event stream ended")
	}
	return ev
}

// recv reads one event (ok false when the stream ended) and records it.
func (r *rig) recv() (sseEvent, bool) {
	r.t.Helper()
	select {
	case ev, ok := <-r.c.events:
		if !ok {
			return ev, false
		}
		r.record(ev)
		return ev, true
	case <-time.After(30 * time.Second):
		r.t.Fatalf("no event within 30s; seen %d of %d rows\n%s", len(r.seen), r.next-1, r.d.Log())
	}
	return sseEvent{}, false
}

func (r *rig) record(ev sseEvent) {
	r.t.Helper()
	if ev.ID != "" {
		r.mu.Lock()
		r.lastID = ev.ID
		r.mu.Unlock()
	}
	switch ev.Event {
	case "reset":
		r.t.Fatalf("reset where continuity is provable: %s\n%s", ev, r.d.Log())
	case "invalidate":
		for _, tag := range strings.Fields(strings.TrimPrefix(render(r.t, ev), "invalidate ")) {
			n, err := strconv.Atoi(strings.TrimPrefix(tag, "todo:"))
			if err != nil {
				r.t.Fatalf("unexpected tag %q", tag)
			}
			r.mu.Lock()
			r.seen[n] = true
			r.mu.Unlock()
		}
	}
}

// write commits n todos, one transaction each.
func (r *rig) write(n int) {
	r.t.Helper()
	for range n {
		if err := r.insertNext(); err != nil {
			r.t.Fatal(err)
		}
	}
}

func (r *rig) insertNext() error {
	r.mu.Lock()
	id := r.next
	r.mu.Unlock()
	u, err := r.db.insert(id)
	if err != nil {
		return fmt.Errorf("insert todo %d: %w", id, err)
	}
	r.mu.Lock()
	r.upper[id] = u
	r.next = id + 1
	r.mu.Unlock()
	return nil
}

func (r *rig) missing() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for id := 1; id < r.next; id++ {
		if !r.seen[id] {
			n++
		}
	}
	return n
}

// deliveredAll reads events until every committed row's tag arrived.
func (r *rig) deliveredAll() {
	r.t.Helper()
	for r.missing() > 0 {
		r.event()
	}
}

// checkDurable asserts that the position a restart resumes from covers no
// row the client has not received. Call it when the client holds
// everything the daemon sent (the daemon stopped and its stream drained).
func (r *rig) checkDurable(label string) {
	r.t.Helper()
	pos := r.db.durable(r.t)
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, u := range r.upper {
		if u <= pos && !r.seen[id] {
			r.t.Fatalf("%s: durable position %d covers todo %d (committed by %d), which the client never received", label, pos, id, u)
		}
	}
}

// stop ends the daemon with SIGTERM (exit 0 asserted), drains the client's
// stream and checks the durable position against what it received.
func (r *rig) stop(label string) {
	r.t.Helper()
	r.d.stop(r.t)
	for {
		if _, ok := r.recv(); !ok {
			break
		}
	}
	r.checkDurable(label)
}

// fault runs one scenario: rows before, the fault, rows during and after
// it, then every row delivered and the durable position behind delivery.
func (r *rig) fault(name string, inject func(), after func()) {
	r.t.Helper()
	r.t.Logf("fault: %s", name)
	r.write(3)
	r.deliveredAll()
	inject()
	r.write(3)
	if after != nil {
		after()
	}
	r.write(3)
	r.deliveredAll()
	r.checkDurable(name)
}

// reconnect returns a fault's inject and after functions: after waits
// until the reader replicates again in a new session.
func (r *rig) reconnect(inject func()) (func(), func()) {
	var old uint64
	return func() {
			waitFor(r.t, func() bool { old = r.db.session(r.t); return old != 0 })
			inject()
		}, func() {
			waitFor(r.t, func() bool { s := r.db.session(r.t); return s != 0 && s != old })
		}
}

// underLoad writes rows without pause while SIGTERM stops the daemon, then
// restarts it: exit 0, the durable position behind delivery, the client
// resumes without a reset and receives every row.
func (r *rig) underLoad() {
	r.t.Helper()
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if err := r.insertNext(); err != nil {
				done <- err
				return
			}
		}
	}()
	base := r.next
	for {
		r.mu.Lock()
		n := len(r.seen)
		r.mu.Unlock()
		if n >= base+100 {
			break
		}
		r.event()
	}
	r.stop("SIGTERM under load")
	r.start()
	// Wait for rows written after the restart, then stop writing.
	r.mu.Lock()
	target := r.next + 50
	r.mu.Unlock()
	for {
		r.mu.Lock()
		n := r.next
		r.mu.Unlock()
		if n >= target {
			break
		}
		r.event()
	}
	close(stop)
	if err := <-done; err != nil {
		r.t.Fatal(err)
	}
	r.deliveredAll()
	r.t.Logf("SIGTERM under load: %d rows committed, all received, resumed without reset", r.next-1)
}

// quietRestart: WAL the steady client does not watch (unwatched writes it:
// transactions without its tags, or no transaction of this database at
// all) is acknowledged, and the source's position moves past the client's
// last invalidation; a clean restart then must still let the
// client resume (its cursor is where the hub was), not reset it.
func (r *rig) quietRestart(unwatched func()) {
	r.t.Helper()
	r.t.Logf("fault: clean restart after WAL the client does not watch")
	r.write(2)
	r.deliveredAll()
	before := r.db.durable(r.t)
	unwatched()
	waitFor(r.t, func() bool { return r.db.durable(r.t) > before })
	r.stop("clean restart after unwatched transactions")
	r.start()
	r.write(2)
	r.deliveredAll()
}

// pgFaultDB is a Postgres database of a private server.
type pgFaultDB struct {
	dsn, slot string
	w         *pgx.Conn
}

func (p *pgFaultDB) insert(id int) (uint64, error) {
	ctx := context.Background()
	if p.w == nil || p.w.IsClosed() {
		w, err := pgx.Connect(ctx, p.dsn)
		if err != nil {
			return 0, err
		}
		p.w = w
	}
	if _, err := p.w.Exec(ctx, `INSERT INTO todos (id, user_id) VALUES ($1, 1)`, id); err != nil {
		p.w.Close(ctx)
		p.w = nil
		return 0, err
	}
	var lsn string
	if err := p.w.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		p.w.Close(ctx)
		p.w = nil
		return 0, err
	}
	return parseLSN(lsn)
}

func parseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad LSN %q", s)
	}
	return h<<32 | l, nil
}

func (p *pgFaultDB) durable(t *testing.T) uint64 {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, p.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var lsn string
	if err := c.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, p.slot).Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	n, err := parseLSN(lsn)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (p *pgFaultDB) session(t *testing.T) uint64 {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, p.dsn)
	if err != nil {
		return 0 // restarting
	}
	defer c.Close(ctx)
	var pid int64
	if err := c.QueryRow(ctx, `SELECT coalesce(max(active_pid), 0) FROM pg_replication_slots WHERE slot_name = $1`, p.slot).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return uint64(pid)
}

// pgExec runs statements on a fresh connection (the server may have
// restarted since the last one).
func pgExec(t *testing.T, dsn string, sql ...string) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	for _, s := range sql {
		if _, err := c.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// writeTodoRules writes the fault tests' rules file (todo:{id}).
func writeTodoRules(t *testing.T) string {
	t.Helper()
	return writeFile(t, "rules.yaml", "rules:\n  - table: todos\n    tags: [\"todo:{id}\"]\n")
}

// hostOf returns a DSN's host:port.
func hostOf(t *testing.T, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// viaProxy rewrites a DSN's host:port to the proxy's.
func viaProxy(t *testing.T, dsn string, p *testcontainers.Proxy) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = p.Addr()
	return u.String()
}

// TestFaultsPostgres: one daemon reads a private Postgres through a proxy
// while the suite terminates its walsender, cuts and stalls its
// connections, restarts the server fast and immediately, and stops the
// daemon under load.
func TestFaultsPostgres(t *testing.T) {
	t.Parallel()
	// The server notices a silent standby (a stalled to-server path) after
	// wal_sender_timeout; the reader's status updates come every half second.
	srv := testcontainers.NewPrivatePostgres(t, "wal_sender_timeout=3s")
	ctx := context.Background()
	dsn, err := srv.CreateDatabase(ctx, "faults")
	if err != nil {
		t.Fatal(err)
	}
	pgExec(t, dsn, `CREATE TABLE todos (id int PRIMARY KEY, user_id int)`, `CREATE TABLE others (id int PRIMARY KEY)`)
	proxy := testcontainers.NewProxy(t, hostOf(t, dsn))
	db := &pgFaultDB{dsn: dsn, slot: "faults"}
	t.Cleanup(func() {
		if db.w != nil {
			db.w.Close(context.Background())
		}
	})
	r := newRig(t, db, "--db", viaProxy(t, dsn, proxy), "--rules", writeTodoRules(t),
		"--slot", "faults", "--publication", "faults", "--source-timeout", faultSourceTimeout)

	inj, after := r.reconnect(func() {
		pgExec(t, dsn, fmt.Sprintf(`SELECT pg_terminate_backend(%d)`, db.session(t)))
	})
	r.fault("walsender terminated", inj, after)
	inj, after = r.reconnect(proxy.Cut)
	r.fault("proxy cut", inj, after)
	inj, after = r.reconnect(func() { proxy.Stall(testcontainers.ToClient) })
	r.fault("proxy stalls server->reader", inj, after)
	inj, after = r.reconnect(func() { proxy.Stall(testcontainers.ToServer) })
	r.fault("proxy stalls reader->server", inj, after)
	for _, mode := range []testcontainers.ShutdownMode{testcontainers.Fast, testcontainers.Immediate} {
		name := map[testcontainers.ShutdownMode]string{testcontainers.Fast: "fast", testcontainers.Immediate: "immediate"}[mode]
		r.fault("postgres restarted ("+name+")", func() {
			srv.Stop(mode)
			// Part B: /readyz is 503 while the source is not streaming.
			waitFor(t, func() bool {
				resp, err := http.Get(r.d.base + "/readyz")
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == http.StatusServiceUnavailable
			})
			if db.w != nil {
				db.w.Close(ctx)
				db.w = nil
			}
			if err := srv.Start(ctx); err != nil {
				t.Fatal(err)
			}
		}, nil)
	}
	r.quietRestart(func() {
		pgExec(t, dsn, `INSERT INTO others VALUES (1)`, `INSERT INTO others VALUES (2)`)
	})
	// WAL of another database: this slot decodes none of it, only the
	// keepalives' WAL end moves (the idle position).
	r.quietRestart(func() {
		pgExec(t, srv.AdminDSN(), `CREATE TABLE IF NOT EXISTS elsewhere (id int)`, `INSERT INTO elsewhere VALUES (1)`)
	})
	r.underLoad()
	r.stop("final stop")
}

// myFaultDB is a MariaDB database of a private server.
type myFaultDB struct {
	dsn      string // direct, not through the proxy
	stateDir string
	w        *gomysql.Conn
	// readFile reads the checkpoint file (through nsenter when the state
	// dir is only mounted in the daemon's namespace); nil: os.ReadFile.
	readFile func(path string) ([]byte, error)
}

func (m *myFaultDB) conn() (*gomysql.Conn, error) {
	if m.w != nil {
		return m.w, nil
	}
	u, err := url.Parse(m.dsn)
	if err != nil {
		return nil, err
	}
	pass, _ := u.User.Password()
	c, err := gomysql.Connect(u.Host, u.User.Username(), pass, strings.TrimPrefix(u.Path, "/"))
	if err != nil {
		return nil, err
	}
	m.w = c
	return c, nil
}

func (m *myFaultDB) drop() {
	if m.w != nil {
		m.w.Close()
		m.w = nil
	}
}

func (m *myFaultDB) insert(id int) (uint64, error) {
	c, err := m.conn()
	if err != nil {
		return 0, err
	}
	if _, err := c.Execute(fmt.Sprintf(`INSERT INTO todos (id, user_id) VALUES (%d, 1)`, id)); err != nil {
		m.drop()
		return 0, err
	}
	res, err := c.Execute(`SHOW MASTER STATUS`)
	if err != nil {
		m.drop()
		return 0, fmt.Errorf("show master status: %w", err)
	}
	if res.RowNumber() != 1 {
		return 0, fmt.Errorf("show master status: %d rows", res.RowNumber())
	}
	file, _ := res.GetString(0, 0)
	pos, _ := res.GetUint(0, 1)
	seq, err := strconv.ParseUint(file[strings.LastIndexByte(file, '.')+1:], 10, 32)
	if err != nil {
		return 0, fmt.Errorf("binlog file %q: %w", file, err)
	}
	return seq<<32 | pos, nil
}

func (m *myFaultDB) durable(t *testing.T) uint64 {
	t.Helper()
	read := m.readFile
	if read == nil {
		read = os.ReadFile
	}
	// One source per state dir in this suite: its only checkpoint file.
	out, err := read(m.stateDir)
	if err != nil {
		t.Fatalf("read checkpoint: %v", err)
	}
	var cp struct {
		Position uint64 `json:"position"`
	}
	if err := json.Unmarshal(out, &cp); err != nil || cp.Position == 0 {
		t.Fatalf("checkpoint %q: %v", out, err)
	}
	return cp.Position
}

func (m *myFaultDB) session(t *testing.T) uint64 {
	t.Helper()
	c, err := m.conn()
	if err != nil {
		return 0 // restarting
	}
	res, err := c.Execute(`SELECT coalesce(max(ID), 0) FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'`)
	if err != nil {
		m.drop()
		return 0
	}
	id, _ := res.GetUint(0, 0)
	return id
}

// checkpointFile reads the one checkpoint file in dir.
func checkpointFile(dir string) ([]byte, error) {
	files, err := filepath.Glob(filepath.Join(dir, "mysql-*.json"))
	if err != nil {
		return nil, err
	}
	if len(files) != 1 {
		return nil, fmt.Errorf("want one checkpoint file in %s, have %v", dir, files)
	}
	return os.ReadFile(files[0])
}

// privateMySQLTodos starts a private MariaDB with a todos table and returns
// it with the database's DSN.
func privateMySQLTodos(t *testing.T) (*testcontainers.PrivateMySQL, string) {
	t.Helper()
	srv := testcontainers.NewPrivateMySQL(t)
	ctx := context.Background()
	dsn, err := srv.CreateDatabase(ctx, "faults")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Exec(ctx, "CREATE TABLE faults.todos (id int PRIMARY KEY, user_id int)", "CREATE TABLE faults.others (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	return srv, dsn
}

// TestFaultsMySQL: one daemon reads a private MariaDB through a proxy while
// the suite kills its binlog dump thread, cuts and stalls its connections,
// restarts and kills the server, and stops the daemon under load.
func TestFaultsMySQL(t *testing.T) {
	t.Parallel()
	srv, dsn := privateMySQLTodos(t)
	ctx := context.Background()
	proxy := testcontainers.NewProxy(t, hostOf(t, dsn))
	stateDir := t.TempDir()
	db := &myFaultDB{dsn: dsn, stateDir: stateDir, readFile: func(dir string) ([]byte, error) { return checkpointFile(dir) }}
	t.Cleanup(db.drop)
	r := newRig(t, db, "--db", viaProxy(t, dsn, proxy), "--rules", writeTodoRules(t),
		"--state-dir", stateDir, "--server-id", "4301", "--source-timeout", faultSourceTimeout)

	inj, after := r.reconnect(func() {
		c, err := db.conn()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Execute(fmt.Sprintf("KILL %d", db.session(t))); err != nil {
			t.Fatal(err)
		}
	})
	r.fault("binlog dump thread killed", inj, after)
	inj, after = r.reconnect(proxy.Cut)
	r.fault("proxy cut", inj, after)
	inj, after = r.reconnect(func() { proxy.Stall(testcontainers.ToClient) })
	r.fault("proxy stalls server->reader", inj, after)
	// A binlog dump sends nothing to the server once it runs: a silent
	// reader->server path changes nothing, the session goes on (the
	// visibility fence's queries, stalled too, time out and reconnect).
	r.fault("proxy stalls reader->server", func() { proxy.Stall(testcontainers.ToServer) }, nil)
	for _, mode := range []testcontainers.ShutdownMode{testcontainers.Fast, testcontainers.Immediate} {
		name := map[testcontainers.ShutdownMode]string{testcontainers.Fast: "restarted", testcontainers.Immediate: "killed"}[mode]
		r.fault("mariadb "+name, func() {
			srv.Stop(mode)
			db.drop()
			if err := srv.Start(ctx); err != nil {
				t.Fatal(err)
			}
		}, nil)
	}
	r.quietRestart(func() {
		if err := srv.Exec(ctx, "INSERT INTO faults.others VALUES (1)", "INSERT INTO faults.others VALUES (2)"); err != nil {
			t.Fatal(err)
		}
	})
	r.underLoad()
	r.stop("final stop")
}

// needRootMounts fails (CI) or skips the test unless it may mount a tmpfs
// in a private mount namespace: the state-dir faults need a file system
// that is read-only or full for tagstream alone.
func needRootMounts(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "not root"
	} else if _, err := exec.LookPath("unshare"); err != nil {
		why = "no unshare"
	} else if _, err := exec.LookPath("nsenter"); err != nil {
		why = "no nsenter"
	} else if out, err := exec.Command("unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt").CombinedOutput(); err != nil {
		why = fmt.Sprintf("cannot mount a tmpfs in a private mount namespace: %v %s", err, out)
	}
	if why == "" {
		return
	}
	msg := "state-dir faults need root with unshare -m and nsenter (a tmpfs of tagstream's own): " + why
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// tmpfsWrap is a wrap for startDaemonWrapped that runs the binary in a
// private mount namespace with a tmpfs of size bytes (options opts) on
// dir, after running setup there.
func tmpfsWrap(dir, opts, setup string) []string {
	script := fmt.Sprintf(`mount -t tmpfs -o %s tmpfs '%s' && %s exec "$0" "$@"`, opts, dir, setup)
	return []string{"unshare", "-m", "sh", "-c", script}
}

// inNamespace runs a shell command in the daemon's mount namespace.
func inNamespace(d *daemon, script string) ([]byte, error) {
	return exec.Command("nsenter", "-t", strconv.Itoa(d.Cmd.Process.Pid), "-m", "sh", "-c", script).CombinedOutput()
}

// TestFaultsMySQLStateDir: a state dir that is read-only or full at start
// is a configuration error (exit 2, one line naming it); one that fills up
// or turns read-only while running costs one error line each time, never a
// checkpoint beyond delivery, and the checkpoint catches up once the dir
// is writable again.
func TestFaultsMySQLStateDir(t *testing.T) {
	needRootMounts(t)
	t.Parallel()
	dsn := testcontainers.MySQL(t)
	db := mysqlConn(t, dsn)
	execMySQL(t, db, `CREATE TABLE todos (id int PRIMARY KEY, user_id int)`)
	rulesFile := writeTodoRules(t)

	for _, tc := range []struct{ name, opts, setup, want string }{
		{"read-only", "ro,size=64k", "", "read-only file system"},
		{"full", "size=4k", "cat /dev/zero > '%s/fill' 2>/dev/null;", "no space left on device"},
	} {
		dir := t.TempDir()
		setup := tc.setup
		if strings.Contains(setup, "%s") {
			setup = fmt.Sprintf(setup, dir)
		}
		argv := append(tmpfsWrap(dir, tc.opts, setup), binary, "run", "--listen", "127.0.0.1:0", "--db", dsn, "--rules", rulesFile, "--state-dir", dir, "--server-id", "4302")
		cmd := exec.Command(argv[0], argv[1:]...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		code := -1
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		last := lines[len(lines)-1]
		prefix := fmt.Sprintf("tagstream: mysql: configuration: state dir %s is not writable (the checkpoint file lives there; see --state-dir): ", dir)
		if code != 2 || !strings.HasPrefix(last, prefix) || !strings.HasSuffix(last, tc.want) {
			t.Fatalf("%s state dir at start: exit %d, last line %q; want exit 2 and %q…%q\n%s", tc.name, code, last, prefix, tc.want, stderr.String())
		}
	}

	dir := t.TempDir()
	m := &myFaultDB{dsn: dsn, stateDir: dir}
	t.Cleanup(m.drop)
	r := newWrappedRig(t, m, tmpfsWrap(dir, "size=64k", ""), "--db", dsn, "--rules", rulesFile, "--state-dir", dir, "--server-id", "4303", "--source-timeout", faultSourceTimeout)
	m.readFile = func(dir string) ([]byte, error) { return inNamespace(r.d, fmt.Sprintf("cat '%s'/mysql-*.json", dir)) }
	const notWritten, writtenAgain = "checkpoint not written", "checkpoint written again"
	caughtUp := func() {
		t.Helper()
		r.mu.Lock()
		last := r.upper[r.next-1]
		r.mu.Unlock()
		waitFor(t, func() bool { return r.db.durable(t) == last })
	}
	for i, f := range []struct{ name, break_, repair string }{
		{"state dir full while running", "cat /dev/zero > '%s/fill' 2>/dev/null; true", "rm '%s/fill'"},
		{"state dir read-only while running", "mount -o remount,ro '%s'", "mount -o remount,rw '%s'"},
	} {
		r.fault(f.name, func() {
			if out, err := inNamespace(r.d, fmt.Sprintf(f.break_, dir)); err != nil {
				t.Fatalf("%s: %v %s", f.break_, err, out)
			}
		}, func() {
			// Acknowledged rows now fail to reach the file: one error line.
			waitFor(t, func() bool { return strings.Count(r.d.Log().String(), notWritten) == i+1 })
		})
		if n := strings.Count(r.d.Log().String(), notWritten); n != i+1 {
			t.Fatalf("%s: %q logged %d times in all, want %d (once per failing stretch)", f.name, notWritten, n, i+1)
		}
		if out, err := inNamespace(r.d, fmt.Sprintf(f.repair, dir)); err != nil {
			t.Fatalf("%s: %v %s", f.repair, err, out)
		}
		waitFor(t, func() bool { return strings.Count(r.d.Log().String(), writtenAgain) == i+1 })
		caughtUp()
	}
	// The tmpfs, and the checkpoint on it, end with the daemon's namespace.
	r.d.stop(t)
}

// TestFaultsClientFlood: 1,000 clients connect and drop in a loop, five
// times each (half of them after their `ready`, half after an invalidation
// too, every third with a resume cursor) while 3,000 rows are written: a steady client receives
// every row's tag without a reset, and once the flood ends the daemon holds
// only the steady client.
func TestFaultsClientFlood(t *testing.T) {
	t.Parallel()
	dsn, _, _ := setupPG(t)
	w, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	db := &pgFaultDB{dsn: dsn, slot: "flood", w: w}
	r := newRig(t, db, "--db", dsn, "--rules", writeTodoRules(t), "--slot", "flood", "--publication", "flood")

	// Each client connects cycles times: a fixed churn that overlaps the
	// writes, rather than a tight loop that would starve them on 2 cores.
	const clients, cycles, rows = 1000, 5, 3000
	ctx, stopFlood := context.WithCancel(context.Background())
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	var (
		wg       sync.WaitGroup
		connects atomic.Int64
		failures = make(chan string, clients)
	)
	for i := range clients {
		wg.Go(func() {
			for range cycles {
				if ctx.Err() != nil {
					return
				}
				if msg := floodOnce(ctx, hc, r.d.base, i, r.lastIDSnapshot()); msg != "" {
					failures <- msg
					return
				}
				connects.Add(1)
			}
		})
	}
	writer := make(chan error, 1)
	go func() {
		for range rows {
			if err := r.insertNext(); err != nil {
				writer <- err
				return
			}
		}
		writer <- nil
	}()
	for r.missing() > 0 || r.nextSnapshot() <= rows {
		select {
		case msg := <-failures:
			stopFlood()
			wg.Wait()
			t.Fatalf("flood client: %s", msg)
		default:
		}
		r.event()
	}
	if err := <-writer; err != nil {
		t.Fatal(err)
	}
	stopFlood()
	wg.Wait()
	close(failures)
	for msg := range failures {
		t.Fatalf("flood client: %s", msg)
	}
	t.Logf("client flood: %d rows received by the steady client while %d clients made %d connections", rows, clients, connects.Load())
	waitFor(t, func() bool { return strings.Contains(metricsBody(t, r.d), "\ntagstream_subscribers 1\n") })
	r.stop("after the flood")
}

func (r *rig) lastIDSnapshot() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastID
}

func (r *rig) nextSnapshot() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.next
}

// floodOnce connects one flood client and drops it: after its `ready`
// (even i) or after its first invalidation (odd i; or when ctx ends).
// Every third connection resumes from cursor. It returns what went wrong,
// "" when nothing did (a connection cut by ctx is fine).
func floodOnce(ctx context.Context, hc *http.Client, base string, i int, cursor string) string {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, base+"/events?tags=todo:*", nil)
	if err != nil {
		return err.Error()
	}
	if i%3 == 0 && cursor != "" {
		req.Header.Set("Last-Event-ID", cursor)
	}
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ""
		}
		return err.Error()
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "status " + resp.Status
	}
	rd := ssereader.NewReader(resp.Body)
	rd.Strict = true
	ready := false
	for {
		ev, err := rd.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ""
			}
			return fmt.Sprintf("stream ended before the client dropped it (ready=%v): %v", ready, err)
		}
		switch ev.Event {
		case "ready":
			ready = true
			if i%2 == 0 {
				return ""
			}
		case "invalidate":
			if ready {
				return ""
			}
		}
	}
}

// TestSourceTimeoutFlag: --source-timeout (and its environment variable)
// must be a positive duration of at least 30ms: exit 2 with one line.
func TestSourceTimeoutFlag(t *testing.T) {
	t.Parallel()
	rules := writeTodoRules(t)
	for _, tc := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"--source-timeout", "10ms"}, "tagstream: --source-timeout: 10ms is below 30ms"},
		{[]string{"TAGSTREAM_SOURCE_TIMEOUT=-1s"}, nil, "tagstream: --source-timeout: -1s is below 30ms"},
		{[]string{"TAGSTREAM_SOURCE_TIMEOUT=soon"}, nil, `tagstream: TAGSTREAM_SOURCE_TIMEOUT="soon": parse error (it sets --source-timeout)`},
	} {
		args := append([]string{"run", "--db", "postgres://nobody@127.0.0.1:1/db", "--rules", rules, "--listen", "127.0.0.1:0"}, tc.args...)
		code, _, stderr := runBinary(t, tc.env, args...)
		if code != 2 || strings.TrimSpace(stderr) != tc.want {
			t.Errorf("%v %v: exit %d, stderr %q; want 2 and %q", tc.env, tc.args, code, stderr, tc.want)
		}
	}
}
