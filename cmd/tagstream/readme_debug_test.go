package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/tagstream/tagstream/internal/launch"
)

// readmeSection returns the README's section under heading, up to the next
// heading of the same level.
func readmeSection(t *testing.T, heading string) string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(readme), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README.md has no %q", heading)
	}
	if i := strings.Index(sec, "\n## "); i >= 0 {
		sec = sec[:i]
	}
	return sec
}

// fencedBlocks returns the bodies of the section's ```lang blocks.
func fencedBlocks(sec, lang string) []string {
	var out []string
	for _, part := range strings.Split(sec, "```"+lang+"\n")[1:] {
		body, _, _ := strings.Cut(part, "```")
		out = append(out, body)
	}
	return out
}

// consoleSteps splits a console block into commands ("$ " lines) and the
// output each prints.
func consoleSteps(block string) (cmds []string, outs []string) {
	for _, line := range strings.SplitAfter(block, "\n") {
		if cmd, ok := strings.CutPrefix(line, "$ "); ok {
			cmds = append(cmds, strings.TrimSuffix(cmd, "\n"))
			outs = append(outs, "")
			continue
		}
		if len(outs) > 0 {
			outs[len(outs)-1] += line
		}
	}
	return cmds, outs
}

// readmeShell runs a README command with sh in the repository's root, with
// the built tagstream first on PATH.
func readmeShell(cmd string, env ...string) *exec.Cmd {
	o := readmeShellOptions(cmd, env...)
	c := exec.Command(o.Path, o.Args...)
	c.Dir = o.Dir
	c.Env = append(os.Environ(), o.Env...)
	return c
}

// readmeShellOptions is readmeShell for internal/launch.
func readmeShellOptions(cmd string, env ...string) launch.Options {
	return launch.Options{
		Path: "sh", Args: []string{"-c", cmd}, Dir: "../..",
		Env: append([]string{"PATH=" + filepath.Dir(binary) + string(os.PathListSeparator) + os.Getenv("PATH")}, env...),
	}
}

const debugHeading = "## Debugging a rules file: explain and tail"

// TestReadmeExplain runs every explain command of the README's debugging
// section and compares what it prints with what the README shows.
func TestReadmeExplain(t *testing.T) {
	blocks := fencedBlocks(readmeSection(t, debugHeading), "console")
	if len(blocks) != 2 {
		t.Fatalf("%d console blocks, want 2 (explain, tail)", len(blocks))
	}
	cmds, outs := consoleSteps(blocks[0])
	if len(cmds) < 4 {
		t.Fatalf("%d explain commands", len(cmds))
	}
	for i, cmd := range cmds {
		if !strings.HasPrefix(cmd, "tagstream explain ") {
			t.Fatalf("not an explain command: %q", cmd)
		}
		out, err := readmeShell(cmd).Output()
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		if string(out) != outs[i] {
			t.Errorf("%s\n got %q\nwant %q", cmd, out, outs[i])
		}
	}
}

// TestReadmeTail runs the README's tail command against a private Postgres,
// runs the README's SQL and compares the lines (positions are the
// database's own); Ctrl-C exits 0.
func TestReadmeTail(t *testing.T) {
	sec := readmeSection(t, debugHeading)
	cmds, outs := consoleSteps(fencedBlocks(sec, "console")[1])
	sqls := fencedBlocks(sec, "sql")
	if len(cmds) != 1 || !strings.HasPrefix(cmds[0], "tagstream tail ") || len(sqls) != 1 {
		t.Fatalf("tail commands %q, sql blocks %d", cmds, len(sqls))
	}
	dsn, db, _ := setupPG(t)
	execSQL(t, db, `CREATE PUBLICATION tagstream FOR ALL TABLES`)

	p := startTailCommand(t, readmeShellOptions("exec "+cmds[0], "TAGSTREAM_DB="+dsn))

	want := strings.Split(strings.TrimSuffix(outs[0], "\n"), "\n")
	var stmts []string
	for s := range strings.SplitSeq(sqls[0], ";\n") {
		if s = strings.TrimSpace(s); s != "" {
			stmts = append(stmts, s)
		}
	}
	if len(stmts) != len(want) {
		t.Fatalf("%d statements for %d lines", len(stmts), len(want))
	}
	pos := regexp.MustCompile(`^position=([0-9]+) `)
	var last uint64
	for i, stmt := range stmts {
		execSQL(t, db, stmt)
		got := p.raw(t)
		gm, wm := pos.FindStringSubmatch(got), pos.FindStringSubmatch(want[i])
		if gm == nil || wm == nil || got[len(gm[0]):] != want[i][len(wm[0]):] {
			t.Fatalf("after %q:\n got %q\nwant %q (any position)", stmt, got, want[i])
		}
		n, _ := strconv.ParseUint(gm[1], 10, 64)
		if n <= last {
			t.Fatalf("position %d after %d", n, last)
		}
		last = n
	}
	p.interrupt(t) // Ctrl-C: exit 0, nothing more printed
}
