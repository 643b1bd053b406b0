package testcontainers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	tc "github.com/testcontainers/testcontainers-go"
	tcmariadb "github.com/testcontainers/testcontainers-go/modules/mariadb"
	tcmysql "github.com/testcontainers/testcontainers-go/modules/mysql"
)

// MySQLEnv names the variable that points tests at an existing MySQL or
// MariaDB server: an admin DSN such as mysql://root:pw@127.0.0.1:3306/.
const MySQLEnv = "TAGSTREAM_TEST_MYSQL_DSN"

// MySQLImageEnv picks the image of the Docker step (default mysql:8.4; an
// image whose name contains "mariadb" uses the MariaDB module).
const MySQLImageEnv = "TAGSTREAM_TEST_MYSQL_IMAGE"

// binlogArgs are the server options the binlog reader needs.
var binlogArgs = []string{
	"--log-bin=binlog",
	"--binlog-format=ROW",
	"--binlog-row-image=FULL",
	"--binlog-row-metadata=FULL",
	"--server-id=1",
}

// MySQLServer is a MySQL or MariaDB server with row-based binary logging,
// owned by this process (or named by TAGSTREAM_TEST_MYSQL_DSN).
type MySQLServer struct {
	// AdminDSN is a mysql:// DSN of a user with all privileges, without a
	// database.
	AdminDSN string

	host     string
	port     int
	user     string
	password string

	closeOnce sync.Once
	stop      func()
}

// DSN returns a mysql:// DSN of the admin user with db as its database.
func (s *MySQLServer) DSN(db string) string {
	u := url.URL{Scheme: "mysql", Host: net.JoinHostPort(s.host, strconv.Itoa(s.port)), Path: "/" + db}
	if s.password != "" {
		u.User = url.UserPassword(s.user, s.password)
	} else {
		u.User = url.User(s.user)
	}
	return u.String()
}

// Exec runs statements as the admin user, one after the other.
func (s *MySQLServer) Exec(ctx context.Context, stmts ...string) error {
	c, err := s.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, q := range stmts {
		if _, err := c.Execute(q); err != nil {
			return fmt.Errorf("mysql: %s: %w", q, err)
		}
	}
	return nil
}

// CreateDatabase creates the database name (utf8mb4) and returns its DSN.
func (s *MySQLServer) CreateDatabase(ctx context.Context, name string) (string, error) {
	if err := s.Exec(ctx, "CREATE DATABASE `"+strings.ReplaceAll(name, "`", "``")+"` CHARACTER SET utf8mb4"); err != nil {
		return "", err
	}
	return s.DSN(name), nil
}

// Close stops the server when this process started it. Safe to call twice.
func (s *MySQLServer) Close() {
	s.closeOnce.Do(func() {
		if s.stop != nil {
			s.stop()
		}
	})
}

func (s *MySQLServer) connect(ctx context.Context) (*client.Conn, error) {
	return client.ConnectWithContext(ctx, net.JoinHostPort(s.host, strconv.Itoa(s.port)), s.user, s.password, "", 10*time.Second)
}

// StartMySQL returns a MySQL/MariaDB server by the package's ladder: the
// server named by TAGSTREAM_TEST_MYSQL_DSN, a container when a Docker engine
// answers, or a private mariadbd started from this machine's binaries.
// Close (or Shutdown) stops what it started.
func StartMySQL(ctx context.Context) (*MySQLServer, error) {
	if dsn := os.Getenv(MySQLEnv); dsn != "" {
		return mysqlFromEnv(ctx, dsn)
	}
	if dockerAvailable() {
		return startMySQLContainer(ctx)
	}
	if _, err := exec.LookPath("mariadbd"); err == nil {
		return startMariaDBLocal(ctx)
	}
	if _, err := exec.LookPath("/usr/sbin/mariadbd"); err == nil {
		return startMariaDBLocal(ctx)
	}
	return nil, errMySQLUnavailable
}

