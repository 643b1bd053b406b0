package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// daemon is a `tagstream run` child process.
type daemon struct {
	cmd     *exec.Cmd
	addr    string
	logPath string
	exited  chan struct{}
	err     error // the exit status, valid once exited is closed
}

// startDaemon runs `bin run args… --listen 127.0.0.1:<free port>` and waits
// until /healthz answers. The clock of a drain starts before this call.
func (b *bench) startDaemon(ctx context.Context, name string, args ...string) (*daemon, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	return b.startDaemonAt(ctx, name, fmt.Sprintf("127.0.0.1:%d", port), args...)
}

// startDaemonAt is startDaemon listening on addr (a restart where the
// clients reconnect).
func (b *bench) startDaemonAt(ctx context.Context, name, addr string, args ...string) (*daemon, error) {
	return b.startCommand(ctx, "run", name, addr, args...)
}

// startCommand runs `bin command args… --listen addr` (run, or serve for an
// edge node) and waits until /healthz answers.
func (b *bench) startCommand(ctx context.Context, command, name, addr string, args ...string) (*daemon, error) {
	args = append([]string{command}, args...)
	args = append(args, "--listen", addr)
	logPath := filepath.Join(b.tmp, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(b.tagstream, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Pdeathsig: the daemon dies with the harness even when the harness is
	// killed without running its cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	b.record(b.tagstream, args...)
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start tagstream: %w", err)
	}
	d := &daemon{cmd: cmd, addr: addr, logPath: logPath, exited: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		logFile.Close()
		close(d.exited)
	}()
	if err := d.waitHTTP(ctx, "/healthz", 30*time.Second); err != nil {
		d.stop()
		return nil, err
	}
	return d, nil
}

// waitHTTP polls path until it answers 200.
func (d *daemon) waitHTTP(ctx context.Context, path string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-d.exited:
			return fmt.Errorf("tagstream exited (%v) before %s answered:\n%s", d.err, path, d.logTail())
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.addr+path, nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("tagstream %s did not answer 200 within %s:\n%s", path, limit, d.logTail())
		case <-d.exited:
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM (the daemon drains and exits 0) and waits; after 20 s
// it kills the process group.
func (d *daemon) stop() error {
	select {
	case <-d.exited:
		return d.err
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		return d.err
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.exited
		return errors.New("tagstream did not stop within 20s of SIGTERM; killed")
	}
}

func (d *daemon) logTail() string {
	b, _ := os.ReadFile(d.logPath)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// rssKiB reads VmRSS from /proc/PID/status.
func (d *daemon) rssKiB() (int64, error) {
	return procStatusKiB(d.cmd.Process.Pid, "VmRSS")
}

func procStatusKiB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// cpu returns the user+system CPU time the process has used so far.
func (d *daemon) cpu() time.Duration { return procCPU(d.cmd.Process.Pid) }

func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name; utime and stime are the
	// 14th and 15th fields of the whole line, in clock ticks (100 Hz).
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// metric reads one value from the daemon's /metrics, or -1.
func (d *daemon) metric(name string) float64 {
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + d.addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
