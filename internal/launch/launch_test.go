package launch

import (
	"context"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sh starts `sh -c script` with o's other options.
func sh(t *testing.T, script string, o Options) *Process {
	t.Helper()
	o.Path, o.Args = "sh", append([]string{"-c", script}, o.Args...)
	p, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

func logged(p *Process, s string) func(context.Context) bool {
	return func(context.Context) bool { return strings.Contains(p.Log().String(), s) }
}

func await(t *testing.T, p *Process, ready func(context.Context) bool) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return p.Await(ctx, 10*time.Millisecond, ready)
}

// TestStopDrains: SIGTERM reaches the process, which exits 0 after saying
// so on stderr; env, args and wrap reach it.
func TestStopDrains(t *testing.T) {
	p := sh(t, `trap 'echo draining >&2; exit 0' TERM; echo "up $X $0" >&2; while :; do sleep 0.01; done`,
		Options{Env: []string{"X=1"}, Args: []string{"arg0"}, Wrap: []string{"env"}})
	if err := await(t, p, logged(p, "up 1 arg0\n")); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(20 * time.Second); err != nil {
		t.Fatalf("stop: %v\n%s", err, p.Log())
	}
	// The shell may also report its sleep, terminated with the group.
	if got := p.Log().String(); !strings.HasPrefix(got, "up 1 arg0\n") || !strings.HasSuffix(got, "draining\n") {
		t.Fatalf("log %q", got)
	}
	if err := p.Stop(time.Second); err != nil {
		t.Fatalf("second stop: %v", err)
	}
}

// TestStopKills: a process that ignores SIGTERM is killed after the grace
// period, with the rest of its group.
func TestStopKills(t *testing.T) {
	p := sh(t, `trap '' TERM; sleep 1000 & echo up; wait`, Options{})
	if err := await(t, p, logged(p, "up\n")); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(50 * time.Millisecond); !errors.Is(err, ErrKilled) {
		t.Fatalf("stop: %v", err)
	}
}

// TestAwaitExitedEarly: Await fails with the exit status and the log.
func TestAwaitExitedEarly(t *testing.T) {
	p := sh(t, `echo cannot start >&2; exit 3`, Options{})
	err := await(t, p, func(context.Context) bool { return false })
	if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "cannot start") {
		t.Fatalf("await: %v", err)
	}
	var ee *exec.ExitError
	if !errors.As(p.Err(), &ee) || ee.ExitCode() != 3 {
		t.Fatalf("Err %v", p.Err())
	}
}

// TestAwaitContext: Await gives up when ctx ends.
func TestAwaitContext(t *testing.T) {
	p := sh(t, `sleep 1000`, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Await(ctx, time.Millisecond, func(context.Context) bool { return false }); !errors.Is(err, context.Canceled) {
		t.Fatalf("await: %v", err)
	}
}

// TestLogFileAndStdout: the log can be a file; stdout can go elsewhere.
func TestLogFileAndStdout(t *testing.T) {
	var out strings.Builder
	path := filepath.Join(t.TempDir(), "p.log")
	p := sh(t, `echo out; echo err >&2`, Options{LogFile: path, Stdout: &out})
	<-p.Done()
	if p.Err() != nil || p.Log().String() != "err\n" || out.String() != "out\n" {
		t.Fatalf("exit %v, log %q, stdout %q", p.Err(), p.Log(), out.String())
	}
}

// TestPipeStdout: the pipe carries all of stdout and ends at the exit.
func TestPipeStdout(t *testing.T) {
	p, err := New(Options{Path: "sh", Args: []string{"-c", "echo one; echo two; exit 4"}, PipeStdout: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(p.Stdout())
	if err != nil || string(b) != "one\ntwo\n" {
		t.Fatalf("stdout %q %v", b, err)
	}
	<-p.Done()
	if p.Err() == nil {
		t.Fatal("exit 4 reported as success")
	}
}

// TestKillUnreadStdout: Kill returns although nobody reads stdout.
func TestKillUnreadStdout(t *testing.T) {
	p, err := Start(Options{Path: "sh", Args: []string{"-c", "yes"}, PipeStdout: true})
	if err != nil {
		t.Fatal(err)
	}
	p.Kill()
	<-p.Done()
	if _, err := io.ReadAll(p.Stdout()); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("read after Kill: %v", err)
	}
}

func TestHTTPStatus200AndFreeAddr(t *testing.T) {
	addr, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	if HTTPStatus200("http://" + addr + "/")(context.Background()) {
		t.Fatal("nothing listens, yet ready")
	}
}