var errMySQLUnavailable = errors.New("no Docker engine and no mariadbd/mariadb-install-db binaries on this machine")

var (
	sharedMySQLMu  sync.Mutex
	sharedMySQL    *MySQLServer
	sharedMySQLErr error
)

// MySQL returns a mysql:// DSN (admin user, all privileges) to a fresh
// database for this test, on a server shared by the package's tests that
// Main stops at the end. The database is dropped when the test ends.
func MySQL(t testing.TB) string {
	t.Helper()
	srv := sharedMySQLServer(t)
	name := dbName(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn, err := srv.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatalf("testcontainers: create mysql database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = srv.Exec(ctx, "DROP DATABASE IF EXISTS `"+name+"`")
	})
	return dsn
}

func sharedMySQLServer(t testing.TB) *MySQLServer {
	t.Helper()
	sharedMySQLMu.Lock()
	defer sharedMySQLMu.Unlock()
	if sharedMySQL == nil && sharedMySQLErr == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		srv, err := StartMySQL(ctx)
		cancel()
		if err != nil {
			sharedMySQLErr = err
		} else {
			sharedMySQL = srv
			registerCleanup(func() {
				sharedMySQLMu.Lock()
				defer sharedMySQLMu.Unlock()
				sharedMySQL.Close()
				sharedMySQL, sharedMySQLErr = nil, nil
			})
		}
	}
	if sharedMySQLErr != nil {
		if errors.Is(sharedMySQLErr, errMySQLUnavailable) {
			unavailable(t, "MySQL/MariaDB", MySQLEnv, sharedMySQLErr.Error())
		}
		t.Fatalf("testcontainers: start mysql: %v", sharedMySQLErr)
	}
	return sharedMySQL
}

func mysqlFromEnv(ctx context.Context, dsn string) (*MySQLServer, error) {
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "mysql" && u.Scheme != "mariadb") || u.User == nil {
		return nil, fmt.Errorf("%s: want mysql://user:pass@host:port/, got %q", MySQLEnv, dsn)
	}
	s := &MySQLServer{host: u.Hostname(), port: 3306, user: u.User.Username()}
	s.password, _ = u.User.Password()
	if p := u.Port(); p != "" {
		if s.port, err = strconv.Atoi(p); err != nil {
			return nil, fmt.Errorf("%s: bad port %q", MySQLEnv, p)
		}
	}
	s.AdminDSN = s.DSN("")
	if err := s.Exec(ctx, "SELECT 1"); err != nil {
		return nil, fmt.Errorf("%s: %w", MySQLEnv, err)
	}
	return s, nil
}

func startMySQLContainer(ctx context.Context) (*MySQLServer, error) {
	const password = "tagstream"
	img := os.Getenv(MySQLImageEnv)
	if img == "" {
		img = "mysql:8.4"
	}
	var ctr tc.Container
	if strings.Contains(img, "mariadb") {
		c, err := tcmariadb.Run(ctx, img,
			tcmariadb.WithUsername("root"), tcmariadb.WithPassword(password),
			tc.WithCmdArgs(binlogArgs...))
		if c != nil {
			ctr = c
		}
		if err != nil {
			terminate(ctr)
			return nil, fmt.Errorf("mariadb container: %w", err)
		}
	} else {
		args := append([]string{"--gtid-mode=ON", "--enforce-gtid-consistency=ON"}, binlogArgs...)
		c, err := tcmysql.Run(ctx, img,
			tcmysql.WithUsername("root"), tcmysql.WithPassword(password),
			tc.WithCmdArgs(args...))
		if c != nil {
			ctr = c
		}
		if err != nil {
			terminate(ctr)
			return nil, fmt.Errorf("mysql container: %w", err)
		}
	}
	host, err := ctr.Host(ctx)
	if err != nil {
		terminate(ctr)
		return nil, err
	}
	port, err := ctr.MappedPort(ctx, "3306/tcp")
	if err != nil {
		terminate(ctr)
		return nil, err
	}
	s := &MySQLServer{host: host, port: int(port.Num()), user: "root", password: password}
	s.AdminDSN = s.DSN("")
	s.stop = func() { terminate(ctr) }
	return s, nil
}

