# tagstream — see README.md.
GO ?= go

.PHONY: test demo build bench deps fmt vet

build:
	$(GO) build -o bin/tagstream ./cmd/tagstream

# deps installs what the tests need when it is missing (database server binaries).
deps:
	@bash scripts/ensure-deps.sh

test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m ./...

demo: deps build
	$(GO) run ./cmd/demo --tagstream bin/tagstream --rules rules.example.yaml

# bench measures throughput, latency and fan-out memory (bench/README.md);
# BENCH_FLAGS picks sections and sizes, e.g. BENCH_FLAGS="-sections pg -small-tx 20000".
bench: deps
	$(GO) run ./bench $(BENCH_FLAGS)

fmt:
	gofmt -w $$(git ls-files '*.go')
