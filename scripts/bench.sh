#!/usr/bin/env bash
# Benchmark vaultnode against restic on a generated corpus (issue 2, "Benchmark").
#   make bench                          # every shape at full size (hours on a small machine)
#   make bench BENCH_FLAGS="-scale 0.01" AGENTS_FLAGS="-scale 0.005" RPO_FLAGS="-idle-files 10000" ABUSE_FLAGS="-scale 0.1" GC_FLAGS="-scale 0.01"
#                                       # every part at a small scale, to try it quickly
#   make bench BENCH_SHAPES="small-files" BENCH_FLAGS="-files 100000"
#   make bench-scale SCALE_FILES=1000000 # the scale run (10 million files by default)
#   make bench-tree TREE=/srv/data      # initial, no-change and restore of a tree of yours (TREE_FLAGS)
#   make bench-portal PORTAL_COMPUTERS=1000 # the portal part alone (10,000 computers by default)
#   make bench BENCH_RAID=1             # also: backup throughput into a healthy, degraded and rebuilding RAID6 in QEMU
#   make bench BENCH_NO_TAPE=1          # without the tape benchmark (tape job against dd, locate, in QEMU with tgt)
# Results: tables on stdout and out/bench/results-SHAPE.json. Needs root for
# dropping page caches (otherwise every phase runs warm, for both tools).
set -euo pipefail
cd "$(dirname "$0")/.."

# The reference is restic 0.18.1 (it restores holes as holes with --sparse),
# built from source through the Go module proxy into out/bench/bin, never
# over a restic installed on the system.
RESTIC_VERSION=0.18.1
restic="$PWD/out/bench/bin/restic"
if ! "$restic" version 2>/dev/null | grep -q "restic $RESTIC_VERSION "; then
	echo "bench: building restic $RESTIC_VERSION into out/bench/bin" >&2
	GOBIN="$PWD/out/bench/bin" CGO_ENABLED=0 go install "github.com/restic/restic/cmd/restic@v$RESTIC_VERSION"
fi

mkdir -p out/bench
# out/ holds generated Go-like sources: a go.mod of its own keeps it out of ./...
[ -f out/go.mod ] || printf 'module scratch/out\n' > out/go.mod
go build -o out/bench/bench ./scripts/bench
go build -o out/bench/fidelity ./scripts/fidelity
go build -o out/bench/rpo ./scripts/rpo
go build -o out/bench/abuse ./scripts/abuse
go build -o out/bench/gcbench ./scripts/gcbench
go build -o out/bench/portalbench ./scripts/portalbench

portal() {
	# The portal's All Computers page and JSON for PORTAL_COMPUTERS computers
	# (10,000 by default) with 3 configurations each, written as catalog
	# commands; PORTAL_FLAGS adds flags (e.g. -chromium "" to skip the browser).
	echo "== portal: All Computers for ${PORTAL_COMPUTERS:-10000} computers x 3 configurations (targets: first byte < 1 s, rendered < 2 s)"
	# shellcheck disable=SC2086
	out/bench/portalbench -bin bin -computers "${PORTAL_COMPUTERS:-10000}" -out out/bench/portal.json ${PORTAL_FLAGS:-}
}
if [ "${1:-}" = "portal" ]; then
	portal
	exit 0
fi

if [ "${1:-}" = "tree" ]; then
	# make bench-tree TREE=DIR: the initial, no-change and restore phases on
	# an existing tree of yours instead of a generated corpus, both tools
	# backing it up where it is (read only). TREE_FLAGS adds bench flags
	# (e.g. -runs 3); naming the incremental phase in -phases makes them
	# back up a copy in the work directory, changed before that phase
	# (corpus.MutateTree).
	if [ -z "${TREE:-}" ]; then
		echo "bench: give the tree to measure: make bench-tree TREE=/some/dir" >&2
		exit 2
	fi
	# shellcheck disable=SC2086
	out/bench/bench -bin bin -restic "$restic" -tree "$TREE" -out out/bench/results-tree.json ${TREE_FLAGS:-}
	exit 0
fi

if [ "${1:-}" = "scale" ]; then
	# make bench-scale: SCALE_FILES small files (10 million by default), the
	# initial and the no-change backup; peak memory of agent and vault, the
	# commit's time. SCALE_FLAGS adds bench flags (e.g. -warm).
	#
	# Ten million small files take about 40 GB on ext4's usual 4 KiB blocks
	# (a block or more a file). Run as root, and unless SCALE_IMAGE=0, the
	# work directory (corpus, store, agent's cache) is an ext4 filesystem on
	# a sparse image, out/bench/scale.img, made with 1 KiB blocks, data of
	# small files inline in their inodes and inodes enough for the files:
	# about 1.3 KB a file on the disk in all. It is unmounted and removed at
	# the end. The loop device reads its image with direct I/O, so dropping
	# the caches before a phase leaves no second copy in the host's cache.
	files="${SCALE_FILES:-10000000}"
	work=out/bench/scale-work
	if [ "${SCALE_IMAGE:-1}" != 0 ] && [ "$(id -u)" = 0 ]; then
		img=out/bench/scale.img
		mkdir -p "$work"
		if mountpoint -q "$work"; then
			echo "bench: $work is mounted already: unmount it (umount $work) and remove $img first" >&2
			exit 1
		fi
		rm -f "$img"
		truncate -s "$(( (files / 1000000 + 2) * 4 ))G" "$img"
		mkfs.ext4 -q -F -b 1024 -I 256 -O inline_data -N "$(( files + files / 10 + 200000 ))" \
			-E lazy_itable_init=1,lazy_journal_init=1 "$img"
		loop=$(losetup -f --show --direct-io=on "$img")
		scale_cleanup() {
			umount "$work" 2>/dev/null || true
			losetup -d "$loop" 2>/dev/null || true
			rm -f "$img"
		}
		trap scale_cleanup EXIT
		mount -o noatime "$loop" "$work"
		echo "bench: $work is ext4 (1 KiB blocks, inline data) on $loop ($img)" >&2
	fi
	# shellcheck disable=SC2086
	out/bench/bench -bin bin -only vaultnode -shape small-files -files "$files" \
		-phases initial,no-change -work "$work" -out out/bench/scale.json ${SCALE_FLAGS:-}
	exit 0
