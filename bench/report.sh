#!/usr/bin/env bash
# report.sh runs pipestream's key benchmarks -count times (3 by default)
# and prints a markdown report of the medians and the ratios the issue
# asks about: the streamed 3-peer chain against a raw TCP relay at 4 KiB,
# 64 KiB and 1 MiB packets, the FileStore chain against a relay that
# writes files, gnet against net.Conn, streaming against the Raft log, a
# SYNC write's latency against a raw ping-pong, a grpc-go chain and the
# ping-pong through event loops (each measured in a process of its own,
# where no peer runs), garbage per GiB, 10,000
# connections, and the heap's peak against its formula. Each ratio comes
# from two runs moments apart (see `go doc ./bench`), which a shared
# machine's load shifts far less than it shifts either number alone.
#
#	bench/report.sh                 # about ten minutes
#	COUNT=5 bench/report.sh > report.md
#	MEMORY_GIB=4 bench/report.sh    # the issue's 4 GiB memory run
#	CONNS=0 bench/report.sh         # without the 10,000 connections
#
# The raw `go test` output goes to stderr, the report to stdout. Needs only
# bash, awk and go.
set -euo pipefail

count=${COUNT:-3}
chain_packets=${CHAIN_PACKETS:-3000}
memory_gib=${MEMORY_GIB:-0.25}
file_packets=${FILE_PACKETS:-256}
latency_ops=${LATENCY_OPS:-2000}
conns=${CONNS:-1}
conns_streams=${CONNS_STREAMS:-20000}

