// Package launch starts and stops the child processes of tagstream's test
// and benchmark harnesses: the tagstream binary for the end-to-end tests
// (cmd/tagstream), the examples' tests and the benchmark (bench/), and the
// examples' Node processes. It is the one place that knows how to start a
// child that dies with the harness, capture its output, wait until it is
// up, and stop it (SIGTERM, then SIGKILL). The daemon never imports it.
package launch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options say what to run and where its output goes.
type Options struct {
	Path string   // the program
	Args []string // its arguments
	// Wrap is a command line that execs Path with Args appended to it
	// (`unshare -m sh -c '… exec "$0" "$@"'`); nil runs Path directly.
	Wrap []string
	Dir  string   // working directory ("": the harness's)
	Env  []string // added to the harness's environment
	// Stdout, when set, receives standard output instead of the log.
	Stdout io.Writer
	// PipeStdout sends standard output to Process.Stdout instead (the
	// caller must read it to its end).
	PipeStdout bool
	// LogFile, when set, keeps the log in this file instead of in memory
	// (the benchmark keeps its daemons' logs next to its report).
	LogFile string
}

// Process is a started child. It runs in a process group of its own and
// receives SIGKILL when the harness dies without cleaning up.
type Process struct {
	// Cmd is the command; a caller of New may change its Stdin, Stdout or
	// Stderr (or take a pipe) before Start.
	Cmd    *exec.Cmd
	log    *Log
	stdout *io.PipeReader // PipeStdout
	pw     *io.PipeWriter // closed once the process has exited
	done   chan struct{}
	err    error
}

// New prepares a process without starting it.
func New(o Options) (*Process, error) {
	log := &Log{}
	if o.LogFile != "" {
		f, err := os.Create(o.LogFile)
		if err != nil {
			return nil, fmt.Errorf("launch: %w", err)
		}
		log.file = f
	}
	argv := append(append(slices.Clone(o.Wrap), o.Path), o.Args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = o.Dir
	cmd.Env = append(os.Environ(), o.Env...)
	cmd.Stdout, cmd.Stderr = log, log
	p := &Process{Cmd: cmd, log: log, done: make(chan struct{})}
	switch {
	case o.PipeStdout:
		p.stdout, p.pw = io.Pipe()
		cmd.Stdout = p.pw
	case o.Stdout != nil:
		cmd.Stdout = o.Stdout
	}
	// Setpgid: Stop reaches the children a wrapper or `node` starts.
	// Pdeathsig: the child dies with the harness even when the harness is
	// killed without running its cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return p, nil
}

// Start runs a process prepared by New. Its exit is reported by Done.
func (p *Process) Start() error {
	if err := p.Cmd.Start(); err != nil {
		p.log.close()
		if p.pw != nil {
			p.pw.Close()
		}
		return fmt.Errorf("launch: start %s: %w", p.Cmd.Path, err)
	}
	go func() {
		p.err = p.Cmd.Wait()
		p.log.close()
		if p.pw != nil {
			p.pw.Close() // the reader sees EOF after the last line
		}
		close(p.done)
	}()
	return nil
}

// Start is New then Start.
func Start(o Options) (*Process, error) {
	p, err := New(o)
	if err != nil {
		return nil, err
	}
	if err := p.Start(); err != nil {
		return nil, err
	}
	return p, nil
}

// Done is closed once the process has exited and its output is in the log.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the exit status (nil for exit 0); valid once Done is closed.
func (p *Process) Err() error { return p.err }

// Log is the process's output (stderr, and stdout unless Options.Stdout
// took it).
func (p *Process) Log() *Log { return p.log }

// Stdout is standard output with Options.PipeStdout (nil otherwise): it
// ends once the process has exited. Until it is read, the process may block
// writing, and its exit is not reported (Kill drops what is left).
func (p *Process) Stdout() io.Reader {
	if p.stdout == nil {
		return nil
	}
	return p.stdout
}

// Pid is the process id.
func (p *Process) Pid() int { return p.Cmd.Process.Pid }

// Signal sends sig to the process alone.
func (p *Process) Signal(sig os.Signal) error { return p.Cmd.Process.Signal(sig) }

// Await asks ready every interval until it says yes. It fails when the
// process exits first or ctx ends first, with the end of the log.
func (p *Process) Await(ctx context.Context, interval time.Duration, ready func(context.Context) bool) error {
	for !ready(ctx) {
		select {
		case <-p.done:
			status := p.err
			if status == nil {
				status = errExit0
			}
			return fmt.Errorf("%s exited early: %w:\n%s", p.Cmd.Path, status, p.log.Tail(3000))
		case <-ctx.Done():
			return fmt.Errorf("%s not up: %w:\n%s", p.Cmd.Path, context.Cause(ctx), p.log.Tail(3000))
		case <-time.After(interval):
		}
	}
	return nil
}

var errExit0 = errors.New("exit status 0")

// ErrKilled is what Stop returns when the process had to be killed.
var ErrKilled = errors.New("launch: no exit within the grace period after SIGTERM; killed")

// Stop sends SIGTERM to the process group and waits for the exit; after
// grace it kills the group and returns ErrKilled. Otherwise it returns the
// exit status (nil for exit 0). Stopping an exited process returns its
// status.
func (p *Process) Stop(grace time.Duration) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = syscall.Kill(-p.Pid(), syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(grace):
		p.Kill()
		return ErrKilled
	}
}

// Kill sends SIGKILL to the process group (no drain, no final
// acknowledgement) and waits for the exit.
func (p *Process) Kill() {
	select {
	case <-p.done:
		return // reaped: its group id may belong to another process by now
	default:
	}
	_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
	if p.stdout != nil {
		// A reader that stopped reading must not keep Wait, and so Kill,
		// waiting for the rest of stdout.
		p.stdout.CloseWithError(ErrKilled)
	}
	<-p.done
}

// HTTPStatus200 is a readiness check for Await: GET url answers 200.
func HTTPStatus200(url string) func(context.Context) bool {
	client := &http.Client{Timeout: time.Second}
	return func(ctx context.Context) bool {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false
		}
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
}

// BuildTagstream compiles ./cmd/tagstream of the module the harness runs
// in into dir and returns the binary's path.
func BuildTagstream(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "tagstream")
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/tagstream")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("launch: go build ./cmd/tagstream: %w\n%s", err, b)
	}
	return out, nil
}

func moduleRoot(ctx context.Context) (string, error) {
	b, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("launch: go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(b))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("launch: run from inside the tagstream module")
	}
	return filepath.Dir(mod), nil
}

// FreeAddr returns a loopback TCP address that was free a moment ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Log collects a process's output, in memory or in a file, for any
// goroutine to read while the process writes.
type Log struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	file *os.File
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		return l.file.Write(p)
	}
	return l.buf.Write(p)
}

// String is the whole log so far.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		b, _ := os.ReadFile(l.file.Name())
		return string(b)
	}
	return l.buf.String()
}

// Tail is the last n bytes of the log.
func (l *Log) Tail(n int) string {
	s := l.String()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}

func (l *Log) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		_ = l.file.Close()
	}
}