fi

# Every shape of data, each also without its sparse files where it has some,
# two of them touched (every file's times set, content kept, as touch or
# chown -R leave a tree: the incremental phase reads every file again), and
# two rolled back (a restored tree changed as the incremental phase changes
# the corpus, then the version restored over it: vaultnode -existing
# overwrite, restic --overwrite always). A shape is
# NAME[:no-sparse][:touch|:rollback]; BENCH_SHAPES chooses; BENCH_FLAGS is
# passed to each, e.g. "-scale 0.01" for a quick try; see: out/bench/bench
# -help.
shapes=${BENCH_SHAPES:-"current current:no-sparse small-files mixed mixed:no-sparse current:no-sparse:touch small-files:touch current:no-sparse:rollback small-files:rollback"}
results=()
for s in $shapes; do
	shape=${s%%:*}
	extra=()
	name=$shape
	IFS=: read -ra opts <<< "${s#"$shape"}"
	for o in "${opts[@]}"; do
		case $o in
		"") ;;
		no-sparse) extra+=(-no-sparse) name+=-no-sparse ;;
		touch) extra+=(-mutation touch -phases initial,incremental) name+=-touch ;;
		rollback) extra+=(-phases initial,rollback) name+=-rollback ;;
		*)
			echo "bench: shape $s: unknown option $o (no-sparse, touch, rollback)" >&2
			exit 2
			;;
		esac
	done
	echo "== shape $name"
	# BENCH_FLAGS is split on spaces on purpose.
	# shellcheck disable=SC2086
	out/bench/bench -bin bin -restic "$restic" -shape "$shape" "${extra[@]}" -out "out/bench/results-$name.json" ${BENCH_FLAGS:-} "$@"
	results+=("out/bench/results-$name.json")
	echo
done
echo "== vaultnode / restic on every shape"
out/bench/bench -summarize "${results[@]}"

echo
echo "== many agents at once: ${BENCH_AGENTS:-20} agents, each its own tree, into one vault (AGENTS_FLAGS, e.g. -scale 0.01)"
# shellcheck disable=SC2086
out/bench/bench -bin bin -agents "${BENCH_AGENTS:-20}" -shape mixed -scale 0.02 -out out/bench/agents.json ${AGENTS_FLAGS:-}
echo
echo "== metadata fidelity, vaultnode and restic on the same tree"
out/bench/fidelity -bin bin -restic "$restic" -out out/bench/fidelity.json
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
echo
echo "== garbage collection (GC_FLAGS, e.g. -scale 0.01): 30 mutated versions pruned to 5 and collected; targets: store/live <= 1.1, a backup during a collection within 1.3x"
# shellcheck disable=SC2086
out/bench/gcbench -bin bin -work out/gcbench -out out/bench/gc.json ${GC_FLAGS:-}
echo
echo "== uplink QoS in network namespaces (needs root): each class's rate from the kernel's counters over 2.5 s, target within 5 %"
go test -count=1 -v -run TestShapingUnderSaturation ./firmware/qos | grep -E 'qos: |^(--- |ok|FAIL)'
if [ -z "${BENCH_NO_TAPE:-}" ]; then
	echo
	echo "== tape in QEMU with tgt's virtual library (BENCH_NO_TAPE=1 skips; TAPE_BENCH_MIB, default 64): the tape job's streaming rate against dd of the same bytes to the same drive (target >= 90 %), and one file from the middle of a full cartridge: seek (REWIND + SPACE) against reading from the start"
	go test -count=1 -run '^$' -bench BenchmarkTapeStream -benchtime 1x -timeout 30m ./hwtest | grep -E 'tape: |^(Benchmark|ok|FAIL|---)'
fi
echo
portal
if [ -n "${BENCH_RAID:-}" ]; then
	echo
	echo "== backup throughput into the appliance in QEMU: healthy RAID6, degraded, rebuilding (BENCH_RAID=1; RAID_BENCH_MIB per backup, default 48)"
	go test -count=1 -run '^$' -bench BenchmarkRaidBackup -benchtime 1x -timeout 30m ./hwtest | grep -E 'raid: |^(Benchmark|ok|FAIL|---)'
fi