func terminate(ctr tc.Container) {
	if ctr == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = ctr.Terminate(ctx)
}

// mariaLocal is a private mariadbd made from this machine's binaries: a
// data dir and a port that survive stopping and starting its process.
type mariaLocal struct {
	dir, data, sock, logPath string
	port                     int
	asRoot                   []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// startMariaDBLocal runs a throwaway mariadbd in a temp dir on a free
// loopback port with row-based binary logging.
func startMariaDBLocal(ctx context.Context) (*MySQLServer, error) {
	l, err := newMariaLocal(ctx)
	if err != nil {
		return nil, err
	}
	if err := l.start(ctx); err != nil {
		l.remove()
		return nil, err
	}
	s := l.server()
	s.stop = l.remove
	return s, nil
}

// newMariaLocal creates the data dir (mariadb-install-db) and picks a port.
func newMariaLocal(ctx context.Context) (l *mariaLocal, err error) {
	reapOrphanedMariaDB()
	dir, err := os.MkdirTemp("", mariadbDirPrefix)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, err
	}
	// Each server its own tmpdir: concurrent servers sharing /tmp clash
	// over their temporary files.
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o700); err != nil {
		return nil, err
	}
	l = &mariaLocal{dir: dir, data: filepath.Join(dir, "data"), sock: filepath.Join(dir, "mysqld.sock"), logPath: filepath.Join(dir, "error.log")}
	// mariadbd refuses to run as root unless told to; as another user it
	// runs as that user.
	if os.Geteuid() == 0 {
		l.asRoot = []string{"--user=root"}
	}
	install := exec.CommandContext(ctx, "mariadb-install-db", append([]string{"--no-defaults", "--datadir=" + l.data,
		"--tmpdir=" + filepath.Join(dir, "tmp"), "--auth-root-authentication-method=normal", "--skip-test-db"}, l.asRoot...)...)
	if out, err := install.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mariadb-install-db: %w\n%s", err, out)
	}
	if l.port, err = freePort(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *mariaLocal) server() *MySQLServer {
	s := &MySQLServer{host: "127.0.0.1", port: l.port, user: "root"}
	s.AdminDSN = s.DSN("")
	return s
}

// start runs mariadbd and waits until it accepts connections (and, the
// first time, gives root a password-less TCP account).
func (l *mariaLocal) start(ctx context.Context) (err error) {
	args := append([]string{"--no-defaults"}, l.asRoot...)
	args = append(args,
		"--datadir="+l.data, "--socket="+l.sock, "--pid-file="+filepath.Join(l.dir, "mysqld.pid"),
		"--tmpdir="+filepath.Join(l.dir, "tmp"),
		"--port="+strconv.Itoa(l.port), "--bind-address=127.0.0.1", "--skip-name-resolve",
		"--log-error="+l.logPath,
		"--log-bin="+filepath.Join(l.data, "binlog"),
		"--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog_row_metadata=FULL", "--server-id=1",
		// A throwaway server: small and fast rather than durable.
		"--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0",
		"--innodb-doublewrite=0", "--skip-performance-schema",
	)
	cmd := exec.Command(mariadbdPath(), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("mariadbd: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	l.mu.Lock()
	l.cmd, l.exited = cmd, exited
	l.mu.Unlock()
	defer func() {
		if err != nil {
			l.stop(syscall.SIGKILL)
		}
	}()
	waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-waitCtx.Done():
		}
	}()
	if err := waitPort(waitCtx, net.JoinHostPort("127.0.0.1", strconv.Itoa(l.port))); err != nil {
		log, _ := os.ReadFile(l.logPath)
		return fmt.Errorf("mariadbd did not start: %w\n%s", err, tail(log, 2000))
	}
	// root@localhost may be a socket-authenticated account: make sure a
	// password-less TCP root exists for 127.0.0.1.
	// The port may answer before the socket does (or, taken by another
	// process, without this server): wait for the socket as well.
	var sc *client.Conn
	for {
		if sc, err = client.ConnectWithContext(waitCtx, l.sock, "root", "", "", 10*time.Second); err == nil {
			break
		}
		select {
		case <-waitCtx.Done():
			log, _ := os.ReadFile(l.logPath)
			return fmt.Errorf("mariadbd: connect over socket: %w\n%s", err, tail(log, 2000))
		case <-time.After(50 * time.Millisecond):
		}
	}
	defer sc.Close()
	for _, q := range []string{
		"CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'",
		"GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION",
	} {
		if _, err := sc.Execute(q); err != nil {
			return fmt.Errorf("mariadbd: %s: %w", q, err)
		}
	}
	return nil
}

