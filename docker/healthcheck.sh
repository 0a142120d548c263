#!/usr/bin/env bash
# Container health probe for the EraserWorker images, without curl or wget (neither is in the
# mcr.microsoft.com/dotnet/aspnet or nvidia/cuda runtime images): a plain HTTP/1.0 GET over bash's
# /dev/tcp, healthy only on a 200 status line.
#
#   eraser-healthcheck [PATH]      PATH defaults to /health/live
#
# Port: $ERASER_HEALTHCHECK_PORT, else $Eraser__Http__Port (the worker's own setting), else 8080.
# Host: $ERASER_HEALTHCHECK_HOST, else 127.0.0.1. Exit status: 0 healthy, 1 unhealthy (the only two
# values Docker's HEALTHCHECK accepts). Docker's --timeout bounds the whole probe; `read -t` bounds
# the wait for the status line as well, for use outside Docker.
set -u

path="${1:-/health/live}"
port="${ERASER_HEALTHCHECK_PORT:-${Eraser__Http__Port:-8080}}"
host="${ERASER_HEALTHCHECK_HOST:-127.0.0.1}"

if ! { exec 3<>"/dev/tcp/${host}/${port}"; } 2>/dev/null; then
  echo "unhealthy: cannot connect to ${host}:${port}" >&2
  exit 1
fi

printf 'GET %s HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' "${path}" >&3
status=""
IFS= read -r -t 5 status <&3 || true
exec 3<&- 3>&-
status="${status%$'\r'}"

case "${status}" in
  "HTTP/1."?" 200"*) exit 0 ;;
  *)
    echo "unhealthy: GET ${path} on ${host}:${port} answered '${status:-nothing}'" >&2
    exit 1
    ;;
esac
