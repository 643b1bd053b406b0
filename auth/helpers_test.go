package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/tagstream/tagstream/stream"
	"github.com/tagstream/tagstream/stream/ssereader"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// secret is the tests' HMAC secret.
var secret = []byte("0123456789abcdef0123456789abcdef")

// testKeys are generated once per test binary (RSA takes a while).
var testKeys = sync.OnceValue(func() (k struct {
	rsa, rsa2 *rsa.PrivateKey
	ec        *ecdsa.PrivateKey
	ed        ed25519.PrivateKey
}) {
	var err error
	if k.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	if k.rsa2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	if k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		panic(err)
	}
	if _, k.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
		panic(err)
	}
	return k
})

// pemOf encodes a public key as a PEM PUBLIC KEY block.
func pemOf(t testing.TB, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// sign makes a token; header entries (kid) are added to its header.
func sign(t testing.TB, m jwt.SigningMethod, key any, claims jwt.MapClaims, header ...string) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	for i := 0; i+1 < len(header); i += 2 {
		tok.Header[header[i]] = header[i+1]
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// jwksJSON is a key set of public keys by kid (alg optional: "kid/alg").
func jwksJSON(t testing.TB, keys map[string]crypto.PublicKey) []byte {
	t.Helper()
	var set jwkset.JWKSMarshal
	for id, pub := range keys {
		kid, alg, _ := strings.Cut(id, "/")
		j, err := jwkset.NewJWKFromKey(pub, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.ALG(alg)}})
		if err != nil {
			t.Fatal(err)
		}
		set.Keys = append(set.Keys, j.Marshal())
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type server struct {
	url  string
	hub  *stream.Hub
	auth *Authorizer
}

// serve starts a hub authorized by cfg behind a real HTTP server.
func serve(t testing.TB, cfg Config, opts stream.Options) *server {
	t.Helper()
	a, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	opts.Authorize = a.Authorize
	h := stream.NewHub(opts)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	t.Cleanup(h.Close)
	return &server{url: srv.URL, hub: h, auth: a}
}

// get requests /events?query with header lines "Name: value".
func (s *server) get(t testing.TB, query string, header ...string) *http.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url+"/events?"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range header {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Add(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// expectStream checks a 200 event stream and returns a reader at its first
// event, which must be `ready`.
func expectStream(t testing.TB, resp *http.Response) *ssereader.Reader {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	rd := ssereader.NewReader(resp.Body)
	rd.Strict = true
	if ev, err := rd.Next(); err != nil || ev.Event != "ready" {
		t.Fatalf("first event %+v: %v", ev, err)
	}
	return rd
}

// expectRefusal checks status, exact plain-text body (so no event was
// written) and, for 401, the WWW-Authenticate challenge.
func expectRefusal(t testing.TB, resp *http.Response, status int, body string) {
	t.Helper()
	got, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status || string(got) != body+"\n" {
		t.Fatalf("got %d %q, want %d %q", resp.StatusCode, got, status, body+"\n")
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	want := ""
	if status == http.StatusUnauthorized {
		want = `Bearer error="invalid_token"`
	}
	if got := resp.Header.Get("WWW-Authenticate"); got != want {
		t.Errorf("WWW-Authenticate %q, want %q", got, want)
	}
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
