# fhirgate — two commands set everything up on a fresh machine:
#   make run    embedded server on 127.0.0.1:8080 (bbolt store under ./data)
#   make test   installs what the tests need, then go vet, go test -race ./...,
#               the Rego policy tests, the conformance suite against the
#               embedded and the Redis backends, and the fault tests
SHELL := /bin/bash
GO    ?= go
BIN   := bin/fhirgate
ADDR  ?= 127.0.0.1:8080
DATA  ?= ./data

.PHONY: all build run test deps vet unit policy-test conformance bench bench-parse docker clean geth contracts solc test-faults

all: build

build:
	$(GO) build -o $(BIN) ./cmd/fhirgate
	$(GO) build -o bin/fhirbench ./cmd/fhirbench

run: build
	$(BIN) serve --addr $(ADDR) --data-dir $(DATA)

# deps installs redis-server (Debian package) when it is missing; `geth`
# and `solc` (below) install what the chain tests need. apt-get can
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
	$(GO) vet -tags faults ./conformance/faults/

unit:
	$(GO) test -race -count=1 ./...

# policy-test runs the shipped policy's Rego unit tests as policy authors
# run theirs (fhirgate policy test DIR gives the same results as opa test).
policy-test: build
	$(BIN) policy test -v

conformance: build
	bash conformance/run.sh $(BIN)

test: deps geth solc vet unit policy-test conformance test-faults

# test-faults runs the fault tests of conformance/faults (build tag
# faults) against real processes: the gateway killed -9 under load on
# bbolt and on Redis, Redis stopped, the chain node (bin/geth) stopped,
# slow and oversized clients. They need redis-server (make deps); under
# CI=true a missing one fails them. -v: they log their figures.
test-faults: build geth
	FHIRGATE_BIN=$(CURDIR)/$(BIN) GETH=$(CURDIR)/bin/geth $(GO) test -tags faults -count=1 -v -timeout 20m ./conformance/faults/

bench-parse:
	$(GO) test -run '^$$' -bench . -benchmem ./fhir/ ./gateway/

bench: build
	bash conformance/bench.sh

# geth installs go-ethereum's geth into bin/ for the tests that run a real
# `geth --dev` (internal/chaintest). It is rebuilt only when bin/geth is
# missing or reports another version. Building takes minutes.
GETH_VERSION := 1.17.8
geth:
	@if ! bin/geth version 2>/dev/null | grep -q '^Version: $(GETH_VERSION)-'; then \
	  echo "installing geth v$(GETH_VERSION) into bin/ (takes a few minutes)"; \
	  GOBIN=$(CURDIR)/bin $(GO) install github.com/ethereum/go-ethereum/cmd/geth@v$(GETH_VERSION); \
	fi
	@bin/geth version | grep '^Version:'

# contracts rebuilds anchor/contracts/Anchor.{abi,bin,metadata.json} from
# Anchor.sol with solc-js $(SOLC_VERSION) (installed into build/solc when
# missing) and regenerates the Go bindings anchor/evm/contract.go with
# abigen. Commit the results; the anchor/contracts tests compare a fresh
# build with them.
SOLC_VERSION := 0.8.37
# solc installs solc-js into build/solc (for `make contracts`, and for the
# test that rebuilds the contract and compares it with the committed
# artefacts). npm can fail once on a fresh machine, so it is retried.
solc:
	@if [ "$$(node -p "require('./build/solc/node_modules/solc/package.json').version" 2>/dev/null)" != "$(SOLC_VERSION)" ]; then \
	  echo "installing solc $(SOLC_VERSION) into build/solc"; \
	  for i in 1 2 3; do npm install --prefix build/solc --no-save --no-audit --no-fund solc@$(SOLC_VERSION) && break; sleep 5; done; \
	fi
	@node -p "'solc ' + require('./build/solc/node_modules/solc/package.json').version"

ABIGEN       := github.com/ethereum/go-ethereum/cmd/abigen@v1.17.8
contracts: solc
	node anchor/contracts/build.js
	$(GO) run $(ABIGEN) --v2 --pkg evm --type AnchorContract \
	  --abi anchor/contracts/Anchor.abi --bin anchor/contracts/Anchor.bin --out anchor/evm/contract.go

docker:
	docker build -t fhirgate .

clean:
	rm -rf bin
