# vaultnode: `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export CGO_ENABLED ?= 0
GOFLAGS_BUILD := -trimpath -ldflags='-s -w'

.PHONY: help build run test test-tape test-unit soak bench bench-portal bench-pair bench-scale bench-tree fmt vet clean image qemu test-image

help: ## list the targets
	@grep -hE '^[a-z][a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build vaultd, vaultctl, vault-tape-recover and vault-agent into ./bin (static)
	@mkdir -p $(BIN)
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/ ./appliance/cmd/vaultd ./appliance/cmd/vaultctl ./appliance/cmd/vault-tape-recover ./agentkit/cmd/vault-agent

run: build ## start a vault and an agent here and protect a sample tree (or DIR=...)
	@bash scripts/run.sh $(DIR)

vet: ## go vet every package
	$(GO) vet ./...

test: build ## run every test (unit, end to end, crash, image in QEMU)
	$(GO) vet ./...
	$(GO) build -o $(BIN)/testreport ./scripts/testreport
	@# -count=1: end-to-end tests run binaries the test cache cannot see. testreport prints failures, every skip
	@# with its reason and "N passed, N failed, N skipped"; with CI set, a skip not in .ci/allowed-skips fails.
	set -o pipefail; $(GO) test -count=1 -timeout 60m -json ./... | $(BIN)/testreport -allow .ci/allowed-skips

soak: build ## the long crash runs: 100 SIGKILLs of vaultd and agents, 100 of rollbacks, 60 during garbage collection, 30 power cuts of the image, 300 faults of a pair, a dead appliance of a pair replaced (VAULTNODE_KILLS, VAULTNODE_ROLLBACK_KILLS, VAULTNODE_GC_KILLS, VAULTNODE_POWERCUTS, VAULTNODE_PAIR_FAULTS, VAULTNODE_PAIR_REPLACE)
	VAULTNODE_KILLS=$${VAULTNODE_KILLS:-100} $(GO) test -count=1 -timeout 90m -v -run 'TestRandomKills' ./agentkit/e2e/
	VAULTNODE_ROLLBACK_KILLS=$${VAULTNODE_ROLLBACK_KILLS:-100} $(GO) test -count=1 -timeout 30m -v -run 'TestRollbackKills' ./agentkit/e2e/
	VAULTNODE_GC_KILLS=$${VAULTNODE_GC_KILLS:-60} $(GO) test -count=1 -timeout 90m -v -run 'TestCollectKills' ./agentkit/e2e/
	VAULTNODE_POWERCUTS=$${VAULTNODE_POWERCUTS:-30} $(GO) test -count=1 -timeout 90m -v -run 'TestPowerCutVolatileCache' ./hwtest/
	VAULTNODE_PAIR_FAULTS=$${VAULTNODE_PAIR_FAULTS:-300} $(GO) test -count=1 -timeout 120m -v -run 'TestPairRandomFaults' ./agentkit/e2e/
	VAULTNODE_PAIR_REPLACE=1 $(GO) test -count=1 -timeout 40m -v -run 'TestPairAppliances' ./hwtest/

bench: build ## run the benchmark against restic 0.18.1 on every shape of data and print ratios (BENCH_FLAGS="-scale 0.01" to try)
	@bash scripts/bench.sh

bench-portal: build ## the portal alone: All Computers and its JSON for 10,000 computers x 3 configurations (PORTAL_COMPUTERS=1000 to try)
	@bash scripts/bench.sh portal

bench-pair: build ## a pair of vaults and a witness against a single vault: backup throughput, failover time, catch-up rate (PAIR_MIB=64 to try)
	$(GO) run ./scripts/pairbench -bin $(BIN) -mib $${PAIR_MIB:-512}

bench-scale: build ## back up 10 million small files (SCALE_FILES): peak memory, no-change backup and commit times
	@bash scripts/bench.sh scale

bench-tree: build ## the benchmark on a tree of yours instead of generated data: make bench-tree TREE=/srv/data (read only; TREE_FLAGS="-phases initial,incremental,no-change,restore" works on a copy)
	@bash scripts/bench.sh tree

image: ## build the appliance image out/image/{vmlinux,initramfs.cpio} (reproducible)
	$(GO) run ./images/cmd/mkimage -o out/image

qemu: image ## boot the image interactively (serial console here; 3 data disks in var/qemu; vault on 127.0.0.1:7443)
	@bash scripts/qemu.sh

test-tape: build ## only the tape library tests in QEMU with tgt's virtual library (make test runs them too)
	$(GO) test -count=1 -timeout 30m -v -run 'TestTapeJob|TestTapeLibrary' ./hwtest/

test-image: ## boot the image in QEMU and run the appliance tests (hwtest)
	$(GO) test -count=1 -timeout 20m -v ./hwtest/...

fmt: ## gofmt every file
	gofmt -w $$(git ls-files '*.go')

clean: ## remove build outputs
	rm -rf $(BIN) var out
