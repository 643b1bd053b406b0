package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/rules"
)

// runCheck validates a rules file, and with --db checks it against the live
// database. Exit 0 when valid (warnings allowed), 1 when not.
func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check", stdout)
	rulesPath := fs.String("rules", envOr("TAGSTREAM_RULES", ""), "rules `FILE` (env TAGSTREAM_RULES)")
	apply := fs.Bool("apply", false, "with --db: run the fixes that change only a table or the publication (REPLICA IDENTITY FULL, ADD TABLE), printing each statement first")
	var sf sourceFlags
	sf.register(fs)
	// check only reads the database when --db is given on the command line
	// or in the environment; the default is offline.
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *rulesPath == "" {
		return usageErrorf("check: --rules is required (or TAGSTREAM_RULES)")
	}
	set, err := rules.Load(*rulesPath)
	if err != nil {
		var perr rules.Errors
		if !errors.As(err, &perr) {
			return usageErrorf("check: %v", err)
		}
		for _, e := range perr {
			fmt.Fprintln(stderr, e)
		}
		fmt.Fprintf(stderr, "%s: %d error(s); nothing loaded\n", *rulesPath, len(perr))
		return errInvalid
	}
	if sf.db == "" {
		if *apply {
			return usageErrorf("check: --apply needs --db")
		}
		fmt.Fprintf(stdout, "%s: %d rule(s) OK\n", *rulesPath, len(set.Rules))
		return nil
	}
	src, err := sf.configure(set, slog.New(slog.NewTextHandler(stderr, nil)))
	if err != nil {
		return err
	}
	findings, err := src.check(ctx, set.Requirements(src.defaultSchema))
	if err != nil {
		return err
	}
	errs := printFindings(stdout, findings)
	if *apply {
		applied, failed := applyFixes(ctx, src, findings, stdout)
		if failed > 0 {
			fmt.Fprintf(stdout, "%s: %d fix(es) failed\n", *rulesPath, failed)
			return errInvalid
		}
		if applied > 0 {
			if findings, err = src.check(ctx, set.Requirements(src.defaultSchema)); err != nil {
				return err
			}
			fmt.Fprintln(stdout, "after applying:")
			errs = printFindings(stdout, findings)
		}
	}
	if errs > 0 {
		fmt.Fprintf(stdout, "%s: %d rule(s), %d error(s), %d warning(s) against %s\n", *rulesPath, len(set.Rules), errs, len(findings)-errs, redact(sf.db))
		return errInvalid
	}
	fmt.Fprintf(stdout, "%s: %d rule(s) OK against %s (%d warning(s))\n", *rulesPath, len(set.Rules), redact(sf.db), len(findings))
	return nil
}

// applyFixes runs the fixes that may be applied, each printed before it
// runs, and counts them.
func applyFixes(ctx context.Context, src *source, findings []cdc.Finding, stdout io.Writer) (applied, failed int) {
	seen := map[string]bool{}
	for _, f := range findings {
		if !f.Apply || seen[f.Fix] {
			continue
		}
		seen[f.Fix] = true
		fmt.Fprintf(stdout, "apply: %s\n", f.Fix)
		if err := src.applyFix(ctx, f.Fix); err != nil {
			fmt.Fprintf(stdout, "  failed: %v\n", err)
			failed++
			continue
		}
		applied++
	}
	return applied, failed
}
