#!/usr/bin/env bash
# Local test services for EraserWorker: RabbitMQ (AMQP 5672, management 15672, Prometheus 15692) and
# Azurite's blob service (10000). No systemd needed: both run in the background as plain processes with all
# their state under <repo>/.run/ (git-ignored); Azurite is installed with npm into <repo>/.tools/azurite.
#
# Usage: scripts/services.sh start|stop|status|env|restart|deps [rabbitmq|azurite]...
#   start    installs what is missing (apt-get / npm), starts the services (all, or those named) and waits
#            until they answer; idempotent: a service that already answers is left alone. A port that is
#            already served by a process this script did not start is used as it is ("external").
#   stop     stops the services this script started (found by the pid files under .run/); idempotent.
#   status   one line per service: running | external | stopped. Exit code 0 iff all named ones answer.
#   env      prints `export ERASER_TEST_RABBITMQ=...`, `export ERASER_TEST_RABBITMQ_MANAGEMENT=...` and
#            `export ERASER_TEST_AZURITE=...` lines: eval "$(scripts/services.sh env)"
#   deps     installs, only when missing, every Debian package the test suite needs — the services'
#            (rabbitmq-server, nodejs, npm, curl) and the tools' (prometheus for promtool and python3-yaml,
#            both required by infra/check.sh; yamllint and shellcheck, whose checks infra/check.sh otherwise
#            skips; python3-pika, python3-numpy, python3-torch and python3-sentencepiece for /usr/bin/python3,
#            the last two for the model tests' PyTorch and SentencePiece references) — with one apt-get update
#            at most and --no-install-recommends; quick when everything is present. scripts/test.sh runs it first.
#
# Environment: ERASER_SERVICES_TIMEOUT (seconds to wait for readiness, default 90).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="$REPO_ROOT/.run"
TOOLS_DIR="$REPO_ROOT/.tools"
TIMEOUT="${ERASER_SERVICES_TIMEOUT:-90}"

RABBIT_NODENAME="eraser@localhost"
RABBIT_PORT=5672
RABBIT_DIST_PORT=25672
RABBIT_MGMT_PORT=15672
RABBIT_PROM_PORT=15692
RABBIT_BIN=/usr/lib/rabbitmq/bin

AZURITE_VERSION="3.37.0"
AZURITE_PORT=10000
AZURITE_DIR="$TOOLS_DIR/azurite"
AZURITE_BIN="$AZURITE_DIR/node_modules/.bin/azurite-blob"
AZURITE_RUN="$RUN_DIR/azurite"
# The well-known development account of Azurite (public, documented by Microsoft; not a secret).
AZURITE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:${AZURITE_PORT}/devstoreaccount1;"
RABBIT_URI="amqp://guest:guest@127.0.0.1:${RABBIT_PORT}/"

