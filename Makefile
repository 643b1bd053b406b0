# tagstream — see README.md.
GO ?= go

.PHONY: test e2e-js demo build bench deps fmt vet

build:
	$(GO) build -o bin/tagstream ./cmd/tagstream

# deps installs what the tests need when it is missing (database server binaries).
deps:
	@bash scripts/ensure-deps.sh

# test runs everything: the Go packages (examples/ included: the Next.js and Redwood
# end-to-end tests) and the JavaScript client's unit tests.
test: deps
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	cd clients/js && npm test
	$(GO) test -race -count=1 -timeout 30m ./...

# e2e-js runs the JavaScript side alone: the client's unit tests, then the Next.js
# (two instances and Chromium) and Redwood (live queries over Redis) tests.
e2e-js: deps
	cd clients/js && npm test
	$(GO) test -race -count=1 -timeout 20m -v -run 'TestNextJS|TestRedwood|TestREADME|TestClientAgainstTagstream' ./examples/

demo: deps build
	$(GO) run ./cmd/demo --tagstream bin/tagstream --rules rules.example.yaml

# bench measures throughput, latency and fan-out memory (bench/README.md);
# BENCH_FLAGS picks sections and sizes, e.g. BENCH_FLAGS="-sections pg -small-tx 20000".
bench: deps
	$(GO) run ./bench $(BENCH_FLAGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

# lint runs golangci-lint with .golangci.yml (gofmt included) at a pinned
# version, installed through the Go module proxy into bin/ on first use.
# Not part of `make test`.
.PHONY: lint
GOLANGCI_LINT_VERSION ?= v2.15.0
GOLANGCI_LINT := bin/golangci-lint-$(GOLANGCI_LINT_VERSION)

lint: $(GOLANGCI_LINT)
	$(GOLANGCI_LINT) run ./...

$(GOLANGCI_LINT):
	GOBIN=$(CURDIR)/bin/.golangci-lint $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv bin/.golangci-lint/golangci-lint $@
