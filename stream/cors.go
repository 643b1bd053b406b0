package stream

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// CORS lets pages served from other origins use /events: an allowed
// Origin is echoed in Access-Control-Allow-Origin with credentials (cookies,
// Authorization) allowed and Vary: Origin, or with `*` answered `*` without
// credentials. Every answer carries these headers, errors included, so that
// a page can read a 401, 403 or 503. A disallowed origin gets none.
type CORS struct {
	any     bool
	origins map[string]bool
}

// NewCORS checks origins: exact origins (scheme://host[:port], no path) or
// `*` alone. None: a CORS that adds nothing.
func NewCORS(origins []string) (*CORS, error) {
	c := &CORS{origins: map[string]bool{}}
	for _, o := range origins {
		if o == "*" {
			if len(origins) > 1 {
				return nil, fmt.Errorf("%q must stand alone", o)
			}
			c.any = true
			continue
		}
		norm, err := normalizeOrigin(o)
		if err != nil {
			return nil, err
		}
		c.origins[norm] = true
	}
	return c, nil
}

// normalizeOrigin returns o as a browser sends it in Origin: lower case,
// without the scheme's default port.
func normalizeOrigin(o string) (string, error) {
	u, err := url.Parse(o)
	switch {
	case err != nil:
		return "", fmt.Errorf("origin %q: %w", o, err)
	case u.Scheme == "" || u.Host == "":
		return "", fmt.Errorf("origin %q: want scheme://host[:port], e.g. https://app.example.com", o)
	case u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return "", fmt.Errorf("origin %q has more than scheme://host[:port] (an origin has no path, not even a trailing /)", o)
	}
	host := strings.ToLower(u.Host)
	scheme := strings.ToLower(u.Scheme)
	if port := u.Port(); (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		host = strings.TrimSuffix(host, ":"+port)
	}
	return scheme + "://" + host, nil
}

// Handler wraps next (the /events handler) and answers OPTIONS preflights
// itself with 204.
func (c *CORS) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		allowed := origin != "" && (c.any || c.origins[origin])
		hdr := w.Header()
		if allowed {
			if c.any {
				hdr.Set("Access-Control-Allow-Origin", "*")
			} else {
				hdr.Set("Access-Control-Allow-Origin", origin)
				hdr.Set("Access-Control-Allow-Credentials", "true")
				hdr.Add("Vary", "Origin")
			}
		}
		if r.Method != http.MethodOptions {
			if allowed {
				hdr.Set("Access-Control-Expose-Headers", "Retry-After, WWW-Authenticate")
			}
			next.ServeHTTP(w, r)
			return
		}
		if allowed && r.Header.Get("Access-Control-Request-Method") != "" {
			hdr.Set("Access-Control-Allow-Methods", "GET")
			// Cache-Control: some EventSource polyfills send it.
			hdr.Set("Access-Control-Allow-Headers", "Authorization, Last-Event-ID, Cache-Control")
			hdr.Set("Access-Control-Max-Age", "600")
		}
		hdr.Set("Allow", "GET, OPTIONS")
		w.WriteHeader(http.StatusNoContent)
	})
}
