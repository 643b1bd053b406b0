// Package examples holds the end-to-end tests of the framework examples: a
// real Next.js app (examples/nextjs) and Redwood's live-query store
// (examples/redwood) fed by the tagstream binary from a private Postgres.
package examples

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tagstream/tagstream/internal/launch"
	"github.com/tagstream/tagstream/testcontainers"
)

func TestMain(m *testing.M) { testcontainers.Main(m) }

// need returns the path of tool, or skips t (fails under CI=true): the
// examples' tests never pass by skipping in CI.
func need(t *testing.T, tool, why string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is needed %s (make deps installs it)", tool, why)
		}
		t.Skipf("%s not installed: %s (make deps installs it)", tool, why)
	}
	return p
}

// needModules checks that `npm ci` ran in dir (scripts/ensure-deps.sh).
func needModules(t *testing.T, dir string) {
	t.Helper()
	need(t, "node", "to run "+dir)
	if _, err := os.Stat(filepath.Join(dir, "node_modules")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s/node_modules is missing: run make deps (npm ci)", dir)
		}
		t.Skipf("%s/node_modules is missing: run make deps (npm ci)", dir)
	}
}

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// tagstreamBinary builds cmd/tagstream once per test run.
func tagstreamBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tagstream-examples")
		if err != nil {
			buildErr = err
			return
		}
		binary, buildErr = launch.BuildTagstream(context.Background(), dir)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := launch.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// proc is a child process that dies with the test (its whole process
// group), started by internal/launch like cmd/tagstream's and the
// benchmark's daemons.
type proc struct {
	*launch.Process
	name string
}

func start(t *testing.T, name, dir string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := newProc(t, name, dir, env, false, bin, args...)
	p.run(t)
	return p
}

// newProc prepares a process whose output goes to its log, its stdout to
// p.Stdout() instead when pipeStdout; the caller may take a pipe to its
// stdin before run.
func newProc(t *testing.T, name, dir string, env []string, pipeStdout bool, bin string, args ...string) *proc {
	t.Helper()
	lp, err := launch.New(launch.Options{Path: bin, Args: args, Dir: dir, Env: env, PipeStdout: pipeStdout})
	if err != nil {
		t.Fatal(err)
	}
	return &proc{Process: lp, name: name}
}

func (p *proc) run(t *testing.T) {
	t.Helper()
	if err := p.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	t.Cleanup(func() {
		_ = p.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("%s output:\n%s", p.name, p.Log())
		}
	})
}

// waitHTTP polls url until it answers 200 (and its body contains want).
func (p *proc) waitHTTP(t *testing.T, url, want string) {
	t.Helper()
	if err := poll(p, url, want, 90*time.Second); err != nil {
		t.Fatalf("%s: %v\n%s", p.name, err, p.Log())
	}
}

func poll(p *proc, url, want string, limit time.Duration) error {
	client := &http.Client{Timeout: 10 * time.Second}
	var last string
	answers := func(ctx context.Context) bool {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			last = err.Error()
			return false
		}
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		last = fmt.Sprintf("%d %.300s", resp.StatusCode, body)
		return resp.StatusCode == http.StatusOK && strings.Contains(string(body), want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	if err := p.Await(ctx, 100*time.Millisecond, answers); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("GET %s: no 200 with %q within %s; last: %s", url, want, limit, last)
		}
		return err
	}
	return nil
}

// startTagstream runs `tagstream run` on a free port and waits for /readyz.
func startTagstream(t *testing.T, args ...string) (*proc, string) {
	t.Helper()
	addr := freeAddr(t)
	return startTagstreamOn(t, addr, args...), "http://" + addr
}

// startTagstreamOn is startTagstream listening on addr.
func startTagstreamOn(t *testing.T, addr string, args ...string) *proc {
	t.Helper()
	p := start(t, "tagstream", ".", nil, tagstreamBinary(t), append([]string{"run", "--listen", addr}, args...)...)
	p.waitHTTP(t, "http://"+addr+"/readyz", "")
	return p
}

// postgres returns a fresh database with schema applied, a connection to it
// and a rules file.
func postgres(t *testing.T, schema, rules string) (dsn string, db *pgx.Conn, rulesFile string) {
	t.Helper()
	dsn, db = testcontainers.PostgresDB(t, schema)
	rulesFile = filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rulesFile, []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	return dsn, db, rulesFile
}

func execSQL(t *testing.T, db *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := db.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// lines reads a process's stdout line by line.
type lines struct {
	ch   chan string
	done chan struct{}
}

func readLines(r io.Reader) *lines {
	l := &lines{ch: make(chan string, 64), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l.ch <- sc.Text()
		}
		close(l.ch)
	}()
	return l
}

// expect waits for the next line and asserts it equals want.
func (l *lines) expect(t *testing.T, p *proc, want string) {
	t.Helper()
	if got := l.next(t, p, want); got != want {
		t.Fatalf("%s said %q, want %q\n%s", p.name, got, want, p.Log())
	}
}

// expectAnyOrder waits for len(want) lines and asserts they are want in
// any order.
func (l *lines) expectAnyOrder(t *testing.T, p *proc, want ...string) {
	t.Helper()
	left := slices.Clone(want)
	for range want {
		got := l.next(t, p, strings.Join(left, " | "))
		i := slices.Index(left, got)
		if i < 0 {
			t.Fatalf("%s said %q, want one of %q\n%s", p.name, got, left, p.Log())
		}
		left = slices.Delete(left, i, i+1)
	}
}

func (l *lines) next(t *testing.T, p *proc, want string) string {
	t.Helper()
	select {
	case got, ok := <-l.ch:
		if !ok {
			<-p.Done()
			t.Fatalf("%s ended (%v) before %q\n%s", p.name, p.Err(), want, p.Log())
		}
		return got
	case <-time.After(120 * time.Second):
		t.Fatalf("%s did not say %q within 120s\n%s", p.name, want, p.Log())
	}
	return ""
}
