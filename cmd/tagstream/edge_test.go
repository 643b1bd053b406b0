package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tagstream/tagstream/stream"
	"github.com/tagstream/tagstream/stream/ssereader"
)

// buildEdge parses args as `run` would and builds the edge.
func buildEdge(t *testing.T, args ...string) (*edge, error) {
	t.Helper()
	fs := newFlagSet("run", io.Discard)
	var f edgeFlags
	f.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	e, err := f.build(context.Background(), slog.New(slog.DiscardHandler))
	if e != nil {
		t.Cleanup(e.close)
	}
	return e, err
}

func TestEdgeFlagErrors(t *testing.T) {
	dir := t.TempDir()
	priv := filepath.Join(dir, "key.pem")
	os.WriteFile(priv, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600)
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"negative limit", nil, []string{"--max-connections", "-1"}, "--max-connections must not be negative, not -1"},
		{"negative per-ip limit", nil, []string{"--max-connections-per-ip", "-2"}, "--max-connections-per-ip must not be negative, not -2"},
		{"tiny header bound", nil, []string{"--max-header-bytes", "100"}, "--max-header-bytes must be at least 4096, not 100"},
		{"cert without key", nil, []string{"--tls-cert", "c.pem"}, "--tls-cert and --tls-key go together"},
		{"missing cert", nil, []string{"--tls-cert", filepath.Join(dir, "c.pem"), "--tls-key", priv}, "--tls-cert/--tls-key: open " + filepath.Join(dir, "c.pem") + ": no such file or directory"},
		{"origin with a path", nil, []string{"--cors-origins", "https://app.example.com/"}, `--cors-origins: origin "https://app.example.com/" has more than scheme://host[:port] (an origin has no path, not even a trailing /)`},
		{"bad template", nil, []string{"--jwt-secret", "s", "--jwt-allow", "user:{sub:*"}, `--jwt-allow "user:{sub:*": unbalanced "{" at byte 6 (write "{{" for a literal brace)`},
		{"template without a key", nil, []string{"--jwt-allow", "user:{sub}:*"}, "--jwt-allow needs a key to verify tokens: --jwt-secret, --jwt-public-key or --jwks"},
		{"missing public key", nil, []string{"--jwt-public-key", filepath.Join(dir, "pub.pem")}, "--jwt-public-key: open " + filepath.Join(dir, "pub.pem") + ": no such file or directory"},
		{"private key given", nil, []string{"--jwt-public-key", priv}, `--jwt-public-key ` + priv + `: a "PRIVATE KEY" PEM block: want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE (never a private key)`},
		{"missing jwks", nil, []string{"--jwks", filepath.Join(dir, "jwks.json")}, "--jwks: " + filepath.Join(dir, "jwks.json") + ": no such file or directory"},
		{"bad anonymous tags", nil, []string{"--anonymous-tags", "a,,b"}, "--anonymous-tags: invalid tag 2: empty entry"},
		{"bad env", []string{"TAGSTREAM_MAX_CONNECTIONS=many"}, nil, `TAGSTREAM_MAX_CONNECTIONS="many": parse error (it sets --max-connections)`},
		{"env checked like the flag", []string{"TAGSTREAM_CORS_ORIGINS=app.example.com"}, nil, `--cors-origins: origin "app.example.com": want scheme://host[:port], e.g. https://app.example.com`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, kv := range tc.env {
				k, v, _ := strings.Cut(kv, "=")
				t.Setenv(k, v)
			}
			_, err := buildEdge(t, tc.args...)
			var ue *usageError
			if !errors.As(err, &ue) || ue.msg != tc.want {
				t.Fatalf("got %v\nwant usage error %s", err, tc.want)
			}
		})
	}
}