cd "$(dirname "$0")/.."
work=$(mktemp -d)
sampler=
cleanup() {
	if [[ -n $sampler ]]; then
		kill "$sampler" 2>/dev/null || true
		wait "$sampler" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

# The load average while the benchmarks run, every five seconds.
(while :; do cut -d' ' -f1 /proc/loadavg; sleep 5; done) >"$work/load" &
sampler=$!

# The tree the binary is built from, before anything can change it.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
go test -c -o "$work/bench.test" ./bench
started=$(date -u +%Y-%m-%dT%H:%MZ)

# bench runs the benchmarks matching a regexp once, in a process of their
# own. A failed run (a loaded machine can depose a Raft leader
# mid-transfer) leaves out only that run, listed under the table.
bench() { # regexp [flags...]
	local re=$1
	shift
	(cd bench && "$work/bench.test" -test.run '^$' -test.bench "$re" "$@") |
		tee -a "$work/raw" >&2 || true
}
# Round by round rather than each benchmark -count times in a row, so
# that a spell of load falls on all of them alike.
for ((i = 1; i <= count; i++)); do
	echo "report.sh: round $i of $count" >&2
	bench 'Chain/(relay|grpc|stream|stream-netconn|stream-raft)$' -test.benchtime "${chain_packets}x"
	bench 'Chain/(relay-file|stream-file)$' -test.benchtime "${file_packets}x"
	bench 'Chain/stream-(64KiB|4KiB)$'
	bench 'Matrix/topo=chain/packet=(4KiB|64KiB)/streams=1/sm=mem/transport=gnet$'
	bench 'CommitPath/(disk|mem)/(log|stream)/64MiB$'
	bench '^BenchmarkLatency$/transport=(gnet|netconn)/sm=mem$' -test.benchtime "${latency_ops}x"
done
# Once: it opens 10,000 connections and takes about half a minute.
if [[ $conns != 0 ]]; then
	echo "report.sh: 10,000 connections" >&2
	bench 'Conns' -test.benchtime "${conns_streams}x"
fi
# A failure is reported below rather than ending the script.
(cd bench && "$work/bench.test" -test.run 'TestMemoryBounded$' -test.v -memory-gib "$memory_gib") |
	tee "$work/memory" >&2 || true

# medians: "name<TAB>unit<TAB>median" for every benchmark and metric, the
# name without its -GOMAXPROCS suffix.
awk '
function median(s,    n, a, i, j, t) {
	n = split(s, a, " ")
	for (i = 2; i <= n; i++)
		for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
/^Benchmark/ {
	name = $1
	sub(/-[0-9]+$/, "", name)
	for (i = 3; i < NF; i += 2) {
		k = name "\t" $(i + 1)
		v[k] = (k in v) ? v[k] " " $i : $i
	}
}
END { for (k in v) print k "\t" median(v[k]) }
' "$work/raw" >"$work/medians"

med() { # name unit
	awk -F'\t' -v n="$1" -v u="$2" '$1 == n && $2 == u { print $3; found = 1 } END { if (!found) print "nan" }' "$work/medians"
}
# num formats a number with the given printf format, or - if it is missing.
num() { awk -v x="$2" -v f="$1" 'BEGIN { if (x == "nan" || x == "") print "-"; else printf f "\n", x }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "nan"; else print a / b }'; }
# reached says whether x meets "<= goal" or ">= goal" (op is le or ge).
reached() { # x op goal
	awk -v x="$1" -v op="$2" -v g="$3" 'BEGIN {
		if (x == "nan" || x == "") print "not measured"
		else if ((op == "le" && x + 0 <= g + 0) || (op == "ge" && x + 0 >= g + 0)) print "**reached**"
		else print "not reached"
	}'
}
# largest names the benchmark of a family with the most connections.
largest() { # prefix
	awk -F'\t' -v p="$1" 'index($1, p) == 1 { n = substr($1, length(p) + 1) + 0; if (n > best) { best = n; name = $1 } }
		END { print (name == "" ? "none" : name) }' "$work/medians"
}
# row prints a row of the second table; op and target are left out for a
# number reported without a goal.
row() { # goal measured value ratio [op target]
	local target="" status="no goal: reported"
	if [[ $# -ge 6 ]]; then
		target="$([[ $5 == le ]] && echo ≤ || echo ≥) $6"
		status=$(reached "$4" "$5" "$6")
	fi
	echo "| $1 | $2 | $3 | $(num %.2f "$4")× | $target | $status |"
}

load_min=$(sort -n "$work/load" | head -1)
load_max=$(sort -n "$work/load" | tail -1)

c=BenchmarkChain
g_mbs=$(med $c/stream MB/s)
n_mbs=$(med $c/stream-netconn MB/s)
g_vs=$(med $c/stream vs-relay)
n_vs=$(med $c/stream-netconn vs-relay)
cp=BenchmarkCommitPath
l=BenchmarkLatency/transport=gnet/sm=mem
ln=BenchmarkLatency/transport=netconn/sm=mem

cat <<EOF
## Report: $started, commit $commit$dirty

Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(go env GOVERSION) $(go env GOOS)/$(go env GOARCH), kernel $(uname -r); load average (1 min) $load_min–$load_max while it ran.
Medians of $count runs; \`bench/report.sh\`, raw output on stderr.

| comparison | measured | median | ratio | goal |
| --- | --- | --- | --- | --- |
| 3-peer chain, 1 MiB packets, gnet | stream MB/s; vs relay | $(num %.0f "$g_mbs") | $(num %.2f "$g_vs")× relay | ≥ 0.8× |
| 3-peer chain, 1 MiB packets, net.Conn | stream MB/s; vs relay | $(num %.0f "$n_mbs") | $(num %.2f "$n_vs")× relay | |
| raw relay, 3 TCP connections | MB/s (its own runs) | $(num %.0f "$(med $c/relay MB/s)") | 1 | |
| gnet vs net.Conn, same pipeline | vs-relay of each | $(num %.2f "$g_vs") / $(num %.2f "$n_vs") | $(num %.2f "$(ratio "$g_vs" "$n_vs")")× | |
| allocations per 1 MiB packet in steady state, gnet | process-wide mallocs in the second half of the run | $(num %.3f "$(med $c/stream steady-allocs/packet)") | | 0 |
| allocations per 1 MiB packet in steady state, net.Conn | process-wide mallocs in the second half of the run | $(num %.3f "$(med $c/stream-netconn steady-allocs/packet)") | | 0 |
| allocations per 1 MiB packet, all, gnet; net.Conn | the stream's fixed costs spread over $chain_packets packets | $(num %.2f "$(med $c/stream allocs/packet)"); $(num %.2f "$(med $c/stream-netconn allocs/packet)") | | |
| garbage collections in steady state, gnet; net.Conn | GCs in the second half of the run | $(num %.0f "$(med $c/stream steady-gcs)"); $(num %.0f "$(med $c/stream-netconn steady-gcs)") | | |
| 64 MiB committed, on disk | log MB/s; stream MB/s | $(num %.0f "$(med $cp/disk/log/64MiB MB/s)"); $(num %.0f "$(med $cp/disk/stream/64MiB MB/s)") | $(num %.2f "$(med $cp/disk/stream/64MiB stream/log)")× log | wide margin |
| 64 MiB committed, in memory | log MB/s; stream MB/s | $(num %.0f "$(med $cp/mem/log/64MiB MB/s)"); $(num %.0f "$(med $cp/mem/stream/64MiB MB/s)") | $(num %.2f "$(med $cp/mem/stream/64MiB stream/log)")× log | |
| scheduler latency, gnet; net.Conn | p99 µs | $(num %.0f "$(med $l sched-p99-µs)"); $(num %.0f "$(med $ln sched-p99-µs)") | | |
EOF
m=BenchmarkMatrix/topo=chain
m4=$m/packet=4KiB/streams=1/sm=mem/transport=gnet
m64=$m/packet=64KiB/streams=1/sm=mem/transport=gnet
g_gib=$(med $c/stream steady-B/GiB)
n_gib=$(med $c/stream-netconn steady-B/GiB)
g_gcs=$(med $c/stream steady-gcs/GiB)
n_gcs=$(med $c/stream-netconn steady-gcs/GiB)
cn=BenchmarkConns/transport
cg100=$cn=gnet/conns=100
cn100=$cn=netconn/conns=100
cgmax=$(largest "$cn=gnet/conns=")
cnmax=$(largest "$cn=netconn/conns=")
ng=${cgmax#"$cn=gnet/conns="}
nn=${cnmax#"$cn=netconn/conns="}
cat <<EOF

### Second round: each goal, its ratio

p50 and p99 are the medians over the runs of each run's percentiles; a
ratio is the median of the runs' ratios (both numbers of a ratio from
the same run) unless it says "of medians". The ping-pong and grpc-go
baselines run in a fresh process (BenchmarkAlone) after each run's
peers have stopped, and the same ping-pong through event loops, each
hop a goroutine blocked in epoll_wait as gnet's loops are, in another
(BenchmarkAloneEventLoops), a model of what such loops cost by
themselves. The two processes run one after the other, not alternated.

| goal | measured | value | ratio | target | status |
| --- | --- | --- | --- | --- | --- |
$(row "SYNC 4 KiB p50, gnet vs net.Conn" "p50 µs gnet; net.Conn (ratio of medians)" "$(num %.0f "$(med $l p50-µs)"); $(num %.0f "$(med $ln p50-µs)")" "$(ratio "$(med $l p50-µs)" "$(med $ln p50-µs)")" le 1)
$(row "SYNC 4 KiB p99, gnet vs net.Conn" "p99 µs gnet; net.Conn (ratio of medians)" "$(num %.0f "$(med $l p99-µs)"); $(num %.0f "$(med $ln p99-µs)")" "$(ratio "$(med $l p99-µs)" "$(med $ln p99-µs)")" le 1)
$(row "SYNC 4 KiB p50, gnet vs grpc-go alone" "grpc-go p50 µs" "$(num %.0f "$(med $l grpc-p50-µs)")" "$(med $l p50-vs-grpc)" le 0.5)
$(row "SYNC 4 KiB p99, gnet vs grpc-go alone" "grpc-go p99 µs" "$(num %.0f "$(med $l grpc-p99-µs)")" "$(med $l p99-vs-grpc)" le 0.5)
$(row "SYNC 4 KiB p50, gnet vs raw ping-pong alone" "ping-pong p50 µs" "$(num %.0f "$(med $l ping-p50-µs)")" "$(med $l p50-vs-ping)" le 1.5)
$(row "SYNC 4 KiB p99, gnet vs raw ping-pong alone" "ping-pong p99 µs" "$(num %.0f "$(med $l ping-p99-µs)")" "$(med $l p99-vs-ping)" le 1.5)
$(row "SYNC 4 KiB p50, net.Conn vs grpc-go alone" "grpc-go p50 µs (its runs)" "$(num %.0f "$(med $ln grpc-p50-µs)")" "$(med $ln p50-vs-grpc)")
$(row "SYNC 4 KiB p99, net.Conn vs grpc-go alone" "grpc-go p99 µs (its runs)" "$(num %.0f "$(med $ln grpc-p99-µs)")" "$(med $ln p99-vs-grpc)")
$(row "SYNC 4 KiB p50, net.Conn vs raw ping-pong alone" "ping-pong p50 µs (its runs)" "$(num %.0f "$(med $ln ping-p50-µs)")" "$(med $ln p50-vs-ping)")
$(row "SYNC 4 KiB p99, net.Conn vs raw ping-pong alone" "ping-pong p99 µs (its runs)" "$(num %.0f "$(med $ln ping-p99-µs)")" "$(med $ln p99-vs-ping)")
$(row "SYNC 4 KiB p50, gnet vs an event-loop ping-pong alone" "event-loop ping-pong p50 µs" "$(num %.0f "$(med $l loop-p50-µs)")" "$(med $l p50-vs-loop)")
$(row "SYNC 4 KiB p99, gnet vs an event-loop ping-pong alone" "event-loop ping-pong p99 µs" "$(num %.0f "$(med $l loop-p99-µs)")" "$(med $l p99-vs-loop)")
$(row "event-loop ping-pong vs raw ping-pong, both alone" "p50 µs event loops; runtime poller (ratio of medians)" "$(num %.0f "$(med $l loop-p50-µs)"); $(num %.0f "$(med $l ping-p50-µs)")" "$(ratio "$(med $l loop-p50-µs)" "$(med $l ping-p50-µs)")")
$(row "the old baseline: ping-pong beside gnet peers vs alone" "p50 µs in process; alone (ratio of medians)" "$(num %.0f "$(med $l ping-inproc-p50-µs)"); $(num %.0f "$(med $l ping-p50-µs)")" "$(ratio "$(med $l ping-inproc-p50-µs)" "$(med $l ping-p50-µs)")")
$(row "chain, 64 KiB packets, gnet, vs relay: Send" "stream MB/s (Chain/stream-64KiB)" "$(num %.0f "$(med $c/stream-64KiB MB/s)")" "$(med $c/stream-64KiB vs-relay)" ge 0.8)
$(row "chain, 64 KiB packets, gnet, vs relay: WriteAsync" "stream MB/s (Matrix, which copies)" "$(num %.0f "$(med $m64 MB/s)")" "$(med $m64 vs-relay)" ge 0.8)
$(row "chain, 4 KiB packets, gnet, vs relay: Send" "stream MB/s (Chain/stream-4KiB)" "$(num %.0f "$(med $c/stream-4KiB MB/s)")" "$(med $c/stream-4KiB vs-relay)" ge 0.5)
$(row "chain, 4 KiB packets, gnet, vs relay: WriteAsync" "stream MB/s (Matrix, which copies)" "$(num %.0f "$(med $m4 MB/s)")" "$(med $m4 vs-relay)" ge 0.5)
$(row "chain, 1 MiB packets, gnet, vs relay (first round)" "stream MB/s" "$(num %.0f "$g_mbs")" "$g_vs" ge 0.8)
$(row "chain, 1 MiB packets, with Raft commit (full peers), vs relay" "stream MB/s (Chain/stream-raft)" "$(num %.0f "$(med $c/stream-raft MB/s)")" "$(med $c/stream-raft vs-relay)" ge 0.85)
$(row "chain, 1 MiB packets, gnet vs a grpc-go chain" "stream MB/s; grpc-go MB/s (ratio of medians)" "$(num %.0f "$g_mbs"); $(num %.0f "$(med $c/grpc MB/s)")" "$(ratio "$g_mbs" "$(med $c/grpc MB/s)")")
$(row "FileStore chain vs a relay writing files" "stream-file MB/s; relay-file MB/s (its own runs)" "$(num %.0f "$(med $c/stream-file MB/s)"); $(num %.0f "$(med $c/relay-file MB/s)")" "$(med $c/stream-file vs-relay)" ge 0.8)
$(row "garbage per GiB in steady state, gnet (the issue's net.Conn figure: 2 MiB, no GC)" "MiB allocated per GiB streamed, in the ratio column too; GCs per GiB" "$(num %.3f "$(ratio "$g_gib" 1048576)"); $(num %.2f "$g_gcs")" "$(ratio "$g_gib" 1048576)" le 2)
$(row "garbage per GiB in steady state, gnet vs net.Conn" "MiB allocated per GiB streamed, gnet; net.Conn (ratio of medians)" "$(num %.1f "$(ratio "$g_gib" 1048576)"); $(num %.1f "$(ratio "$n_gib" 1048576)")" "$(ratio "$g_gib" "$n_gib")")
$(row "GCs per GiB in steady state, gnet vs net.Conn" "GCs per GiB streamed, gnet; net.Conn (ratio of medians)" "$(num %.2f "$g_gcs"); $(num %.2f "$n_gcs")" "$(ratio "$g_gcs" "$n_gcs")")
$(row "memory per connection, gnet vs net.Conn" "the peer's heap+stack B/conn at $ng; $nn connections" "$(num %.0f "$(med "$cgmax" heap+stack-B/conn)"); $(num %.0f "$(med "$cnmax" heap+stack-B/conn)")" "$(ratio "$(med "$cgmax" heap+stack-B/conn)" "$(med "$cnmax" heap+stack-B/conn)")" le 0.25)
$(row "goroutines per connection, gnet vs net.Conn" "the peer's goroutines/conn" "$(num %.2f "$(med "$cgmax" goroutines/conn)"); $(num %.2f "$(med "$cnmax" goroutines/conn)")" "$(ratio "$(med "$cgmax" goroutines/conn)" "$(med "$cnmax" goroutines/conn)")")
$(row "goroutines per idle connection, gnet, vs one each" "the peer's goroutines/conn at $ng connections" "$(num %.2f "$(med "$cgmax" goroutines/conn)")" "$(med "$cgmax" goroutines/conn)" le 0.01)
$(row "small streams, $ng connections vs 100, gnet" "streams/s at $ng; at 100" "$(num %.0f "$(med "$cgmax" streams/s)"); $(num %.0f "$(med $cg100 streams/s)")" "$(ratio "$(med "$cgmax" streams/s)" "$(med $cg100 streams/s)")")
$(row "small streams, $nn connections vs 100, net.Conn" "streams/s at $nn; at 100" "$(num %.0f "$(med "$cnmax" streams/s)"); $(num %.0f "$(med $cn100 streams/s)")" "$(ratio "$(med "$cnmax" streams/s)" "$(med $cn100 streams/s)")")
EOF
awk -v gib="$memory_gib" '
/memory: transport=/ {
	match($0, /transport=[a-z]+/); tr = substr($0, RSTART + 10, RLENGTH - 10)
	match($0, /in use \+[0-9.]+/); inuse = substr($0, RSTART + 8, RLENGTH - 8)
	match($0, /live \+[0-9.]+/); live = substr($0, RSTART + 6, RLENGTH - 6)
	match($0, /formula [0-9.]+/); formula = substr($0, RSTART + 8, RLENGTH - 8)
	match($0, /limit [0-9.]+/); limit = substr($0, RSTART + 6, RLENGTH - 6)
	printf "| heap while streaming %s GiB, %s | peak in use; peak live (MiB) | %s; %s | %.2f× formula (%s MiB) | ≤ %s MiB |\n", gib, tr, inuse, live, inuse / formula, formula, limit
}' "$work/memory"
if grep -q -- '--- FAIL' "$work/raw" "$work/memory"; then
	echo
	echo "Failures (their runs are left out of the medians):"
	echo
	echo '```'
	# A failed leaf and its messages; its parents' bare FAIL lines are left out.
	awk '/--- FAIL/ { held = $0; msg = 0; next }
		/^ / && (held != "" || msg) { if (held != "") print held; held = ""; msg = 1; print; next }
		{ held = ""; msg = 0 }' "$work/raw" "$work/memory"
	echo '```'
fi
