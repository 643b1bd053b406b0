package examples

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// testedElsewhere are README snippets run by other tests.
var testedElsewhere = map[string]string{
	"mint-token.mjs": "cmd/tagstream/e2e_auth_test.go runs it",
}

var fence = regexp.MustCompile("(?ms)^```(js|ts|tsx|jsx|mjs)\n(.*?)^```")

// TestREADMESnippets: every JavaScript/TypeScript snippet in README.md is
// code a test runs: its first line names a file of this repository (run by
// the JS unit tests or the examples' end-to-end tests) and the rest of the
// snippet appears in that file verbatim.
func TestREADMESnippets(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	shown := map[string]bool{}
	for _, m := range fence.FindAllStringSubmatch(string(readme), -1) {
		code := m[2]
		first, rest, _ := strings.Cut(code, "\n")
		name, ok := strings.CutPrefix(first, "// ")
		name, _, _ = strings.Cut(name, " ")
		if !ok {
			t.Errorf("README snippet without a file name on its first line:\n%s", code)
			continue
		}
		if _, ok := testedElsewhere[name]; ok {
			continue
		}
		src, err := os.ReadFile(filepath.Join("..", name))
		if err != nil {
			t.Errorf("README snippet names %s, which is not a file of the repository: %v", name, err)
			continue
		}
		if !strings.Contains(string(src), rest) {
			t.Errorf("README snippet of %s differs from the file; the snippet:\n%s", name, code)
		}
		shown[name] = true
	}
	for _, name := range []string{
		"clients/js/examples/browser.js", "clients/js/examples/tanstack.js", "clients/js/examples/token.js",
		"examples/nextjs/lib/todos.ts", "examples/nextjs/app/api/tagstream/route.ts",
		"examples/nextjs/instrumentation.ts", "examples/nextjs/app/page.tsx", "examples/nextjs/app/seen.tsx", "examples/redwood/live.mjs",
	} {
		if !shown[name] {
			t.Errorf("README.md shows no snippet of %s", name)
		}
	}
	// The Redwood rules and flags are those TestRedwood runs.
	for _, line := range strings.Split(strings.TrimSpace(auctionRules), "\n") {
		if !strings.Contains(string(readme), "\n    "+line+"\n") {
			t.Errorf("README.md's Redwood rules lack %q", line)
		}
	}
	if !strings.Contains(string(readme), "--redis-reset-keys "+redwoodResetKeys) {
		t.Errorf("README.md's Redwood command line lacks --redis-reset-keys %s", redwoodResetKeys)
	}
}