// stop signals mariadbd (SIGTERM: clean shutdown; SIGKILL: a crash) and
// waits for it to exit, killing it after 30 s.
func (l *mariaLocal) stop(sig syscall.Signal) {
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
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

func (l *mariaLocal) remove() {
	l.stop(syscall.SIGTERM)
	os.RemoveAll(l.dir)
}

// PrivateMySQL is a MariaDB server of one test's own, which the test may
// stop and start again (same data dir, same port) to inject faults.
type PrivateMySQL struct {
	*MySQLServer
	private
}

// NewPrivateMySQL starts a MariaDB server for t alone from this machine's
// binaries; it is removed when t ends.
func NewPrivateMySQL(t testing.TB) *PrivateMySQL {
	t.Helper()
	if _, err := exec.LookPath(mariadbdPath()); err != nil {
		unavailable(t, "private MariaDB (server binaries)", MySQLEnv, err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := newMariaLocal(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.remove)
	if err := l.start(ctx); err != nil {
		t.Fatal(err)
	}
	// Fast: SIGTERM, a clean shutdown; Immediate: SIGKILL, a crash.
	return &PrivateMySQL{MySQLServer: l.server(), private: private{l, [2]syscall.Signal{syscall.SIGTERM, syscall.SIGKILL}}}
}

func mariadbdPath() string {
	if p, err := exec.LookPath("mariadbd"); err == nil {
		return p
	}
	return "/usr/sbin/mariadbd"
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

const (
	mariadbDirPrefix = "tagstream-mariadb-"
	ownerFile        = "owner.pid" // the pid of the process that started the server
)

// reapOrphanedMariaDB stops the servers, and removes the directories, that
// earlier processes left behind when they died before their cleanup (a
// killed or crashed test binary): those whose owner process is gone.
func reapOrphanedMariaDB() { reapOrphaned(mariadbDirPrefix, "mysqld.pid") }

// reapOrphaned stops the server whose pid is in pidFile of every temp dir
// named prefix* whose owner process is gone, and removes the directory.
func reapOrphaned(prefix, pidFile string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*"))
	for _, dir := range dirs {
		owner, err := readPid(filepath.Join(dir, ownerFile))
		if err != nil || processAlive(owner) {
			continue
		}
		if pid, err := readPid(filepath.Join(dir, pidFile)); err == nil && processAlive(pid) {
			// Only the server of that directory, not a process that reused the pid.
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if !strings.Contains(string(cmdline), dir) {
				continue
			}
			_ = syscall.Kill(pid, syscall.SIGTERM)
			for i := 0; i < 200 && processAlive(pid); i++ {
				time.Sleep(50 * time.Millisecond)
			}
			if processAlive(pid) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		os.RemoveAll(dir)
	}
}

func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s: bad pid", path)
	}
	return pid, nil
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
