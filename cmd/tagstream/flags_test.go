package main

import (
	"flag"
	"io"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// runFlags returns `run`'s flag set and the daemon it fills.
func runFlags() (*flag.FlagSet, *instance) {
	var (
		d  instance
		kf sinkFlags
		ef edgeFlags
	)
	return runFlagSet(io.Discard, &d, &kf, &ef), &d
}

// envAndFlagValues returns, for f, a value for its environment variable
// and another for the command line, and what f.Value.String() shows for
// each.
func envAndFlagValues(t *testing.T, f *flag.Flag) (env, arg, wantEnv, wantArg string) {
	t.Helper()
	if _, ok := f.Value.(*listFlag); ok {
		return "a.example, b.example", "c.example", "a.example,b.example", "c.example"
	}
	g, ok := f.Value.(flag.Getter)
	if !ok {
		t.Fatalf("--%s: value %T is not a flag.Getter: teach this test its values", f.Name, f.Value)
	}
	switch def := g.Get().(type) {
	case string:
		return "env-" + f.Name, "arg-" + f.Name, "env-" + f.Name, "arg-" + f.Name
	case bool:
		e, a := strconv.FormatBool(!def), strconv.FormatBool(def)
		return e, a, e, a
	case int, int64, uint, uint64, float64:
		return "7", "8", "7", "8"
	case time.Duration:
		return "7s", "8s", "7s", "8s"
	default:
		t.Fatalf("--%s: value type %T: teach this test its values", f.Name, def)
	}
	return
}

// TestEveryRunFlagHasItsEnv: every flag of `run` reads TAGSTREAM_<NAME>
// (envName), and the command line overrides it.
func TestEveryRunFlagHasItsEnv(t *testing.T) {
	fs, _ := runFlags()
	var names []string
	fs.VisitAll(func(f *flag.Flag) {
		if _, alias := flagAliases[f.Name]; !alias {
			names = append(names, f.Name)
		}
	})
	if len(names) < 40 {
		t.Fatalf("only %d run flags found", len(names))
	}
	mentioned := regexp.MustCompile(`TAGSTREAM_[A-Z0-9_]+`)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			fs, _ := runFlags()
			f := fs.Lookup(name)
			// A usage text that names a variable names this one.
			for _, m := range mentioned.FindAllString(f.Usage, -1) {
				if m != envName(name) {
					t.Errorf("usage of --%s mentions %s, but its variable is %s", name, m, envName(name))
				}
			}
			env, arg, wantEnv, wantArg := envAndFlagValues(t, f)
			t.Setenv(envName(name), env)
			fs, _ = runFlags() // defaults may read the environment too
			if err := parseFlags(fs, nil); err != nil {
				t.Fatalf("%s=%q: %v", envName(name), env, err)
			}
			if got := fs.Lookup(name).Value.String(); got != wantEnv {
				t.Errorf("%s=%q: --%s is %q, want %q", envName(name), env, name, got, wantEnv)
			}
			fs, _ = runFlags()
			if err := parseFlags(fs, []string{"--" + name + "=" + arg}); err != nil {
				t.Fatal(err)
			}
			if got := fs.Lookup(name).Value.String(); got != wantArg {
				t.Errorf("%s=%q and --%s=%s: got %q, want the flag's %q", envName(name), env, name, arg, got, wantArg)
			}
		})
	}
}

// TestPGHeartbeatAlias: --heartbeat-interval is the former name of
// --pg-heartbeat: it sets the same value and, on the command line,
// overrides TAGSTREAM_PG_HEARTBEAT; its former variable is read when the
// new one is unset.
func TestPGHeartbeatAlias(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want time.Duration
	}{
		{"new flag", nil, []string{"--pg-heartbeat", "3s"}, 3 * time.Second},
		{"alias", nil, []string{"--heartbeat-interval", "4s"}, 4 * time.Second},
		{"env", map[string]string{"TAGSTREAM_PG_HEARTBEAT": "5s"}, nil, 5 * time.Second},
		{"alias overrides env", map[string]string{"TAGSTREAM_PG_HEARTBEAT": "5s"}, []string{"--heartbeat-interval", "4s"}, 4 * time.Second},
		{"former env", map[string]string{"TAGSTREAM_HEARTBEAT_INTERVAL": "6s"}, nil, 6 * time.Second},
		{"new env wins", map[string]string{"TAGSTREAM_HEARTBEAT_INTERVAL": "6s", "TAGSTREAM_PG_HEARTBEAT": "5s"}, nil, 5 * time.Second},
		{"sse heartbeat is another flag", nil, []string{"--heartbeat", "9s"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			fs, d := runFlags()
			if err := parseFlags(fs, tc.args); err != nil {
				t.Fatal(err)
			}
			if d.sf.pgHeartbeat != tc.want {
				t.Fatalf("pg heartbeat %v, want %v", d.sf.pgHeartbeat, tc.want)
			}
		})
	}
}

// TestPartBDefaults: the defaults and environment variables design Part B
// names (Commands, SSE, Sinks, Authorization, Scale-out), as `run` registers
// them.
func TestPartBDefaults(t *testing.T) {
	fs, _ := runFlags()
	var bf brokerFlags
	bf.register(fs, true)
	for _, tc := range []struct{ flag, def, env string }{
		{"db", "", "TAGSTREAM_DB"},
		{"rules", "", "TAGSTREAM_RULES"},
		{"listen", "127.0.0.1:8080", "TAGSTREAM_LISTEN"},
		{"slot", "tagstream", "TAGSTREAM_SLOT"},
		{"publication", "tagstream", "TAGSTREAM_PUBLICATION"},
		{"state-dir", "./.tagstream", "TAGSTREAM_STATE_DIR"},
		{"heartbeat", "15s", "TAGSTREAM_HEARTBEAT"},
		{"old-images", "wildcard", "TAGSTREAM_OLD_IMAGES"},
		{"webhook", "", "TAGSTREAM_WEBHOOKS"},
		{"webhook-secret", "", "TAGSTREAM_WEBHOOK_SECRET"},
		{"webhook-timeout", "5s", "TAGSTREAM_WEBHOOK_TIMEOUT"},
		{"webhook-give-up", "10m0s", "TAGSTREAM_WEBHOOK_GIVE_UP"},
		{"redis-publish", "", "TAGSTREAM_REDIS_PUBLISH"},
		{"redis-channel", "live-query-invalidations", "TAGSTREAM_REDIS_CHANNEL"},
		{"jwt-secret", "", "TAGSTREAM_JWT_SECRET"},
		{"jwt-cookie", "tagstream_token", "TAGSTREAM_JWT_COOKIE"},
		{"cors-origins", "", "TAGSTREAM_CORS_ORIGINS"},
		{"max-connections", "0", "TAGSTREAM_MAX_CONNECTIONS"},
		{"max-connections-per-ip", "0", "TAGSTREAM_MAX_CONNECTIONS_PER_IP"},
		{"broker", "", "TAGSTREAM_BROKER"},
		{"lease", "10s", "TAGSTREAM_LEASE"},
	} {
		f := fs.Lookup(tc.flag)
		if f == nil {
			t.Errorf("run has no --%s", tc.flag)
			continue
		}
		if f.DefValue != tc.def {
			t.Errorf("--%s defaults to %q, want %q", tc.flag, f.DefValue, tc.def)
		}
		if got := envName(tc.flag); got != tc.env {
			t.Errorf("--%s reads %s, want %s", tc.flag, got, tc.env)
		}
	}
}
