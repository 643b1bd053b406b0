// Command tagstream turns database commits into cache invalidations: it reads
// a Postgres or MySQL/MariaDB change stream, maps row changes to cache tags
// with a YAML rules file and streams them to subscribers over Server-Sent
// Events. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(report(err, os.Stderr))
}

// run executes one command line. It is main without the process around it,
// so tests can call it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageErrorf("missing command (run, serve, check, explain, tail or version); see 'tagstream help'")
	}
	switch args[0] {
	case "run":
		return runDaemon(ctx, args[1:], stdout, stderr)
	case "serve":
		return runServe(ctx, args[1:], stdout, stderr)
	case "check":
		return runCheck(ctx, args[1:], stdout, stderr)
	case "explain":
		return runExplain(ctx, args[1:], stdout, stderr)
	case "tail":
		return runTail(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "tagstream", version)
		return nil
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return usageErrorf("unknown command %q (run, serve, check, explain, tail or version); see 'tagstream help'", args[0])
}

const usage = `tagstream turns database commits into cache invalidations over Server-Sent Events.

Usage:
  tagstream run   --db DSN --rules FILE [--listen ADDR]   run the daemon
  tagstream serve --broker URL [--listen ADDR]            an edge node: /events from the broker, no database
  tagstream check --rules FILE [--db DSN]                 validate rules (with --db: against the database)
  tagstream explain --rules FILE --table [SCHEMA.]TABLE --op OP [--old JSON] [--new JSON] [-v]
                                                          the tags one change produces (offline)
  tagstream tail  --db DSN --rules FILE                   print each transaction's rows and tags (a dry run)
  tagstream version

Run 'tagstream COMMAND -h' for every flag of a command.
`

// usageError is a configuration or command-line mistake: one line on
// stderr, exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...)}
}

// errInvalid means the command ran and found problems it already printed
// (check found invalid rules): exit status 1, nothing more to say.
var errInvalid = errors.New("invalid")

// report prints err the way its kind asks and returns the exit status.
func report(err error, stderr io.Writer) int {
	var ue *usageError
	switch {
	case err == nil, errors.Is(err, errHelp): // -h printed the usage
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "tagstream:", ue.msg)
		return 2
	case errors.Is(err, errInvalid):
		return 1
	default:
		fmt.Fprintln(stderr, "tagstream:", err)
		return 1
	}
}
