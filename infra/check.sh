#!/usr/bin/env bash
# Offline checks of the deployment files: what can be verified without a Docker engine or a cluster.
#
#   infra/check.sh
#
# Needs: promtool (Debian: apt-get install -y prometheus), python3 with PyYAML (Debian: python3-yaml).
# Uses when present: docker compose / docker-compose (compose file validation), kubectl or kustomize
# (renders infra/k8s), yamllint, shellcheck. A missing optional tool is reported as SKIP; a missing required one fails.
# Run by tests/EraserWorker.Tests/Deployment/MetricsCoverageTests.cs. Exit status 0 when every check passes.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2

passed=0
failed=0
skipped=0
failures=()

ok()   { echo "  [ok] $1"; passed=$((passed + 1)); }
fail() { echo "  [FAIL] $1"; failed=$((failed + 1)); failures+=("$1"); }
skip() { echo "  [SKIP] $1"; skipped=$((skipped + 1)); }

# check NAME COMMAND...: runs the command, prints its output only when it fails.
check() {
  local name="$1"; shift
  local out
  if out="$("$@" 2>&1)"; then
    ok "$name"
  else
    fail "$name"
    printf '%s\n' "$out" | sed 's/^/         /'
  fi
}

echo "== tools"
promtool="$(command -v promtool || true)"
if [[ -z "$promtool" ]]; then
  echo "promtool not found: install it (Debian/Ubuntu: apt-get install -y prometheus)" >&2
  exit 2
fi
python=""
for candidate in /usr/bin/python3 "$(command -v python3 || true)"; do
  if [[ -n "$candidate" && -x "$candidate" ]] && "$candidate" -c 'import yaml' 2>/dev/null; then
    python="$candidate"
    break
  fi
done
if [[ -z "$python" ]]; then
  echo "no python3 with PyYAML found: install it (Debian/Ubuntu: apt-get install -y python3-yaml)" >&2
  exit 2
fi
echo "  promtool: $promtool ($("$promtool" --version 2>&1 | head -n1))"
echo "  python:   $python"

echo "== Prometheus"
check "promtool check config infra/prometheus/prometheus.yml" "$promtool" check config infra/prometheus/prometheus.yml
check "promtool check rules infra/prometheus/alerts.yml" "$promtool" check rules infra/prometheus/alerts.yml
check "promtool test rules infra/prometheus/alerts.test.yml" "$promtool" test rules infra/prometheus/alerts.test.yml

echo "== files, names and manifests (infra/check_manifests.py)"
kube="$(command -v kubectl || command -v kustomize || true)"
manifest_args=(--promtool "$promtool")
if [[ -n "$kube" ]]; then manifest_args+=(--kubectl "$kube"); fi
if out="$("$python" infra/check_manifests.py "${manifest_args[@]}" 2>&1)"; then
  printf '%s\n' "$out"
  ok "infra/check_manifests.py"
else
  printf '%s\n' "$out"
  fail "infra/check_manifests.py"
fi

echo "== compose file, YAML lint"
if docker compose version >/dev/null 2>&1; then
  check "docker compose config" docker compose -f docker-compose.yml config -q
elif command -v docker-compose >/dev/null 2>&1; then
  check "docker-compose config ($(docker-compose version --short 2>/dev/null))" docker-compose -f docker-compose.yml config -q
else
  skip "compose config (neither 'docker compose' nor 'docker-compose' is installed)"
fi

if command -v yamllint >/dev/null 2>&1; then
  check "yamllint (infra/yamllint.yml)" yamllint -s -c infra/yamllint.yml docker-compose.yml infra
else
  skip "yamllint (not installed)"
fi

echo "== container scripts"
for s in docker/healthcheck.sh docker/eraser.sh docker/merge-publish.sh infra/check.sh; do
  check "syntax: $s" bash -n "$s"
done
if command -v shellcheck >/dev/null 2>&1; then
  check "shellcheck docker/*.sh infra/check.sh" shellcheck -x docker/healthcheck.sh docker/eraser.sh docker/merge-publish.sh infra/check.sh
else
  skip "shellcheck (not installed)"
fi

# docker/healthcheck.sh against a stub HTTP server on the loopback interface (127.0.0.1 only).
# shellcheck disable=SC2317  # invoked indirectly, through check
healthcheck_test() {
  local dir port pid rc=0
  dir="$(mktemp -d)"
  "$python" - "$dir/port" <<'PY' &
import http.server, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = {"/health/live": 200, "/health/ready": 503}.get(self.path, 404)
        self.send_response(code); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(srv.server_address[1]))
threading.Timer(30, srv.shutdown).start()   # never outlives the check
srv.serve_forever()
PY
  pid=$!
  for _ in $(seq 50); do [[ -s "$dir/port" ]] && break; sleep 0.1; done
  port="$(cat "$dir/port" 2>/dev/null)"
  if [[ -z "$port" ]]; then echo "stub server did not start"; rc=1; fi
  if [[ $rc -eq 0 ]]; then
    Eraser__Http__Port="$port" bash docker/healthcheck.sh /health/live || { echo "200 reported unhealthy"; rc=1; }
    if Eraser__Http__Port="$port" bash docker/healthcheck.sh /health/ready 2>/dev/null; then echo "503 reported healthy"; rc=1; fi
    if ERASER_HEALTHCHECK_PORT="$port" bash docker/healthcheck.sh /nope 2>/dev/null; then echo "404 reported healthy"; rc=1; fi
  fi
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  if [[ -n "$port" ]]; then
    # Nothing listens there any more.
    if Eraser__Http__Port="$port" bash docker/healthcheck.sh 2>/dev/null; then echo "closed port reported healthy"; rc=1; fi
  fi
  rm -rf "$dir"
  return "$rc"
}
check "docker/healthcheck.sh: 200 healthy; 503, 404, closed port unhealthy" healthcheck_test

# docker/merge-publish.sh: shares identical files, moves the CLI aside on a clash.
# shellcheck disable=SC2317  # invoked indirectly, through check
merge_test() {
  local d rc=0
  d="$(mktemp -d)"
  mkdir -p "$d/w" "$d/c" "$d/c2"
  echo core >"$d/w/Core.dll"; echo worker >"$d/w/EraserWorker.dll"
  echo core >"$d/c/Core.dll"; echo cli >"$d/c/eraser.dll"
  echo other >"$d/c2/Core.dll"; echo cli >"$d/c2/eraser.dll"
  sh docker/merge-publish.sh "$d/w" "$d/c" "$d/out1" 2>/dev/null
  [[ -f "$d/out1/eraser.dll" && -f "$d/out1/EraserWorker.dll" && ! -e "$d/out1/cli" ]] || { echo "no-clash merge wrong"; rc=1; }
  sh docker/merge-publish.sh "$d/w" "$d/c2" "$d/out2" 2>/dev/null
  [[ "$(cat "$d/out2/Core.dll")" == core && -f "$d/out2/cli/eraser.dll" && "$(cat "$d/out2/cli/Core.dll")" == other && ! -e "$d/out2/eraser.dll" ]] \
    || { echo "clash merge wrong"; rc=1; }
  rm -rf "$d"
  return "$rc"
}
check "docker/merge-publish.sh: shared files once, CLI aside on a clash" merge_test

echo
if [[ $failed -eq 0 ]]; then
  echo "infra/check.sh: all $passed checks passed ($skipped skipped)"
  exit 0
fi
echo "infra/check.sh: $failed of $((passed + failed)) checks FAILED ($skipped skipped): ${failures[*]}"
exit 1