func TestEdgeFlagsEnv(t *testing.T) {
	t.Setenv("TAGSTREAM_MAX_CONNECTIONS", "5")
	t.Setenv("TAGSTREAM_MAX_CONNECTIONS_PER_IP", "3")
	t.Setenv("TAGSTREAM_JWT_SECRET", "0123456789abcdef0123456789abcdef")
	t.Setenv("TAGSTREAM_CORS_ORIGINS", "https://app.example.com")
	e, err := buildEdge(t, "--max-connections", "7")
	if err != nil {
		t.Fatal(err)
	}
	o := e.hubOptions(stream.Options{})
	if o.MaxConnections != 7 || o.MaxConnectionsPerIP != 3 || o.Authorize == nil || e.cors == nil {
		t.Fatalf("flags over env: %+v, cors %v", o, e.cors)
	}
	if e.f.maxHeaderBytes != 128<<10 || e.f.jwtCookie != "tagstream_token" {
		t.Fatalf("defaults %+v", e.f)
	}
	// Nothing set: /events open, no CORS.
	for _, k := range []string{"TAGSTREAM_MAX_CONNECTIONS", "TAGSTREAM_MAX_CONNECTIONS_PER_IP", "TAGSTREAM_JWT_SECRET", "TAGSTREAM_CORS_ORIGINS"} {
		os.Unsetenv(k)
	}
	e, err = buildEdge(t)
	if err != nil || e.auth != nil || e.cors != nil {
		t.Fatalf("bare edge: %+v %v", e, err)
	}
}

// TestEdgeFlagErrorExit2: the binary prints the edge's usage error on one
// line and exits 2.
func TestEdgeFlagErrorExit2(t *testing.T) {
	good := filepath.Join(t.TempDir(), "rules.yaml")
	os.WriteFile(good, []byte("rules:\n  - table: todos\n    tags: [todos]\n"), 0o644)
	code, _, stderr := runBinary(t, nil, "run", "--rules", good, "--db", "postgres://localhost/x", "--jwt-allow", "user:{sub}:*")
	if want := "tagstream: --jwt-allow needs a key to verify tokens: --jwt-secret, --jwt-public-key or --jwks\n"; code != 2 || stderr != want {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key, made here.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "tagstream test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certFile, keyFile, pool
}

// TestTLS serves /events over HTTPS as `run` does (edge.configure and
// edge.serve): an HTTP/2 client and an HTTP/1.1 client each get the stream
// and a live event; a plain-HTTP request is not served.
func TestTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	e, err := buildEdge(t, "--tls-cert", certFile, "--tls-key", keyFile)
	if err != nil {
		t.Fatal(err)
	}
	hub := stream.NewHub(e.hubOptions(stream.Options{}))
	mux := http.NewServeMux()
	mux.Handle("/events", e.events(hub))
	srv := &http.Server{Handler: mux}
	e.configure(srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- e.serve(srv, ln) }()
	defer func() {
		hub.Close()
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	}()
	url := "https://" + ln.Addr().String() + "/events?tags=a"

	h2 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	h1 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	defer h2.CloseIdleConnections()
	defer h1.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var readers []*ssereader.Reader
	for _, tc := range []struct {
		client *http.Client
		proto  int
	}{{h2, 2}, {h1, 1}} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := tc.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.ProtoMajor != tc.proto || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("%s %s %v", resp.Proto, resp.Status, resp.Header)
		}
		rd := ssereader.NewReader(resp.Body)
		rd.Strict = true
		if ev, err := rd.Next(); err != nil || ev != (ssereader.Event{ID: "0", Event: "ready", Data: `{"resumed":false}`}) {
			t.Fatalf("HTTP/%d: %+v %v", tc.proto, ev, err)
		}
		readers = append(readers, rd)
	}
	if err := hub.Publish(ctx, 3, time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), []string{"a"}); err != nil {
		t.Fatal(err)
	}
	for i, rd := range readers {
		want := ssereader.Event{ID: "3", Event: "invalidate", Data: `{"tags":["a"],"ts":"2025-01-01T00:00:00Z"}`}
		if ev, err := rd.Next(); err != nil || ev != want {
			t.Fatalf("client %d: %+v %v", i, ev, err)
		}
	}
	// Plain HTTP to the TLS port gets net/http's 400, never a stream.
	resp, err := http.Get("http://" + ln.Addr().String() + "/events?tags=a")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("plain HTTP: %s", resp.Status)
	}
}

// TestMaxHeaderBytes: a request whose headers exceed --max-header-bytes is
// refused by the server before /events sees it.
func TestMaxHeaderBytes(t *testing.T) {
	e, err := buildEdge(t, "--max-header-bytes", "4096")
	if err != nil {
		t.Fatal(err)
	}
	hub := stream.NewHub(e.hubOptions(stream.Options{}))
	defer hub.Close()
	srv := &http.Server{Handler: hub}
	e.configure(srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+"/events?tags=a", nil)
	req.Header.Set("Cookie", "tagstream_token="+strings.Repeat("x", 10000))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %s", resp.Status)
	}
	if n := hub.Stats().Subscribers; n != 0 {
		t.Fatalf("%d subscribers", n)
	}
}
