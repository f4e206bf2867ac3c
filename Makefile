# fhirgate — two commands set everything up on a fresh machine:
#   make run    embedded server on 127.0.0.1:8080 (bbolt store under ./data)
#   make test   installs what the tests need, then go vet, go test -race ./...,
#               the Rego policy tests and the conformance suite against the
#               embedded and the Redis backends
SHELL := /bin/bash
GO    ?= go
BIN   := bin/fhirgate
ADDR  ?= 127.0.0.1:8080
DATA  ?= ./data

.PHONY: all build run test deps vet unit policy-test conformance bench bench-parse docker clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/fhirgate
	$(GO) build -o bin/fhirbench ./cmd/fhirbench

run: build
	$(BIN) serve --addr $(ADDR) --data-dir $(DATA)

# deps installs redis-server (Debian package) when it is missing. apt-get can
# fail once on a fresh machine, so it is retried after an update.
deps:
	@if ! command -v redis-server >/dev/null 2>&1; then \
	  echo "installing redis-server"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  for i in 1 2 3; do \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server && break; \
	    echo "apt-get failed (attempt $$i), retrying"; sleep 5; \
	  done; \
	fi
	@command -v redis-server >/dev/null || { echo "redis-server could not be installed"; exit 1; }
	@redis-server --version

vet:
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 ./...

# policy-test runs the shipped policy's Rego unit tests as policy authors
# run theirs (fhirgate policy test DIR gives the same results as opa test).
policy-test: build
	$(BIN) policy test -v

conformance: build
	bash conformance/run.sh $(BIN)

test: deps vet unit policy-test conformance

bench-parse:
	$(GO) test -run '^$$' -bench . -benchmem ./fhir/ ./gateway/

bench: build
	bash conformance/bench.sh

docker:
	docker build -t fhirgate .

clean:
	rm -rf bin
