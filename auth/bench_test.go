package auth

import (
	"bufio"
	"crypto"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tagstream/tagstream/stream"
	"github.com/tagstream/tagstream/stream/ssereader"
)

// benchCases are the setups measured: no authorization, and one token per
// algorithm family with a 2-pattern grant.
func benchCases(b *testing.B) []struct {
	name  string
	cfg   *Config
	token string
} {
	k := testKeys()
	claims := jwt.MapClaims{"sub": "7", "tags": []string{"todos", "user:7:*"}, "exp": hour(1)}
	rsaKeys := []crypto.PublicKey{&k.rsa.PublicKey}
	ecKeys := []crypto.PublicKey{&k.ec.PublicKey}
	return []struct {
		name  string
		cfg   *Config
		token string
	}{
		{"open", nil, ""},
		{"HS256", &Config{Secret: secret}, sign(b, jwt.SigningMethodHS256, secret, claims)},
		{"RS256", &Config{PublicKeys: rsaKeys}, sign(b, jwt.SigningMethodRS256, k.rsa, claims)},
		{"ES256", &Config{PublicKeys: ecKeys}, sign(b, jwt.SigningMethodES256, k.ec, claims)},
	}
}

// BenchmarkAuthorize is the cost authorization adds to one subscription:
// finding the token, verifying it, and checking 3 entries against the grant.
//
//	go test -run '^$' -bench Authorize ./auth/
func BenchmarkAuthorize(b *testing.B) {
	entries := []string{"todos", "user:7:todos", "user:7:*"}
	for _, bc := range benchCases(b) {
		if bc.cfg == nil {
			continue
		}
		b.Run(bc.name, func(b *testing.B) {
			a, err := New(b.Context(), *bc.cfg)
			if err != nil {
				b.Fatal(err)
			}
			r := httptest.NewRequest(http.MethodGet, "/events?tags=todos,user:7:todos,user:7:*", nil)
			r.Header.Set("Authorization", "Bearer "+bc.token)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := a.Authorize(r, entries); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkConnectionSetup measures whole subscriptions over loopback: a
// new TCP connection, GET /events with the token, the hub's `ready` read by
// the client, and the connection closed. Client and server share the
// machine, so conns/s is a floor for the server alone.
//
//	go test -run '^$' -bench ConnectionSetup ./auth/
func BenchmarkConnectionSetup(b *testing.B) {
	for _, bc := range benchCases(b) {
		b.Run(bc.name, func(b *testing.B) {
			opts := stream.Options{}
			if bc.cfg != nil {
				a, err := New(b.Context(), *bc.cfg)
				if err != nil {
					b.Fatal(err)
				}
				opts.Authorize = a.Authorize
			}
			h := stream.NewHub(opts)
			srv := httptest.NewServer(h)
			defer srv.Close()
			defer h.Close()
			addr := srv.Listener.Addr().String()
			req := "GET /events?tags=todos,user:7:todos,user:7:* HTTP/1.1\r\nHost: b\r\n"
			if bc.token != "" {
				req += "Authorization: Bearer " + bc.token + "\r\n"
			}
			req += "\r\n"
			b.ReportAllocs()
			for b.Loop() {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.WriteString(c, req); err != nil {
					b.Fatal(err)
				}
				resp, err := http.ReadResponse(bufio.NewReaderSize(c, 1024), nil)
				if err != nil {
					b.Fatal(err)
				}
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("status %q", resp.Status)
				}
				if ev, err := ssereader.NewReader(resp.Body).Next(); err != nil || ev.Event != "ready" {
					b.Fatalf("first event %+v: %v", ev, err)
				}
				c.Close()
				resp.Body.Close() // after c: closing a live chunked body first would drain it
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
		})
	}
}