log() { echo "[services] $*" >&2; }
die() { echo "[services] ERROR: $*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

read_pid() { [[ -f "$1" ]] && tr -dc '0-9' <"$1" || true; }

apt_updated=0
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then die "missing $*; install it (apt-get install -y $*) or run this script as root"; fi
    if [[ $apt_updated -eq 0 ]]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        apt_updated=1
    fi
    log "apt-get install -y --no-install-recommends $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# The Debian packages of the test suite that are missing, each found by what the tests use of it (a command,
# or a module of Debian's /usr/bin/python3, which is the interpreter the tests and infra/check.sh run).
missing_packages() {
    local -a missing=()
    [[ -x "$RABBIT_BIN/rabbitmq-server" ]] && command -v runuser >/dev/null || missing+=(rabbitmq-server)
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then missing+=(nodejs npm); fi
    command -v curl >/dev/null || missing+=(curl)
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v yamllint >/dev/null || missing+=(yamllint)
    command -v shellcheck >/dev/null || missing+=(shellcheck)
    local module package
    for module in yaml:python3-yaml pika:python3-pika numpy:python3-numpy torch:python3-torch \
        sentencepiece:python3-sentencepiece; do
        package="${module#*:}"
        module="${module%%:*}"
        [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c "import $module" 2>/dev/null || missing+=("$package")
    done
    echo "${missing[@]}"
}

deps_install() {
    local -a missing
    read -r -a missing <<<"$(missing_packages)"
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "deps: every package the tests need is installed"
        return 0
    fi
    apt_install "${missing[@]}"
    read -r -a missing <<<"$(missing_packages)"
    [[ ${#missing[@]} -eq 0 ]] || die "still missing after apt-get install: ${missing[*]}"
}

# --------------------------------------------------------------------------------------------- RabbitMQ

# State lives under .run/rabbitmq, which must be writable by the `rabbitmq` user. If the repository sits
# below a folder that user cannot traverse, the state goes to a private folder under /tmp instead and
# .run/rabbitmq becomes a symlink to it.
rabbit_state_dir() {
    local dir="$RUN_DIR/rabbitmq"
    if [[ -L "$dir" ]]; then readlink -f "$dir"; return; fi
    mkdir -p "$dir"
    chown rabbitmq:rabbitmq "$dir"
    if runuser -u rabbitmq -- test -w "$dir" 2>/dev/null; then
        echo "$dir"
    else
        rmdir "$dir" 2>/dev/null || true
        local alt
        alt="/tmp/eraser-rabbitmq-$(echo -n "$REPO_ROOT" | sha256sum | cut -c1-12)"
        mkdir -p "$alt"
        chown rabbitmq:rabbitmq "$alt"
        chmod 700 "$alt"
        ln -sfn "$alt" "$dir"
        log "the rabbitmq user cannot write under $RUN_DIR; RabbitMQ state is in $alt"
        echo "$alt"
    fi
}

rabbit_env() {
    local state="$1"
    echo "HOME=$state/home"
    echo "RABBITMQ_NODENAME=$RABBIT_NODENAME"
    echo "RABBITMQ_USE_LONGNAME=false"
    echo "RABBITMQ_NODE_PORT=$RABBIT_PORT"
    echo "RABBITMQ_DIST_PORT=$RABBIT_DIST_PORT"
    echo "RABBITMQ_MNESIA_BASE=$state/mnesia"
    echo "RABBITMQ_LOG_BASE=$state/log"
    echo "RABBITMQ_PID_FILE=$state/rabbitmq.pid"
    echo "RABBITMQ_ENABLED_PLUGINS_FILE=$state/enabled_plugins"
    echo "RABBITMQ_CONFIG_FILE=$state/rabbitmq.conf"
    echo "RABBITMQ_ADVANCED_CONFIG_FILE=$state/advanced.config"
    echo "RABBITMQ_CONF_ENV_FILE=$state/rabbitmq-env.conf"
}

# Runs a RabbitMQ tool as the rabbitmq user with this node's environment.
rabbit_run() {
    local state="$1"; shift
    local -a envs
    mapfile -t envs < <(rabbit_env "$state")
    (cd "$state" && runuser -u rabbitmq -- env "${envs[@]}" "$@")
}

rabbit_ping() {
    local state="$1"
    rabbit_run "$state" timeout 20 "$RABBIT_BIN/rabbitmq-diagnostics" -q ping >/dev/null 2>&1
}

ensure_localhost() {
    if ! getent hosts localhost >/dev/null 2>&1; then
        log "adding '127.0.0.1 localhost' to /etc/hosts (needed by the node name $RABBIT_NODENAME)"
        echo "127.0.0.1 localhost" >>/etc/hosts
    fi
}

rabbit_install() {
    if [[ ! -x "$RABBIT_BIN/rabbitmq-server" ]] || ! command -v runuser >/dev/null; then
        apt_install rabbitmq-server
    fi
    id rabbitmq >/dev/null 2>&1 || die "user 'rabbitmq' missing after installing rabbitmq-server"
}

rabbit_status() {
    # running (ours) | external | stopped
    local pidfile="$RUN_DIR/rabbitmq.owner.pid"
    if [[ -d "$RUN_DIR/rabbitmq" ]] && pid_alive "$(read_pid "$pidfile")" && port_open $RABBIT_PORT; then
        echo running
    elif port_open $RABBIT_PORT; then
        echo external
    else
        echo stopped
    fi
}

rabbit_start() {
    local st
    st="$(rabbit_status)"
    if [[ "$st" == running ]]; then log "rabbitmq: already running ($RABBIT_NODENAME)"; return 0; fi
    if [[ "$st" == external ]]; then
        log "rabbitmq: port $RABBIT_PORT is already served by a process this script did not start; using it"
        return 0
    fi
    rabbit_install
    ensure_localhost
    local state
    state="$(rabbit_state_dir)"
    mkdir -p "$state/mnesia" "$state/log" "$state/home"
    # Empty config files so that nothing from /etc/rabbitmq leaks in; the cookie is private to this node.
    touch "$state/rabbitmq.conf" "$state/rabbitmq-env.conf"
    [[ -f "$state/advanced.config" ]] || echo "[]." >"$state/advanced.config"
    if [[ ! -s "$state/home/.erlang.cookie" ]]; then
        head -c 32 /dev/urandom | sha256sum | cut -c1-40 | tr 'a-f' 'A-F' >"$state/home/.erlang.cookie"
    fi
    chmod 400 "$state/home/.erlang.cookie"
    chown -R rabbitmq:rabbitmq "$state"

    # A previous run may have left a node behind (killed shell, crash): stop it if it is ours and alive but
    # not answering, and drop stale pid files.
    local oldpid
    oldpid="$(read_pid "$state/rabbitmq.pid")"
    if pid_alive "$oldpid"; then
        if rabbit_ping "$state"; then
            log "rabbitmq: node $RABBIT_NODENAME (pid $oldpid) is up but port $RABBIT_PORT is not open yet; waiting"
        else
            log "rabbitmq: stale node process $oldpid does not answer; stopping it"
            kill "$oldpid" 2>/dev/null || true
            sleep 2
            kill -9 "$oldpid" 2>/dev/null || true
        fi
    fi
    rm -f "$state/rabbitmq.pid"
    local ownerpid
    ownerpid="$(read_pid "$RUN_DIR/rabbitmq.owner.pid")"
    if pid_alive "$ownerpid" && ! port_open $RABBIT_PORT; then
        log "rabbitmq: stale launcher process $ownerpid; stopping it"
        kill -- "-$ownerpid" 2>/dev/null || kill "$ownerpid" 2>/dev/null || true
        sleep 1
    fi
    rm -f "$RUN_DIR/rabbitmq.owner.pid"

    log "rabbitmq: enabling plugins rabbitmq_management rabbitmq_prometheus (offline)"
    rabbit_run "$state" "$RABBIT_BIN/rabbitmq-plugins" enable --offline rabbitmq_management rabbitmq_prometheus \
        >"$state/log/plugins.log" 2>&1 || die "rabbitmq-plugins failed; see $state/log/plugins.log"

    log "rabbitmq: starting $RABBIT_NODENAME (logs: $state/log/)"
    local -a envs
    mapfile -t envs < <(rabbit_env "$state")
    (
        cd "$state"
        setsid runuser -u rabbitmq -- env "${envs[@]}" "$RABBIT_BIN/rabbitmq-server" \
            >"$state/log/startup.log" 2>&1 </dev/null &
        echo $! >"$RUN_DIR/rabbitmq.owner.pid"
    )

    local deadline=$((SECONDS + TIMEOUT))
    until port_open $RABBIT_PORT && port_open $RABBIT_MGMT_PORT && port_open $RABBIT_PROM_PORT && rabbit_ping "$state"; do
        if ! pid_alive "$(read_pid "$RUN_DIR/rabbitmq.owner.pid")"; then
            tail -n 30 "$state/log/startup.log" >&2 || true
            die "rabbitmq exited during start-up; see $state/log/startup.log and $state/log/$RABBIT_NODENAME.log"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$state/log/startup.log" >&2 || true
            die "rabbitmq did not answer within ${TIMEOUT}s (ports $RABBIT_PORT/$RABBIT_MGMT_PORT/$RABBIT_PROM_PORT); see $state/log/startup.log and $state/log/$RABBIT_NODENAME.log"
        fi
        sleep 1
    done
    log "rabbitmq: ready (amqp $RABBIT_PORT, management $RABBIT_MGMT_PORT, prometheus $RABBIT_PROM_PORT)"
}

rabbit_stop() {
    local ownerpid
    ownerpid="$(read_pid "$RUN_DIR/rabbitmq.owner.pid")"
    if [[ ! -e "$RUN_DIR/rabbitmq" ]]; then log "rabbitmq: not started by this script"; return 0; fi
    local state
    state="$(readlink -f "$RUN_DIR/rabbitmq")"
    local nodepid
    nodepid="$(read_pid "$state/rabbitmq.pid")"
    if ! pid_alive "$ownerpid" && ! pid_alive "$nodepid"; then
        rm -f "$RUN_DIR/rabbitmq.owner.pid" "$state/rabbitmq.pid"
        log "rabbitmq: not running"
        return 0
    fi
    log "rabbitmq: stopping $RABBIT_NODENAME"
    rabbit_run "$state" timeout 60 "$RABBIT_BIN/rabbitmqctl" -q shutdown >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 30))
    while (pid_alive "$nodepid" || pid_alive "$ownerpid") && ((SECONDS < deadline)); do sleep 1; done
    if pid_alive "$nodepid"; then kill -9 "$nodepid" 2>/dev/null || true; fi
    if pid_alive "$ownerpid"; then kill -- "-$ownerpid" 2>/dev/null || kill -9 "$ownerpid" 2>/dev/null || true; fi
    rm -f "$RUN_DIR/rabbitmq.owner.pid" "$state/rabbitmq.pid"
    log "rabbitmq: stopped"
}

# ---------------------------------------------------------------------------------------------- Azurite

azurite_install() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        apt_install nodejs npm
    fi
    local installed=""
    if [[ -f "$AZURITE_DIR/node_modules/azurite/package.json" ]]; then
        installed="$(node -p "require('$AZURITE_DIR/node_modules/azurite/package.json').version" 2>/dev/null || true)"
    fi
    if [[ ! -x "$AZURITE_BIN" || "$installed" != "$AZURITE_VERSION" ]]; then
        log "azurite: npm install azurite@$AZURITE_VERSION into $AZURITE_DIR"
        mkdir -p "$AZURITE_DIR"
        [[ -f "$AZURITE_DIR/package.json" ]] || echo '{"name":"eraser-tools-azurite","private":true}' >"$AZURITE_DIR/package.json"
        (cd "$AZURITE_DIR" && npm install --no-audit --no-fund --loglevel=error --save-exact "azurite@$AZURITE_VERSION" >&2) \
            || die "npm install azurite@$AZURITE_VERSION failed"
    fi
}

azurite_status() {
    if pid_alive "$(read_pid "$AZURITE_RUN/azurite.pid")" && port_open $AZURITE_PORT; then
        echo running
    elif port_open $AZURITE_PORT; then
        echo external
    else
        echo stopped
    fi
}

azurite_start() {
    local st
    st="$(azurite_status)"
    if [[ "$st" == running ]]; then log "azurite: already running"; return 0; fi
    if [[ "$st" == external ]]; then
        log "azurite: port $AZURITE_PORT is already served by a process this script did not start; using it"
        return 0
    fi
    azurite_install
    mkdir -p "$AZURITE_RUN/data"
    local oldpid
    oldpid="$(read_pid "$AZURITE_RUN/azurite.pid")"
    if pid_alive "$oldpid"; then
        log "azurite: stale process $oldpid does not answer; stopping it"
        kill -- "-$oldpid" 2>/dev/null || kill "$oldpid" 2>/dev/null || true
        sleep 1
    fi
    rm -f "$AZURITE_RUN/azurite.pid"
    log "azurite: starting blob service on 127.0.0.1:$AZURITE_PORT (log: $AZURITE_RUN/azurite.log)"
    (
        setsid "$AZURITE_BIN" --skipApiVersionCheck --loose --blobHost 127.0.0.1 --blobPort $AZURITE_PORT \
            --location "$AZURITE_RUN/data" >"$AZURITE_RUN/azurite.log" 2>&1 </dev/null &
        echo $! >"$AZURITE_RUN/azurite.pid"
    )
    local deadline=$((SECONDS + TIMEOUT))
    # Any HTTP answer (400 without a container/account is fine) means the service is listening.
    until port_open $AZURITE_PORT && curl -s -o /dev/null "http://127.0.0.1:$AZURITE_PORT/devstoreaccount1?comp=list"; do
        if ! pid_alive "$(read_pid "$AZURITE_RUN/azurite.pid")"; then
            tail -n 30 "$AZURITE_RUN/azurite.log" >&2 || true
            die "azurite exited during start-up; see $AZURITE_RUN/azurite.log"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$AZURITE_RUN/azurite.log" >&2 || true
            die "azurite did not answer on port $AZURITE_PORT within ${TIMEOUT}s; see $AZURITE_RUN/azurite.log"
        fi
        sleep 0.5
    done
    log "azurite: ready (blob $AZURITE_PORT)"
}

azurite_stop() {
    local pid
    pid="$(read_pid "$AZURITE_RUN/azurite.pid")"
    if ! pid_alive "$pid"; then
        rm -f "$AZURITE_RUN/azurite.pid"
        log "azurite: not running (or not started by this script)"
        return 0
    fi
    log "azurite: stopping (pid $pid)"
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.5; done
    if pid_alive "$pid"; then kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true; fi
    rm -f "$AZURITE_RUN/azurite.pid"
    log "azurite: stopped"
}

# ------------------------------------------------------------------------------------------------- main

usage() {
    sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

cmd="${1:-}"
[[ -n "$cmd" ]] || usage
shift
services=("$@")
[[ ${#services[@]} -gt 0 ]] || services=(rabbitmq azurite)
for s in "${services[@]}"; do
    [[ "$s" == rabbitmq || "$s" == azurite ]] || die "unknown service '$s' (rabbitmq|azurite)"
done
mkdir -p "$RUN_DIR"

case "$cmd" in
    start)
        for s in "${services[@]}"; do "${s/rabbitmq/rabbit}_start"; done
        ;;
    stop)
        for s in "${services[@]}"; do "${s/rabbitmq/rabbit}_stop"; done
        ;;
    restart)
        for s in "${services[@]}"; do "${s/rabbitmq/rabbit}_stop"; "${s/rabbitmq/rabbit}_start"; done
        ;;
    deps)
        deps_install
        ;;
    status)
        rc=0
        for s in "${services[@]}"; do
            st="$("${s/rabbitmq/rabbit}_status")"
            echo "$s: $st"
            [[ "$st" != stopped ]] || rc=1
        done
        exit $rc
        ;;
    env)
        echo "export ERASER_TEST_RABBITMQ=$RABBIT_URI"
        echo "export ERASER_TEST_RABBITMQ_MANAGEMENT=http://127.0.0.1:${RABBIT_MGMT_PORT}/"
        echo "export ERASER_TEST_AZURITE='$AZURITE_CONNECTION_STRING'"
        ;;
    *) usage ;;
esac
