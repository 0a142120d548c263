#!/usr/bin/env bash
# Runs the whole test suite against real services: installs the Debian packages the tests need when they are
# missing (scripts/services.sh deps: one apt-get update at most; nothing to do, and quick, when all are there),
# starts RabbitMQ and Azurite (scripts/services.sh start), exports ERASER_TEST_RABBITMQ,
# ERASER_TEST_RABBITMQ_MANAGEMENT and ERASER_TEST_AZURITE, runs `dotnet test EraserWorker.sln -c Release` with
# any extra arguments passed through, and on exit stops the services that this run started (services that
# were already running before are left running).
#
# Usage: scripts/test.sh [dotnet test arguments...]
#   e.g. scripts/test.sh --filter "FullyQualifiedName~EraserWorker.Tests.Storage"
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES="$REPO_ROOT/scripts/services.sh"

started=()
for s in rabbitmq azurite; do
    if [[ "$("$SERVICES" status "$s" 2>/dev/null | cut -d' ' -f2)" == stopped ]]; then started+=("$s"); fi
done

cleanup() {
    local rc=$?
    if [[ ${#started[@]} -gt 0 ]]; then "$SERVICES" stop "${started[@]}" || true; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$SERVICES" deps
"$SERVICES" start
eval "$("$SERVICES" env)"
export ERASER_TEST_RABBITMQ ERASER_TEST_RABBITMQ_MANAGEMENT ERASER_TEST_AZURITE

cd "$REPO_ROOT"
dotnet test EraserWorker.sln -c Release "$@"
