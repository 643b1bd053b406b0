package testcontainers

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	tc "github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

// PostgresEnv names the variable that points the tests at an existing
// Postgres server (an admin DSN: superuser, replication allowed, wal_level
// logical).
const PostgresEnv = "TAGSTREAM_TEST_POSTGRES_DSN"

// pgServerSettings are the settings every private server gets: logical
// decoding, room for many slots, and a small logical_decoding_work_mem so
// that in-progress transactions are streamed early.
var pgServerSettings = []string{
	"wal_level=logical",
	"max_wal_senders=20",
	"max_replication_slots=20",
	"logical_decoding_work_mem=64kB",
	"fsync=off",
	"full_page_writes=off",
	"synchronous_commit=off",
	"max_connections=200",
	"wal_sender_timeout=60s",
}

// PostgresServer is a Postgres server that tests and tools create databases
// on. Close stops it when this process started it.
type PostgresServer struct {
	base    url.URL // admin DSN; Path is replaced per database
	source  string  // "env", "docker" or "local"
	closeFn func()
	once    sync.Once
}

// AdminDSN is a DSN to the server's maintenance database ("postgres") as a
// superuser.
func (s *PostgresServer) AdminDSN() string { return s.DSN("postgres") }

// DSN is a DSN to database db on the server, as the admin user.
func (s *PostgresServer) DSN(db string) string {
	u := s.base
	u.Path = "/" + db
	return u.String()
}

// Source says which step of the ladder provided the server: "env",
// "docker" or "local".
func (s *PostgresServer) Source() string { return s.source }

