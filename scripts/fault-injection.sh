#!/usr/bin/env bash
# The reliability suite at release size (docs/reliability.md). CI runs tests/EraserWorker.Tests/Reliability with
# small defaults (60 requests and 3 SIGKILLs; 80 fuzzed bodies); before a release, run this script: the whole suite once
# with 200 requests, 10 kills and 200 fuzzed bodies, then the seed-dependent tests (SIGKILL schedule, fuzzing) again
# with more seeds. Every run goes through scripts/test.sh (real RabbitMQ and Azurite, started if needed); the
# disruptive tests restart RabbitMQ and stop Azurite for --outage seconds, so do not share the services with other test
# runs meanwhile. Logs: .run/fault-injection/<UTC time>/*.log; the summary names each run's seed so that a failure can
# be replayed: ERASER_FAULT_SEED=<seed> ERASER_FAULT_REQUESTS=<n> ERASER_FAULT_KILLS=<k> scripts/test.sh --filter ...
#
# Usage: scripts/fault-injection.sh [--requests N] [--kills K] [--seeds S] [--seed FIRST] [--outage SECONDS] [--quick]
#   --requests N   requests in the kill and outage runs, fuzzed bodies (default 200)
#   --kills K      SIGKILLs per kill run (default 10; every second one in the middle of a version write)
#   --seeds S      runs of the seed-dependent tests, the first inside the full run (default 3)
#   --seed FIRST   first seed (default random); the others follow it
#   --outage S     how long Azurite stays stopped (default 30)
#   --quick        the CI sizes (60 requests, 3 kills, 1 seed)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
requests=200
kills=10
seeds=3
seed=$(( (RANDOM << 15 | RANDOM) % 65536 ))
outage=30

while [[ $# -gt 0 ]]; do
    case "$1" in
        --requests) requests="$2"; shift 2 ;;
        --kills) kills="$2"; shift 2 ;;
        --seeds) seeds="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        --outage) outage="$2"; shift 2 ;;
        --quick) requests=60; kills=3; seeds=1; shift ;;
        -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "fault-injection: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
for n in "$requests" "$kills" "$seeds" "$seed" "$outage"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "fault-injection: '$n' is not a number" >&2; exit 2; }
done

logs="$REPO_ROOT/.run/fault-injection/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$logs"
summary=()
failed=0

run() { # run NAME SEED FILTER
    local name="$1" run_seed="$2" filter="$3" log="$logs/$1.log" start=$SECONDS rc=0
    echo "[fault-injection] $name: seed $run_seed, $requests requests, $kills kills (log: $log)" >&2
    ERASER_FAULT_SEED="$run_seed" ERASER_FAULT_REQUESTS="$requests" ERASER_FAULT_KILLS="$kills" \
    ERASER_FAULT_OUTAGE_SECONDS="$outage" \
        "$REPO_ROOT/scripts/test.sh" --filter "$filter" --logger "console;verbosity=detailed" >"$log" 2>&1 || rc=$?
    local counts
    counts="$(grep -E '^\s+(Passed|Failed):\s+[0-9]+' "$log" | tr -s ' ' | tr '\n' ' ' || true)"
    summary+=("$name (seed $run_seed): exit $rc, ${counts:-no test summary}, $((SECONDS - start)) s")
    if [[ $rc -ne 0 ]]; then
        failed=1
        grep -E '^\s+Failed EraserWorker' "$log" >&2 || true
    fi
}

run "suite" "$seed" "FullyQualifiedName~EraserWorker.Tests.Reliability"
for ((i = 1; i < seeds; i++)); do
    run "seed-$i" "$((seed + i))" \
        "FullyQualifiedName~EraserWorker.Tests.Reliability.WorkerKillTests|FullyQualifiedName~EraserWorker.Tests.Reliability.HostileInputTests.Fuzzed"
done

echo "[fault-injection] summary ($requests requests, $kills kills, outage ${outage}s; logs in $logs):" >&2
for line in "${summary[@]}"; do echo "  $line" >&2; done
# The kill schedule and what each run left in the store, from the test output.
grep -h -o -E 'kill [0-9]+ \([^)]*\)[^;]*;|head [0-9]+; chain .*' "$logs"/*.log 2>/dev/null | sed 's/^/  /' | cut -c1-200 >&2 || true
exit $failed
