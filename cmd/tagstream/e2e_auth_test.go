package main

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const e2eSecret = "e2e-secret-0123456789abcdef0123456789"

// readmeMintToken is the Node example of README.md's "Securing /events".
func readmeMintToken(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const start = "```js\n// mint-token.mjs"
	i := strings.Index(string(readme), start)
	if i < 0 {
		t.Fatal("README.md has no mint-token.mjs example")
	}
	code := string(readme[i+len("```js\n"):])
	code = code[:strings.Index(code, "```")]
	if n := strings.Count(strings.TrimSpace(code), "\n") + 1; n > 12 {
		t.Errorf("the README's token example has %d lines", n)
	}
	return code
}

// mintWithNode runs the README's example with node and returns the token
// it prints for user.
func mintWithNode(t *testing.T, user string) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("node is needed to run the README's token example")
		}
		t.Skip("node not installed: the README's token example cannot run")
	}
	file := filepath.Join(t.TempDir(), "mint-token.mjs")
	if err := os.WriteFile(file, []byte(readmeMintToken(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, file, user)
	cmd.Env = append(os.Environ(), "TAGSTREAM_JWT_SECRET="+e2eSecret)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node %s: %v", file, err)
	}
	tok := strings.TrimSpace(string(out))
	if strings.Count(tok, ".") != 2 {
		t.Fatalf("node printed %q, not a JWT", out)
	}
	return tok
}

// TestEndToEndSecured: through the binary, a token minted by the README's
// Node example subscribes and receives its invalidation; an entry outside
// the token is 403, no token is 401; the CORS preflight answers; /metrics
// counts the refusals.
func TestEndToEndSecured(t *testing.T) {
	tok := mintWithNode(t, "7")
	dsn, db, rulesFile := setupPG(t)
	// The secret comes from the environment, as in production.
	t.Setenv("TAGSTREAM_JWT_SECRET", e2eSecret)
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "secured", "--publication", "secured",
		"--cors-origins", "https://app.example.com", "--max-connections-per-ip", "10")

	c := subscribe(t, d.base, "tags=user:7:todos,todos&access_token="+tok, "")
	c.expect(t, `ready {"resumed":false}`)
	execSQL(t, db, `INSERT INTO todos (id, user_id, title) VALUES (1, 7, 'secured')`)
	c.expect(t, "invalidate todos user:7:todos")

	get := func(query string, header ...string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, d.base+"/events?"+query, nil)
		for _, h := range header {
			k, v, _ := strings.Cut(h, ": ")
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	for _, tc := range []struct {
		resp   *http.Response
		status int
		body   string
		hdr    map[string]string
	}{
		{get("tags=user:8:todos", "Authorization: Bearer "+tok, "Origin: https://app.example.com"), 403,
			`tag "user:8:todos" is not allowed by the token`,
			map[string]string{"Access-Control-Allow-Origin": "https://app.example.com", "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}},
		{get("tags=user:*", "Cookie: tagstream_token="+tok), 403, `tag "user:*" is not allowed by the token`, nil},
		{get("tags=todos"), 401, "missing token: send Authorization: Bearer <token>, ?access_token=<token> or the tagstream_token cookie",
			map[string]string{"WWW-Authenticate": `Bearer error="invalid_token"`}},
		{get("tags=todos&access_token="+tok+"x", "Origin: https://evil.example.com"), 401, "invalid token: bad signature",
			map[string]string{"WWW-Authenticate": `Bearer error="invalid_token"`, "Access-Control-Allow-Origin": ""}},
	} {
		body, _ := io.ReadAll(tc.resp.Body)
		if tc.resp.StatusCode != tc.status || string(body) != tc.body+"\n" {
			t.Errorf("got %d %q, want %d %q", tc.resp.StatusCode, body, tc.status, tc.body)
		}
		for k, v := range tc.hdr {
			if got := tc.resp.Header.Get(k); got != v {
				t.Errorf("%s: %q, want %q", k, got, v)
			}
		}
	}

	req, _ := http.NewRequest(http.MethodOptions, d.base+"/events?tags=todos", nil)
	req.Header.Set("Origin", "https://app.example.com")
	req.Header.Set("Access-Control-Request-Method", "GET")
	req.Header.Set("Access-Control-Request-Headers", "authorization, last-event-id")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent ||
		resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		resp.Header.Get("Access-Control-Allow-Headers") != "Authorization, Last-Event-ID, Cache-Control" ||
		resp.Header.Get("Access-Control-Allow-Methods") != "GET" {
		t.Fatalf("preflight: %s %v", resp.Status, resp.Header)
	}

	resp, err = http.Get(d.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		"# TYPE tagstream_events_rejected_total counter\n",
		`tagstream_events_rejected_total{reason="unauthorized"} 2` + "\n",
		`tagstream_events_rejected_total{reason="forbidden"} 2` + "\n",
		`tagstream_events_rejected_total{reason="max_connections"} 0` + "\n",
		"tagstream_events_expired_total 0\n",
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	d.stop(t)
}
