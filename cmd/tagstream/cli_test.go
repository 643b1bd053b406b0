package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tagstream/tagstream/cdc"
	"gopkg.in/yaml.v3"
)

// runBinary runs the built tagstream binary and returns its exit code, stdout
// and stderr.
func runBinary(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stdout.String(), stderr.String()
}

// TestConfigErrors: bad flags, DSNs and rules exit 2 with one clear line.
func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("rules:\n  - table: todos\n    tags: [todos]\n"), 0o644)
	os.WriteFile(bad, []byte("rules:\n  - table: todos\n    tags: [\"todo:{id\"]\n"), 0o644)

	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string // the whole stderr line
	}{
		{"no command", nil, nil, "tagstream: missing command (run, serve, check, explain, tail or version); see 'tagstream help'"},
		{"unknown command", nil, []string{"nope"}, `tagstream: unknown command "nope" (run, serve, check, explain, tail or version); see 'tagstream help'`},
		{"serve without broker", nil, []string{"serve"}, "tagstream: serve: --broker is required (or TAGSTREAM_BROKER): redis://host:port[/db], the broker `tagstream run --broker` appends to"},
		{"serve bad broker", []string{"TAGSTREAM_BROKER=localhost:6379"}, []string{"serve"}, "tagstream: --broker: want redis://[user:pass@]host:port[/db]: redis: invalid URL scheme: localhost"},
		{"serve bad replay size", nil, []string{"serve", "--broker", "redis://localhost", "--replay-size", "0"}, "tagstream: serve: --replay-size must be at least 1, not 0"},
		{"run bad broker", nil, []string{"run", "--rules", good, "--db", "postgres://localhost/x", "--broker", "localhost:6379"}, "tagstream: --broker: want redis://[user:pass@]host:port[/db]: redis: invalid URL scheme: localhost"},
		{"short lease", nil, []string{"run", "--rules", good, "--db", "postgres://localhost/x", "--broker", "redis://localhost", "--lease", "10ms"}, "tagstream: --lease must be at least 100ms, not 10ms"},
		{"unknown flag", nil, []string{"run", "--nope"}, "tagstream: tagstream run: flag provided but not defined: -nope (see 'tagstream run -h')"},
		{"no rules", nil, []string{"run", "--db", "postgres://localhost/x"}, "tagstream: run: --rules is required (or TAGSTREAM_RULES)"},
		{"no db", nil, []string{"run", "--rules", good}, "tagstream: --db is required (or TAGSTREAM_DB): postgres://user@host:5432/db or mysql://user:pass@host:3306/db"},
		{"bad scheme", nil, []string{"run", "--rules", good, "--db", "redis://localhost"}, `tagstream: --db: unsupported scheme "redis"; use postgres://, postgresql://, mysql:// or mariadb://`},
		{"not a url", nil, []string{"run", "--rules", good, "--db", "host=localhost"}, `tagstream: --db: "host=localhost" is not a URL; use postgres://user@host:5432/db or mysql://user:pass@host:3306/db`},
		{"mysql without database", nil, []string{"run", "--rules", good, "--db", "mysql://root:secret@127.0.0.1:3306"}, "tagstream: --db: mysql://root:xxxxx@127.0.0.1:3306 names no database; add /dbname, the default schema for unqualified tables in rules"},
		{"mariadb scheme reads the binlog", nil, []string{"run", "--rules", good, "--db", "mariadb://root@h"}, "tagstream: --db: mariadb://root@h names no database; add /dbname, the default schema for unqualified tables in rules"},
		{"postgresql scheme reads the WAL", nil, []string{"run", "--rules", good, "--db", "postgresql://localhost:99999/x"}, "tagstream: postgres: configuration error: invalid DSN: cannot parse the DSN"},
		{"env db bad", []string{"TAGSTREAM_DB=ftp://x"}, []string{"run", "--rules", good}, `tagstream: --db: unsupported scheme "ftp"; use postgres://, postgresql://, mysql:// or mariadb://`},
		{"flag overrides env", []string{"TAGSTREAM_RULES=" + bad}, []string{"run", "--rules", good, "--db", "ftp://x"}, `tagstream: --db: unsupported scheme "ftp"; use postgres://, postgresql://, mysql:// or mariadb://`},
		{"bad log format", nil, []string{"run", "--log-format", "xml"}, `tagstream: --log-format: "xml" is not text or json`},
		{"bad replay size", nil, []string{"run", "--rules", good, "--replay-size", "0"}, "tagstream: run: --replay-size must be at least 1, not 0"},
		{"bad fence timeout", nil, []string{"run", "--rules", good, "--visibility-fence-timeout", "0s"}, "tagstream: run: --visibility-fence-timeout must be positive, not 0s"},
		{"bad fence env", []string{"TAGSTREAM_VISIBILITY_FENCE=maybe"}, []string{"run", "--rules", good}, `tagstream: TAGSTREAM_VISIBILITY_FENCE="maybe": parse error (it sets --visibility-fence)`},
		{"publication tables", nil, []string{"run", "--rules", good, "--db", "postgres://localhost/x", "--publication-tables", "some"}, `tagstream: --publication-tables: "some" is not all or rules`},
		{"postgres flag with mariadb", nil, []string{"run", "--rules", good, "--db", "mariadb://root@h/app", "--publication-tables", "rules"}, "tagstream: --publication-tables is a Postgres flag, and --db selects MySQL/MariaDB: remove it"},
		{"mysql flag with postgres", nil, []string{"check", "--rules", good, "--db", "postgres://localhost/x", "--server-id", "7"}, "tagstream: --server-id is a MySQL/MariaDB flag, and --db selects Postgres: remove it"},
		{"tail slot with mysql", nil, []string{"tail", "--rules", good, "--db", "mysql://root@h/app", "--temporary-slot", "s"}, "tagstream: --temporary-slot is a Postgres flag, and --db selects MySQL/MariaDB: remove it"},
		{"missing rules file", nil, []string{"run", "--rules", filepath.Join(dir, "none.yaml"), "--db", "postgres://localhost/x"}, "tagstream: run: rules: open " + filepath.Join(dir, "none.yaml") + ": no such file or directory"},
		{"check without rules", nil, []string{"check"}, "tagstream: check: --rules is required (or TAGSTREAM_RULES)"},
		{"webhook without secret", nil, []string{"run", "--rules", good, "--db", "postgres://localhost/x", "--webhook", "https://app.example/api/tagstream"}, "tagstream: --webhook-secret is required with --webhook (or TAGSTREAM_WEBHOOK_SECRET): the receiver verifies each request with it"},
		{"webhook without scheme", nil, []string{"run", "--rules", good, "--db", "postgres://localhost/x", "--webhook", "app.example/api", "--webhook-secret", "s"}, `tagstream: --webhook: "app.example/api" is not an http:// or https:// URL`},
		{"webhooks from env", []string{"TAGSTREAM_WEBHOOKS=https://a.example/x, ftp://b.example/y", "TAGSTREAM_WEBHOOK_SECRET=s"}, []string{"run", "--rules", good, "--db", "postgres://localhost/x"}, `tagstream: --webhook: "ftp://b.example/y" is not an http:// or https:// URL`},
		{"bad env duration", []string{"TAGSTREAM_WEBHOOK_GIVE_UP=ten minutes"}, []string{"run", "--rules", good, "--db", "postgres://localhost/x"}, `tagstream: TAGSTREAM_WEBHOOK_GIVE_UP="ten minutes": parse error (it sets --webhook-give-up)`},
		{"bad webhook timeout", nil, []string{"run", "--rules", good, "--db", "postgres://localhost/x", "--webhook-timeout", "0s"}, "tagstream: --webhook-timeout must be positive, not 0s"},
		{"redis url", nil, []string{"run", "--rules", good, "--db", "postgres://localhost/x", "--redis-publish", "localhost:6379"}, "tagstream: --redis-publish: want redis://[user:pass@]host:port[/db]: redis: invalid URL scheme: localhost"},
		{"reset keys without redis", nil, []string{"run", "--rules", good, "--db", "postgres://localhost/x", "--redis-reset-keys", "Query.auctions"}, "tagstream: --redis-reset-keys needs --redis-publish"},
		{"env int", []string{"TAGSTREAM_REPLAY_SIZE=lots"}, []string{"run", "--rules", good}, `tagstream: TAGSTREAM_REPLAY_SIZE="lots": parse error (it sets --replay-size)`},
		{"stray argument", nil, []string{"check", "--rules", good, "extra"}, `tagstream: tagstream check: unexpected argument "extra" (see 'tagstream check -h')`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runBinary(t, tc.env, tc.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2; stderr %q", code, stderr)
			}
			if got := strings.TrimSuffix(stderr, "\n"); got != tc.want {
				t.Errorf("stderr\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

// TestInvalidRulesExit2: `run` refuses an invalid rules file with its
// positioned error on one line.
func TestInvalidRulesExit2(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("rules:\n  - table: todos\n    tags: [\"todo:{id\"]\n"), 0o644)
	code, _, stderr := runBinary(t, nil, "run", "--rules", bad, "--db", "postgres://localhost/x")
	if code != 2 || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "tagstream: run: "+bad+":3:") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

func TestCheckOffline(t *testing.T) {
	code, stdout, stderr := runBinary(t, nil, "check", "--rules", "../../rules.example.yaml")
	if code != 0 || !strings.HasPrefix(stdout, "../../rules.example.yaml: ") || !strings.HasSuffix(stdout, " rule(s) OK\n") || stderr != "" {
		t.Fatalf("exit %d stdout %q stderr %q", code, stdout, stderr)
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("rules:\n  - table: todos\n    tagz: [x]\n  - table: t2\n    tags: []\n"), 0o644)
	code, stdout, stderr = runBinary(t, nil, "check", "--rules", bad)
	lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
	if code != 1 || stdout != "" || len(lines) < 3 || lines[len(lines)-1] != bad+": "+strconv.Itoa(len(lines)-1)+" error(s); nothing loaded" {
		t.Fatalf("exit %d stdout %q stderr %q", code, stdout, stderr)
	}
	for _, l := range lines[:len(lines)-1] {
		if !strings.HasPrefix(l, bad+":") {
			t.Errorf("error line without position: %q", l)
		}
	}
}

func TestVersion(t *testing.T) {
	code, stdout, _ := runBinary(t, nil, "version")
	if code != 0 || stdout != "tagstream dev\n" {
		t.Fatalf("exit %d stdout %q", code, stdout)
	}
}

// TestComposeFile checks docker-compose.yml's replication settings, since no
// Docker engine runs where these tests run.
func TestComposeFile(t *testing.T) {
	data, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Build       any               `yaml:"build"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(data, &compose); err != nil {
		t.Fatal(err)
	}
	pg, my, ts := compose.Services["postgres"], compose.Services["mysql"], compose.Services["tagstream"]
	if pg.Image != "postgres:16" || !strings.Contains(strings.Join(pg.Command, " "), "wal_level=logical") {
		t.Errorf("postgres: image %q command %q", pg.Image, pg.Command)
	}
	cmd := strings.Join(my.Command, " ")
	for _, want := range []string{"--log-bin", "--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL", "--server-id="} {
		if my.Image != "mysql:8.4" || !strings.Contains(cmd, want) {
			t.Errorf("mysql: image %q command %q lacks %s", my.Image, cmd, want)
		}
	}
	if ts.Build == nil || !strings.HasPrefix(ts.Environment["TAGSTREAM_DB"], "postgres://") {
		t.Errorf("tagstream: build %v env %v", ts.Build, ts.Environment)
	}
	if _, err := os.Stat("../../Dockerfile"); err != nil {
		t.Error(err)
	}
}

// TestDaemonLinksNoTestCode: the daemon binary must not link the test
// databases' code (testcontainers-go, a Docker client; the demo has its own
// main for that) nor the harnesses' process launcher.
func TestDaemonLinksNoTestCode(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.Contains(pkg, "testcontainers") || strings.Contains(pkg, "docker") || strings.Contains(pkg, "moby") ||
			pkg == "github.com/tagstream/tagstream/internal/launch" {
			t.Errorf("tagstream links %s", pkg)
		}
	}
}

// explainRules is the rules file of the explain tests.
const explainRules = `rules:
  - name: todo-item
    table: todos
    on: [insert, update, delete]
    columns: [title, done, user_id]
    tags: [todos, "todo:{id}", "user:{user_id}:todos"]
  - table: todos
    on: [truncate, delete]
    tags: ["list:{old.list_id}"]
  - table: app.audit_*
    tags: ["audit:{id}"]
`

// TestExplain: the tags one change produces, exact stdout, stderr and exit
// status, as docs/cli.md "explain" says.
func TestExplain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte(explainRules), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"insert", []string{"--table", "todos", "--op", "insert", "--new", `{"id":"1","user_id":"7","title":"a b"}`},
			0, "todo:1\ntodos\nuser:7:todos\n", ""},
		{"insert verbose", []string{"--table", "public.todos", "--op", "insert", "--new", `{"id":"1","user_id":"7"}`, "-v"},
			0, "todo-item\ttodo:1\ntodo-item\ttodos\ntodo-item\tuser:7:todos\n", ""},
		// Moving a todo from user 7 to user 9 invalidates both lists.
		{"update both images", []string{"--table", "todos", "--op", "update", "--old", `{"id":"1","user_id":"7"}`, "--new", `{"id":"1","user_id":"9"}`},
			0, "todo:1\ntodos\nuser:7:todos\nuser:9:todos\n", ""},
		// No old image (REPLICA IDENTITY DEFAULT): the key is the new
		// row's, every other old value unknown.
		{"update without old image", []string{"--table", "todos", "--op", "update", "--new", `{"id":"1","user_id":"9"}`, "--key", "id"},
			0, "todo:1\ntodos\nuser:*:todos\nuser:9:todos\n", ""},
		{"update new-only", []string{"--table", "todos", "--op", "update", "--new", `{"id":"1","user_id":"9"}`, "--key", "id", "--old-images", "new-only"},
			0, "todo:1\ntodos\nuser:9:todos\n", ""},
		// The columns filter: nothing the rule watches changed (a watched
		// column absent from the old image would count as changed).
		{"update filtered", []string{"--table", "todos", "--op", "update", "--old", `{"id":"1","user_id":"7","title":"a","done":null,"note":"x"}`, "--new", `{"id":"1","user_id":"7","title":"a","done":null,"note":"y"}`},
			0, "", ""},
		{"update filter absent old", []string{"--table", "todos", "--op", "update", "--old", `{"id":"1","user_id":"7"}`, "--new", `{"id":"1","user_id":"7"}`},
			0, "todo:1\ntodos\nuser:7:todos\n", ""},
		// NULL yields no tag; a column absent from the image is unknown.
		{"null and absent", []string{"--table", "todos", "--op", "insert", "--new", `{"id":null}`},
			0, "todos\nuser:*:todos\n", ""},
		{"delete", []string{"--table", "todos", "--op", "delete", "--old", `{"id":"4","user_id":"7","list_id":"2"}`, "-v"},
			0, "todo-item\ttodo:4\ntodo-item\ttodos\ntodo-item\tuser:7:todos\nrule 2\tlist:2\n", ""},
		{"truncate", []string{"--table", "todos", "--op", "truncate", "-v"}, 0, "rule 2\tlist:*\n", ""},
		{"pattern table", []string{"--table", "app.audit_2026", "--op", "insert", "--new", `{"id":"5"}`}, 0, "audit:5\n", ""},
		{"schema flag", []string{"--schema", "app", "--table", "audit_x", "--op", "delete", "--old", `{"id":"5"}`}, 0, "audit:5\n", ""},
		{"percent-encoded", []string{"--table", "todos", "--op", "insert", "--new", `{"id":"a,b*c%"}`}, 0, "todo:a%2Cb%2Ac%25\ntodos\nuser:*:todos\n", ""},

		{"unknown table", []string{"--table", "todo", "--op", "insert"}, 2, "", "tagstream: explain: no rule in " + path + " names table public.todo\n"},
		{"unknown op", []string{"--table", "todos", "--op", "upsert"}, 2, "", "tagstream: explain: --op \"upsert\" is not insert, update, delete or truncate\n"},
		{"missing op", []string{"--table", "todos"}, 2, "", "tagstream: explain: --op is required: insert, update, delete or truncate\n"},
		{"missing table", []string{"--op", "insert"}, 2, "", "tagstream: explain: --table is required: [SCHEMA.]TABLE\n"},
		{"bad table", []string{"--table", "a.b.c", "--op", "insert"}, 2, "", "tagstream: explain: --table \"a.b.c\": want TABLE or SCHEMA.TABLE, without `*`\n"},
		{"bad json", []string{"--table", "todos", "--op", "insert", "--new", `{"id":`}, 2, "", "tagstream: explain: --new: want a JSON object of column -> string or null, like {\"id\":\"7\",\"note\":null}\n"},
		{"json array", []string{"--table", "todos", "--op", "delete", "--old", `["id"]`}, 2, "", "tagstream: explain: --old: want a JSON object of column -> string or null, like {\"id\":\"7\",\"note\":null}\n"},
		{"json number", []string{"--table", "todos", "--op", "insert", "--new", `{"id":7}`}, 2, "", "tagstream: explain: --new: column \"id\": 7 is not a string or null (write numbers as their text: \"7\")\n"},
		{"old on insert", []string{"--table", "todos", "--op", "insert", "--old", `{}`}, 2, "", "tagstream: explain: --old: an insert has no old row\n"},
		{"new on delete", []string{"--table", "todos", "--op", "delete", "--new", `{}`}, 2, "", "tagstream: explain: --new: a delete has no new row\n"},
		{"bad old-images", []string{"--table", "todos", "--op", "insert", "--old-images", "some"}, 2, "", "tagstream: explain: --old-images: \"some\" is not wildcard or new-only\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runBinary(t, nil, append([]string{"explain", "--rules", path}, tc.args...)...)
			if code != tc.code || stdout != tc.stdout || stderr != tc.stderr {
				t.Errorf("exit %d, want %d\nstdout %q\n  want %q\nstderr %q\n  want %q", code, tc.code, stdout, tc.stdout, stderr, tc.stderr)
			}
		})
	}
}

func TestExplainRulesErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("rules:\n  - table: todos\n    tags: [\"todo:{id\"]\n"), 0o644)
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"no rules", nil, []string{"explain", "--table", "t", "--op", "insert"}, "tagstream: explain: --rules is required (or TAGSTREAM_RULES)\n"},
		// The change comes from the command line only, never the environment.
		{"no table from env", []string{"TAGSTREAM_RULES=" + bad, "TAGSTREAM_TABLE=todos", "TAGSTREAM_OP=insert"}, []string{"explain"}, "tagstream: explain: --op is required: insert, update, delete or truncate\n"},
		{"old-images from env", []string{"TAGSTREAM_OLD_IMAGES=some"}, []string{"explain", "--rules", bad, "--table", "todos", "--op", "insert"}, "tagstream: explain: --old-images: \"some\" is not wildcard or new-only\n"},
		{"invalid rules", nil, []string{"explain", "--rules", bad, "--table", "todos", "--op", "insert"},
			"tagstream: explain: " + bad + `:3:12: rule 1: tags[0] "todo:{id": unbalanced "{" at byte 6 (write "{{" for a literal brace)` + "\n"},
		{"rules from env", []string{"TAGSTREAM_RULES=" + bad}, []string{"explain", "--table", "todos", "--op", "insert"},
			"tagstream: explain: " + bad + `:3:12: rule 1: tags[0] "todo:{id": unbalanced "{" at byte 6 (write "{{" for a literal brace)` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runBinary(t, tc.env, tc.args...)
			if code != 2 || stdout != "" || stderr != tc.want {
				t.Errorf("exit %d stdout %q stderr\n got %q\nwant %q", code, stdout, stderr, tc.want)
			}
		})
	}
}

// TestHelpOnce: -h prints a command's usage once, on stdout, and exits 0;
// a mistake prints one line on stderr and no usage.
func TestHelpOnce(t *testing.T) {
	for _, cmd := range []string{"run", "serve", "check", "explain", "tail"} {
		code, stdout, stderr := runBinary(t, nil, cmd, "-h")
		if code != 0 || stderr != "" || strings.Count(stdout, "Usage of tagstream "+cmd) != 1 || !strings.HasPrefix(stdout, "Usage of tagstream "+cmd) {
			t.Errorf("%s -h: exit %d stderr %q stdout %q", cmd, code, stderr, stdout)
		}
		code, stdout, _ = runBinary(t, nil, cmd, "--nope")
		if code != 2 || stdout != "" {
			t.Errorf("%s --nope: exit %d stdout %q", cmd, code, stdout)
		}
	}
}

// TestFindingsNameRulesOnce: an unnamed rule is "rule 2", not "rule rule 2".
func TestFindingsNameRulesOnce(t *testing.T) {
	var b strings.Builder
	errs := printFindings(&b, []cdc.Finding{
		{Severity: cdc.Error, Rule: "rule 2", Message: `column "uuid" does not exist in table public.todos`},
		{Severity: cdc.Warning, Rule: "todo", Message: "no table matches public.x"},
		{Severity: cdc.Warning, Message: "wal_level"},
	})
	want := "error: rule 2: column \"uuid\" does not exist in table public.todos\nwarning: rule todo: no table matches public.x\nwarning: wal_level\n"
	if errs != 1 || b.String() != want {
		t.Fatalf("errs %d\n got %q\nwant %q", errs, b.String(), want)
	}
}
