#!/usr/bin/env bash
# Benchmark vaultnode against restic on a generated corpus (issue 2, "Benchmark").
#   make bench                          # full run, about 1 GiB of data
#   make bench BENCH_FLAGS="-scale 0.1" # smaller; see: go run ./scripts/bench -help
# Results: a table on stdout and out/bench/results.json. Needs root for
# dropping page caches (otherwise every phase runs warm, for both tools).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v restic >/dev/null 2>&1; then
	echo "bench: restic is missing; installing the Debian package" >&2
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	$sudo apt-get install -y restic >/dev/null || { $sudo apt-get update >/dev/null && $sudo apt-get install -y restic >/dev/null; }
fi

mkdir -p out/bench
# out/ holds generated Go-like sources: a go.mod of its own keeps it out of ./...
[ -f out/go.mod ] || printf 'module scratch/out\n' > out/go.mod
go build -o out/bench/bench ./scripts/bench
go build -o out/bench/fidelity ./scripts/fidelity
go build -o out/bench/rpo ./scripts/rpo
go build -o out/bench/abuse ./scripts/abuse
# BENCH_FLAGS is split on spaces on purpose.
# shellcheck disable=SC2086
out/bench/bench -bin bin -out out/bench/results.json ${BENCH_FLAGS:-} "$@"
echo
echo "== metadata fidelity, vaultnode and restic on the same tree"
out/bench/fidelity -bin bin -out out/bench/fidelity.json
echo
echo "== continuous protection (RPO_FLAGS, e.g. -idle-files 100000 for a shorter run)"
# shellcheck disable=SC2086
out/bench/rpo -bin bin -work out/rpo -out out/bench/rpo.json ${RPO_FLAGS:-}
echo
echo "== bandwidth limiter on the wall clock, loopback (target: within 10 % of the limit; the tests use a fake clock)"
go test -count=1 -run '^$' -bench Loopback -benchtime 1x ./agentkit/bwlimit
echo
echo "== abuse: one company attacks while another backs up (ABUSE_FLAGS, e.g. -scale 0.1; targets: vaultd under 256 MB, victim within 1.5x)"
# shellcheck disable=SC2086
out/bench/abuse -bin bin -out out/bench/abuse.json ${ABUSE_FLAGS:-}
