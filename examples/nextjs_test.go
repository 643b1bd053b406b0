package examples

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

const nextDir = "nextjs"

const todoSchema = `
CREATE TABLE todos (id int PRIMARY KEY, title text NOT NULL, done boolean NOT NULL DEFAULT false);
ALTER TABLE todos REPLICA IDENTITY FULL;
INSERT INTO todos (id, title) VALUES (1, 'write the rules');
`

const todoRules = `rules:
  - table: todos
    tags: [todos, "todo:{id}"]
`

const webhookSecret = "nextjs-example-secret-0123456789"

var (
	nextBuildOnce sync.Once
	nextBuildErr  error
)

// nextBuild runs `next build` once per test run.
func nextBuild(t *testing.T) {
	t.Helper()
	nextBuildOnce.Do(func() {
		cmd := exec.Command(filepath.Join("node_modules", ".bin", "next"), "build")
		cmd.Dir = nextDir
		cmd.Env = append(os.Environ(), "NEXT_TELEMETRY_DISABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			nextBuildErr = fmt.Errorf("next build: %w\n%s", err, out)
		}
	})
	if nextBuildErr != nil {
		t.Fatal(nextBuildErr)
	}
}

// TestNextJS: a row written with plain SQL reaches two `next start`
// instances of examples/nextjs — A through tagstream's webhook sink, B
// through its own instrumentation subscriber — whose 'use cache' data is
// revalidated (a plain GET shows the row), and an open page in Chromium
// shows it without a reload.
func TestNextJS(t *testing.T) {
	needModules(t, nextDir)
	chromium := need(t, "chromium", "for the browser half of the Next.js test")
	nextBuild(t)

	dsn, db, rules := postgres(t, todoSchema, todoRules)
	addrA, addrB := freeAddr(t), freeAddr(t)
	baseA, baseB := "http://"+addrA, "http://"+addrB
	ts, tsBase := startTagstream(t, "--db", dsn, "--rules", rules,
		"--webhook", baseA+"/api/tagstream", "--webhook-secret", webhookSecret,
		"--cors-origins", baseA+","+baseB)

	next := filepath.Join("node_modules", ".bin", "next")
	env := []string{
		"DATABASE_URL=" + dsn,
		"TAGSTREAM_URL=" + tsBase,
		"TAGSTREAM_WEBHOOK_SECRET=" + webhookSecret,
		"NEXT_TELEMETRY_DISABLED=1",
	}
	hostPort := func(addr string) (string, string) {
		h, p, _ := strings.Cut(addr, ":")
		return h, p
	}
	hA, pA := hostPort(addrA)
	hB, pB := hostPort(addrB)
	a := start(t, "next A (webhook)", nextDir, env, next, "start", "-H", hA, "-p", pA)
	b := start(t, "next B (subscriber)", nextDir, append(env, "TAGSTREAM_REVALIDATE_URL="+baseB+"/api/tagstream"),
		next, "start", "-H", hB, "-p", pB)
	a.waitHTTP(t, baseA+"/", "write the rules")
	b.waitHTTP(t, baseB+"/", "write the rules")

	// The browser opens B's page and waits for the live connection.
	browser := newProc(t, "chromium", nextDir, []string{"CHROMIUM=" + chromium}, true, "node", "e2e/browser.mjs", baseB+"/", "write the rules")
	stdin, err := browser.Cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	browser.run(t)
	said := readLines(io.TeeReader(browser.Stdout(), browser.Log()))
	said.expect(t, browser, "opened")

	execSQL(t, db, `INSERT INTO todos (id, title) VALUES (2, 'ship the client')`)
	fmt.Fprintln(stdin, "ship the client")
	for _, p := range []struct {
		proc *proc
		base string
	}{{a, baseA}, {b, baseB}} {
		if err := poll(p.proc, p.base+"/", "ship the client", 60e9); err != nil {
			t.Fatalf("%s: %v\ntagstream:\n%s", p.proc.name, err, ts.Log())
		}
	}
	said.expect(t, browser, "updated")

	// A truncate names no id: todo:* revalidates each instance's layout,
	// which reaches getTodo(1), cached under todo:1 alone.
	execSQL(t, db, `TRUNCATE todos`)
	for _, p := range []struct {
		proc *proc
		base string
	}{{a, baseA}, {b, baseB}} {
		if err := poll(p.proc, p.base+"/", "first: <!-- -->none", 60e9); err != nil {
			t.Fatalf("%s: %v\ntagstream:\n%s", p.proc.name, err, ts.Log())
		}
	}
}
