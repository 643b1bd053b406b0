package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// newFlagSet returns a flag set that reports mistakes as one usage line
// instead of printing the whole usage text, and prints the usage once for -h.
func newFlagSet(name string, stdout io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tagstream "+name, flag.ContinueOnError)
	out := &usageOutput{w: stdout}
	fs.SetOutput(out)
	fs.Usage = func() {
		if !out.open {
			return
		}
		fmt.Fprintf(out, "Usage of tagstream %s (flags override the TAGSTREAM_* environment):\n", name)
		fs.PrintDefaults()
	}
	return fs
}

// usageOutput is a flag set's output. The flag package prints the error
// and the usage on every mistake, and the usage for -h before it returns
// flag.ErrHelp; the output stays closed (discarding) then, and is open only
// while parseFlags prints the usage itself, once.
type usageOutput struct {
	w    io.Writer
	open bool
}

func (u *usageOutput) Write(p []byte) (int, error) {
	if !u.open {
		return len(p), nil
	}
	return u.w.Write(p)
}

// parseFlags parses args, turning flag errors into usage errors, then gives
// every flag not on the command line its TAGSTREAM_* variable. It returns
// errHelp (exit 0) after printing usage for -h.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	return applyEnv(fs, nil)
}

// parseArgs is parseFlags without the environment.
func parseArgs(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs)
			return errHelp
		}
		return usageErrorf("%s: %v (see '%s -h')", fs.Name(), err, fs.Name())
	}
	if fs.NArg() > 0 {
		return usageErrorf("%s: unexpected argument %q (see '%s -h')", fs.Name(), fs.Arg(0), fs.Name())
	}
	return nil
}

// printUsage prints fs's usage to the output newFlagSet gave it.
func printUsage(fs *flag.FlagSet) {
	u, ok := fs.Output().(*usageOutput)
	if !ok {
		fs.Usage()
		return
	}
	u.open = true
	fs.Usage()
	u.open = false
}

// flagAliases maps a flag's former name to the flag it sets now. An alias
// has no environment variable of its own, and on the command line it
// counts as its flag (it overrides that flag's variable).
var flagAliases = map[string]string{"heartbeat-interval": "pg-heartbeat"}

// envNames maps the flags whose environment variable is not simply
// TAGSTREAM_ + the flag's name in upper case with _ for -.
var envNames = map[string]string{"webhook": "TAGSTREAM_WEBHOOKS"}

// envName is the environment variable of a flag.
func envName(flagName string) string {
	if n, ok := envNames[flagName]; ok {
		return n
	}
	return "TAGSTREAM_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// applyEnv gives every flag not set on the command line the value of its
// environment variable, when that is set: flags override the environment.
// With only, just the flags named there.
func applyEnv(fs *flag.FlagSet, only []string) error {
	onCmdLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) {
		onCmdLine[f.Name] = true
		if to, ok := flagAliases[f.Name]; ok {
			onCmdLine[to] = true
		}
	})
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if _, alias := flagAliases[f.Name]; alias || err != nil || onCmdLine[f.Name] || (only != nil && !slices.Contains(only, f.Name)) {
			return
		}
		name := envName(f.Name)
		v, ok := os.LookupEnv(name)
		for alias, to := range flagAliases {
			if !ok && to == f.Name {
				name = envName(alias) // the former variable, when the new one is unset
				v, ok = os.LookupEnv(name)
			}
		}
		if !ok {
			return
		}
		var serr error
		if l, isList := f.Value.(interface{ setFromEnv(string) error }); isList {
			serr = l.setFromEnv(v)
		} else {
			serr = f.Value.Set(v)
		}
		if serr != nil {
			err = usageErrorf("%s=%q: %v (it sets --%s)", name, v, serr, f.Name)
		}
	})
	return err
}

var errHelp = errors.New("help shown")

// runFlagSet is the flag set of `tagstream run`, bound to d, kf and ef.
func runFlagSet(stdout io.Writer, d *instance, kf *sinkFlags, ef *edgeFlags) *flag.FlagSet {
	fs := newFlagSet("run", stdout)
	d.sf.register(fs)
	d.df.register(fs)
	kf.register(fs)
	ef.register(fs)
	return fs
}

// envOr returns the environment variable's value, or def when it is unset.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// dbKind tells which reader a DSN selects.
type dbKind int

const (
	dbPostgres dbKind = iota + 1
	dbMySQL
)

// String names the kind in metrics labels: postgres or mysql.
func (k dbKind) String() string {
	if k == dbMySQL {
		return "mysql"
	}
	return "postgres"
}

// label names the kind in messages.
func (k dbKind) label() string {
	if k == dbMySQL {
		return "MySQL/MariaDB"
	}
	return "Postgres"
}

func parseDBKind(dsn string) (dbKind, error) {
	scheme, _, ok := strings.Cut(dsn, "://")
	if !ok {
		return 0, usageErrorf("--db: %q is not a URL; use postgres://user@host:5432/db or mysql://user:pass@host:3306/db", redact(dsn))
	}
	switch strings.ToLower(scheme) {
	case "postgres", "postgresql":
		return dbPostgres, nil
	case "mysql", "mariadb":
		return dbMySQL, nil
	}
	return 0, usageErrorf("--db: unsupported scheme %q; use postgres://, postgresql://, mysql:// or mariadb://", scheme)
}

// redact hides a password in a DSN for messages.
func redact(dsn string) string {
	scheme, rest, ok := strings.Cut(dsn, "://")
	if !ok {
		return dsn
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return dsn
	}
	if user, _, hasPass := strings.Cut(rest[:at], ":"); hasPass {
		return scheme + "://" + user + ":xxxxx" + rest[at:]
	}
	return dsn
}
