package main

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
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

	get := func(query string, header ...string) *http.Response { return getEvents(t, d.base, query, header...) }
	checkAnswers(t, []answer{
		{get("tags=user:8:todos", "Authorization: Bearer "+tok, "Origin: https://app.example.com"), 403,
			`tag "user:8:todos" is not allowed by the token`,
			map[string]string{"Access-Control-Allow-Origin": "https://app.example.com", "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}},
		{get("tags=user:*", "Cookie: tagstream_token="+tok), 403, `tag "user:*" is not allowed by the token`, nil},
		{get("tags=todos"), 401, "missing token: send Authorization: Bearer <token>, ?access_token=<token> or the tagstream_token cookie",
			map[string]string{"WWW-Authenticate": `Bearer error="invalid_token"`}},
		{get("tags=todos&access_token="+tok+"x", "Origin: https://evil.example.com"), 401, "invalid token: bad signature",
			map[string]string{"WWW-Authenticate": `Bearer error="invalid_token"`, "Access-Control-Allow-Origin": ""}},
	})

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

// getEvents asks the daemon at base for /events?query with the headers
// ("Name: value"); the body is closed at the test's end.
func getEvents(t *testing.T, base, query string, header ...string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/events?"+query, nil)
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

// answer is a refusal expected of /events: status, whole body (without its
// newline) and headers ("" = absent).
type answer struct {
	resp   *http.Response
	status int
	body   string
	hdr    map[string]string
}

func checkAnswers(t *testing.T, answers []answer) {
	t.Helper()
	for _, a := range answers {
		body, _ := io.ReadAll(a.resp.Body)
		if a.resp.StatusCode != a.status || string(body) != a.body+"\n" {
			t.Errorf("%s: got %d %q, want %d %q", a.resp.Request.URL.RawQuery, a.resp.StatusCode, body, a.status, a.body)
		}
		for k, v := range a.hdr {
			if got := a.resp.Header.Get(k); got != v {
				t.Errorf("%s: %s: %q, want %q", a.resp.Request.URL.RawQuery, k, got, v)
			}
		}
	}
}

// TestEndToEndKeysAndClaims: the other authorization flags through the
// binary, in one daemon: --jwt-public-key (ES256) and --jwks (the Ed25519
// key its kid names, of two) both verify; --jwt-tags-claim reads a dotted claim instead
// of `tags`; --jwt-allow fills {sub}; --anonymous-tags is what a request
// without a token gets; --jwt-cookie names the cookie.
func TestEndToEndKeysAndClaims(t *testing.T) {
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&ecKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubFile := writeFile(t, "pub.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	edPub, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk := func(kid string, pub ed25519.PublicKey) string {
		return `{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig","kid":"` + kid + `","x":"` + base64.RawURLEncoding.EncodeToString(pub) + `"}`
	}
	jwksFile := writeFile(t, "jwks.json", `{"keys":[`+jwk("edge-0", otherPub)+`,`+jwk("edge-1", edPub)+`]}`)
	sign := func(method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
		t.Helper()
		claims["exp"] = time.Now().Add(time.Hour).Unix()
		tok := jwt.NewWithClaims(method, claims)
		if kid != "" {
			tok.Header["kid"] = kid
		}
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	user7 := sign(jwt.SigningMethodES256, ecKey, "", jwt.MapClaims{"sub": "7", "app": map[string]any{"tags": []string{"todo:42"}}})
	user8 := sign(jwt.SigningMethodEdDSA, edKey, "edge-1", jwt.MapClaims{"sub": "8"})
	wrongKid := sign(jwt.SigningMethodEdDSA, edKey, "edge-0", jwt.MapClaims{"sub": "8"})
	topLevel := sign(jwt.SigningMethodES256, ecKey, "", jwt.MapClaims{"sub": "7", "tags": []string{"todo:43"}})
	hs := sign(jwt.SigningMethodHS256, []byte(e2eSecret), "", jwt.MapClaims{"sub": "7"})
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged := sign(jwt.SigningMethodES256, otherKey, "", jwt.MapClaims{"sub": "7"})

	dsn, db, rulesFile := setupPG(t)
	d := startDaemon(t, "--db", dsn, "--rules", rulesFile, "--slot", "keys", "--publication", "keys",
		"--jwt-public-key", pubFile, "--jwks", jwksFile, "--jwt-tags-claim", "app.tags",
		"--jwt-allow", "user:{sub}:*", "--anonymous-tags", "todos", "--jwt-cookie", "sess")

	seven := subscribe(t, d.base, "tags=user:7:todos,todo:42&access_token="+user7, "")
	eight := subscribe(t, d.base, "tags=user:8:todos&access_token="+user8, "")
	anon := subscribe(t, d.base, "tags=todos", "")
	for _, c := range []*sseClient{seven, eight, anon} {
		c.expect(t, `ready {"resumed":false}`)
	}
	execSQL(t, db, `INSERT INTO todos (id, user_id, title) VALUES (42, 7, 'a')`, `INSERT INTO todos (id, user_id, title) VALUES (1, 8, 'b')`)
	seven.expect(t, "invalidate todo:42 user:7:todos")
	eight.expect(t, "invalidate user:8:todos")
	anon.expect(t, "invalidate todos")
	anon.expect(t, "invalidate todos")

	get := func(query string, header ...string) *http.Response { return getEvents(t, d.base, query, header...) }
	if resp := get("tags=user:7:todos", "Cookie: sess="+user7); resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("token in the sess cookie: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	unauthorized := map[string]string{"WWW-Authenticate": `Bearer error="invalid_token"`}
	checkAnswers(t, []answer{
		{get("tags=user:8:todos", "Authorization: Bearer "+user7), 403, `tag "user:8:todos" is not allowed by the token`, nil},
		{get("tags=todo:43&access_token=" + topLevel), 403, `tag "todo:43" is not allowed by the token`, nil},
		{get("tags=todo:42"), 401, `missing token: tag "todo:42" is not open to anonymous subscribers`, unauthorized},
		// The default cookie is not read: the request is anonymous.
		{get("tags=user:7:todos", "Cookie: tagstream_token="+user7), 401, `missing token: tag "user:7:todos" is not open to anonymous subscribers`, unauthorized},
		{get("tags=todos&access_token=" + hs), 401, `invalid token: algorithm "HS256" is not accepted (accepted: ES256, ES384, ES512, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512)`, unauthorized},
		{get("tags=todos&access_token=" + forged), 401, "invalid token: bad signature", unauthorized},
		// The key is the one its kid names, not any key of the set.
		{get("tags=user:8:todos&access_token=" + wrongKid), 401, "invalid token: bad signature", unauthorized},
	})
	d.stop(t)
}