// CreateDatabase creates database name and returns a DSN to it.
func (s *PostgresServer) CreateDatabase(ctx context.Context, name string) (string, error) {
	if !pgValidDBName(name) {
		return "", fmt.Errorf("testcontainers: invalid database name %q", name)
	}
	conn, err := pgx.Connect(ctx, s.AdminDSN())
	if err != nil {
		return "", fmt.Errorf("testcontainers: connect to postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("testcontainers: create database %s: %w", name, err)
	}
	return s.DSN(name), nil
}

// DropDatabase drops database name after terminating its sessions and
// dropping the replication slots that live in it (which would otherwise
// keep it, and its WAL, alive).
func (s *PostgresServer) DropDatabase(ctx context.Context, name string) error {
	if !pgValidDBName(name) {
		return fmt.Errorf("testcontainers: invalid database name %q", name)
	}
	conn, err := pgx.Connect(ctx, s.AdminDSN())
	if err != nil {
		return fmt.Errorf("testcontainers: connect to postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL`, name)
		_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, name)
		_, lastErr = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1`, name)
		if lastErr == nil {
			_, lastErr = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			if lastErr == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("testcontainers: drop database %s: %w", name, lastErr)
}

// Close stops the server when this process started it. Safe to call twice.
func (s *PostgresServer) Close() {
	s.once.Do(func() {
		if s.closeFn != nil {
			s.closeFn()
		}
	})
}

func pgValidDBName(name string) bool {
	if name == "" || len(name) > 63 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return !(name[0] >= '0' && name[0] <= '9')
}

// StartPostgres provides a Postgres server by the ladder (env DSN, Docker,
// local binaries). The caller owns it and calls Close.
func StartPostgres(ctx context.Context) (*PostgresServer, error) {
	if dsn := os.Getenv(PostgresEnv); dsn != "" {
		u, err := url.Parse(dsn)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			return nil, fmt.Errorf("testcontainers: %s must be a postgres:// URL", PostgresEnv)
		}
		return &PostgresServer{base: *u, source: "env"}, nil
	}
	if dockerAvailable() {
		return startPostgresDocker(ctx)
	}
	return startPostgresLocal(ctx)
}

// errNoPostgres marks "no way to get a server" (as opposed to a server that
// failed to start), which skips tests instead of failing them outside CI.
var errNoPostgres = errors.New("no postgres server binaries found (initdb/postgres in PATH or /usr/lib/postgresql/*/bin)")

var (
	sharedPGMu  sync.Mutex
	sharedPG    *PostgresServer
	sharedPGErr error
)

// Postgres returns a DSN (superuser, replication allowed) to a fresh
// database for t on the process's shared server, which Main stops. The
// database is dropped when t ends.
func Postgres(t testing.TB) string {
	t.Helper()
	srv, err := sharedPostgres()
	if err != nil {
		if errors.Is(err, errNoPostgres) {
			unavailable(t, "postgres", PostgresEnv, err.Error())
		}
		t.Fatalf("start postgres: %v", err)
	}
	name := dbName(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn, err := srv.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.DropDatabase(ctx, name); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	return dsn
}

// PostgresDB is Postgres with schema (SQL; empty for none) applied and a
// connection to the database, closed when t ends.
func PostgresDB(t testing.TB, schema string) (dsn string, db *pgx.Conn) {
	t.Helper()
	dsn = Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close(context.Background()) })
	if schema != "" {
		if _, err := db.Exec(ctx, schema); err != nil {
			t.Fatalf("schema: %v", err)
		}
	}
	return dsn, db
}

func sharedPostgres() (*PostgresServer, error) {
	sharedPGMu.Lock()
	defer sharedPGMu.Unlock()
	if sharedPG != nil || sharedPGErr != nil {
		return sharedPG, sharedPGErr
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv, err := StartPostgres(ctx)
	if err != nil {
		sharedPGErr = err
		return nil, err
	}
	sharedPG = srv
	registerCleanup(func() {
		sharedPGMu.Lock()
		s := sharedPG
		sharedPG, sharedPGErr = nil, nil
		sharedPGMu.Unlock()
		if s != nil {
			s.Close()
		}
	})
	return srv, nil
}

func startPostgresDocker(ctx context.Context) (*PostgresServer, error) {
	args := []string{}
	for _, s := range pgServerSettings {
		args = append(args, "-c", s)
	}
	ctr, err := tcpostgres.Run(ctx, "postgres:16",
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.WithDatabase("postgres"),
		tc.WithCmdArgs(args...),
		tcpostgres.BasicWaitStrategies(),
	)
	if err != nil {
		if ctr != nil {
			_ = tc.TerminateContainer(ctr)
		}
		return nil, fmt.Errorf("testcontainers: postgres container: %w", err)
	}
	dsn, err := ctr.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		_ = tc.TerminateContainer(ctr)
		return nil, fmt.Errorf("testcontainers: postgres container: %w", err)
	}
	u, err := url.Parse(dsn)
	if err != nil {
		_ = tc.TerminateContainer(ctr)
		return nil, fmt.Errorf("testcontainers: postgres container dsn: %w", err)
	}
	return &PostgresServer{base: *u, source: "docker", closeFn: func() { _ = tc.TerminateContainer(ctr) }}, nil
}

// pgBinDir finds a directory holding initdb and postgres: PATH first, then
// the newest /usr/lib/postgresql/*/bin.
func pgBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		dir := filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(dirs[i])), 64)
		vj, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(dirs[j])), 64)
		return vi > vj
	})
	for _, d := range dirs {
		if pgIsExecutable(filepath.Join(d, "initdb")) && pgIsExecutable(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", errNoPostgres
}

func pgIsExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

const pgTempPrefix = "tagstream-pg-"

// pgLocal is a private server made from this machine's binaries: a data
// dir and a port that survive stopping and starting its process.
type pgLocal struct {
	bin, dir, data, logPath string
	port                    int
	cred                    *syscall.Credential
	durable                 bool     // synchronous_commit=on: an immediate shutdown keeps every commit
	settings                []string // more server settings, after (overriding) pgServerSettings

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
}

// startPostgresLocal runs initdb and postgres from this machine's binaries
// in a fresh temp dir, as the `postgres` OS user when this process is root
// (Postgres refuses to run as root).
func startPostgresLocal(ctx context.Context) (*PostgresServer, error) {
	l, err := newPGLocal(ctx)
	if err != nil {
		return nil, err
	}
	srv := l.server()
	srv.closeFn = l.remove
	if err := l.start(ctx); err != nil {
		l.remove()
		return nil, err
	}
	return srv, nil
}

// newPGLocal creates the data dir (initdb) and picks a port.
func newPGLocal(ctx context.Context) (l *pgLocal, err error) {
	bin, err := pgBinDir()
	if err != nil {
		return nil, err
	}
	reapStalePostgres()
	l = &pgLocal{bin: bin}
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("testcontainers: running as root needs a `postgres` OS user to run the server as: %w", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		l.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	// /tmp rather than TMPDIR: the postgres user must be able to reach it.
	parent := os.TempDir()
	if l.cred != nil {
		parent = "/tmp"
	}
	if l.dir, err = os.MkdirTemp(parent, pgTempPrefix); err != nil {
		return nil, fmt.Errorf("testcontainers: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(l.dir)
		}
	}()
	if err := os.WriteFile(filepath.Join(l.dir, "owner"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, fmt.Errorf("testcontainers: %w", err)
	}
	if l.cred != nil {
		if err := os.Chown(l.dir, uid, gid); err != nil {
			return nil, fmt.Errorf("testcontainers: chown %s: %w", l.dir, err)
		}
	}
	l.data = filepath.Join(l.dir, "data")
	l.logPath = filepath.Join(l.dir, "postgres.log")

	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
		"-D", l.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
		"--no-sync", "--wal-segsize=1")
	initdb.Dir = l.dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: l.cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("testcontainers: initdb: %w\n%s", err, pgTail(string(out), 2000))
	}
	// Trust for every local and loopback connection, replication included.
	hba := "local all all trust\nlocal replication all trust\n" +
		"host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n" +
		"host all all ::1/128 trust\nhost replication all ::1/128 trust\n"
	if err := os.WriteFile(filepath.Join(l.data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return nil, fmt.Errorf("testcontainers: %w", err)
	}
	if l.cred != nil {
		_ = os.Chown(filepath.Join(l.data, "pg_hba.conf"), uid, gid)
	}
	if l.port, err = freePort(); err != nil {
		return nil, fmt.Errorf("testcontainers: %w", err)
	}
	return l, nil
}

func (l *pgLocal) server() *PostgresServer {
	base := url.URL{Scheme: "postgres", User: url.User("postgres"), Host: fmt.Sprintf("127.0.0.1:%d", l.port),
		Path: "/postgres", RawQuery: "sslmode=disable"}
	return &PostgresServer{base: base, source: "local"}
}

// start runs the server process and waits until it answers queries.
func (l *pgLocal) start(ctx context.Context) error {
	logFile, err := os.OpenFile(l.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("testcontainers: %w", err)
	}
	args := []string{"-D", l.data, "-p", strconv.Itoa(l.port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=" + l.dir}
	for _, s := range pgServerSettings {
		args = append(args, "-c", s)
	}
	if l.durable {
		args = append(args, "-c", "synchronous_commit=on")
	}
	for _, s := range l.settings {
		args = append(args, "-c", s)
	}
	// Not CommandContext: the server outlives ctx (which only bounds startup).
	cmd := exec.Command(filepath.Join(l.bin, "postgres"), args...)
	cmd.Dir = l.dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Pdeathsig: an immediate shutdown when this process dies without
	// stopping the server; reapStalePostgres covers what it misses.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: l.cred, Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("testcontainers: start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(exited)
	}()
	l.mu.Lock()
	l.cmd, l.exited = cmd, exited
	l.mu.Unlock()
	if err := waitPostgres(ctx, l.server().AdminDSN(), exited); err != nil {
		l.stop(syscall.SIGQUIT)
		logTail, _ := os.ReadFile(l.logPath)
		return fmt.Errorf("testcontainers: postgres did not start: %w\nserver log:\n%s", err, pgTail(string(logTail), 3000))
	}
	return nil
}

// stop signals the server (SIGTERM smart, SIGINT fast, SIGQUIT immediate)
// and waits for it to exit, killing it after 15 s.
func (l *pgLocal) stop(sig syscall.Signal) {
	l.mu.Lock()
	cmd, exited := l.cmd, l.exited
	l.cmd = nil
	l.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
	// The postmaster's children may outlive it for a moment; the next
	// start needs them gone (their shared memory is still attached).
	for i := 0; i < 200 && syscall.Kill(-cmd.Process.Pid, 0) == nil; i++ {
		time.Sleep(10 * time.Millisecond)
	}
}

// remove stops the server (fast shutdown) and deletes its directory.
func (l *pgLocal) remove() {
	l.stop(syscall.SIGINT)
	_ = os.RemoveAll(l.dir)
}

// ShutdownMode is how a private server is stopped.
type ShutdownMode uint8

const (
	// Fast: Postgres SIGINT (clients disconnected, a checkpoint written);
	// MariaDB SIGTERM (a clean shutdown).
	Fast ShutdownMode = iota
	// Immediate: Postgres SIGQUIT (no checkpoint, crash recovery at the
	// next start); MariaDB SIGKILL.
	Immediate
)

// PrivatePostgres is a Postgres server of one test's own, which the test
// may stop and start again (same data dir, same port) to inject faults.
type PrivatePostgres struct {
	*PostgresServer
	private
}

// NewPrivatePostgres starts a Postgres server for t alone from this
// machine's binaries (a shared server cannot be restarted under other
// tests); it is removed when t ends. settings ("name=value") override the
// defaults: command-line settings win over ALTER SYSTEM.
func NewPrivatePostgres(t testing.TB, settings ...string) *PrivatePostgres {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := newPGLocal(ctx)
	if err != nil {
		if errors.Is(err, errNoPostgres) {
			unavailable(t, "private postgres (server binaries)", PostgresEnv, err.Error())
		}
		t.Fatal(err)
	}
	t.Cleanup(l.remove)
	// A commit acknowledged to the client survives an immediate shutdown
	// (fsync stays off: the machine does not crash, the server does).
	l.durable, l.settings = true, settings
	if err := l.start(ctx); err != nil {
		t.Fatal(err)
	}
	return &PrivatePostgres{PostgresServer: l.server(), private: private{l, [2]syscall.Signal{syscall.SIGINT, syscall.SIGQUIT}}}
}

// localServer is a server process of this machine's binaries.
type localServer interface {
	start(ctx context.Context) error
	stop(sig syscall.Signal)
}

// private is what PrivatePostgres and PrivateMySQL add to their server:
// stopping it and starting it again on its port and data dir.
type private struct {
	local   localServer
	signals [2]syscall.Signal // by ShutdownMode
}

// Stop shuts the server down in mode and waits for it to exit.
func (p *private) Stop(mode ShutdownMode) { p.local.stop(p.signals[mode]) }

// Start starts the stopped server again on its port and data dir, and
// waits until it answers queries.
func (p *private) Start(ctx context.Context) error { return p.local.start(ctx) }

// Restart is Stop then Start.
func (p *private) Restart(ctx context.Context, mode ShutdownMode) error {
	p.Stop(mode)
	return p.Start(ctx)
}

// waitPostgres waits until the server accepts a query (it listens before it
// is ready), failing early when the process exits.
func waitPostgres(ctx context.Context, dsn string, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var last error
	for {
		select {
		case <-exited:
			return errors.New("the server exited")
		default:
		}
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.Connect(cctx, dsn)
		if err == nil {
			err = conn.Ping(cctx)
			conn.Close(cctx)
		}
		ccancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), last)
		case <-exited:
			return errors.New("the server exited")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// reapStalePostgres stops and removes private servers left behind by test
// processes that died without stopping them.
func reapStalePostgres() {
	dirs, _ := filepath.Glob(filepath.Join("/tmp", pgTempPrefix+"*"))
	if t := os.TempDir(); t != "/tmp" {
		more, _ := filepath.Glob(filepath.Join(t, pgTempPrefix+"*"))
		dirs = append(dirs, more...)
	}
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "owner"))
		if err != nil {
			continue
		}
		owner, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || owner <= 0 || pgProcessAlive(owner) {
			continue
		}
		data := filepath.Join(dir, "data")
		if b, err := os.ReadFile(filepath.Join(data, "postmaster.pid")); err == nil {
			first, _, _ := strings.Cut(string(b), "\n")
			if pid, err := strconv.Atoi(strings.TrimSpace(first)); err == nil && pid > 0 {
				cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				if strings.Contains(string(cmdline), data) {
					_ = syscall.Kill(pid, syscall.SIGQUIT)
					for i := 0; i < 50 && pgProcessAlive(pid); i++ {
						time.Sleep(100 * time.Millisecond)
					}
				}
			}
		}
		_ = os.RemoveAll(dir)
	}
}

func pgProcessAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func pgTail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
