#!/usr/bin/env bash
# Helpers shared by scripts/up, scripts/down and scripts/test. Source it:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# or run one of its functions directly, e.g. `scripts/lib.sh ensure_services ensure_database`.
#
# Everything here is idempotent: a service that already answers on its port is left alone
# (never restarted, never reconfigured, except the best-effort `ensure_redis_aof` that only
# scripts/up calls), a role or database that exists is kept.
#
# These machines have no systemd, so services are started directly (pg_ctlcluster,
# redis-server --daemonize, rabbitmq-server -detached), all bound to loopback.

# Strict mode for scripts; an interactive shell that sources this file keeps its own options
# (set -e there would close the shell on the first failing command).
if [[ $- != *i* ]]; then
    set -euo pipefail
fi

FLOODGATE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck disable=SC2034 # used by the scripts that source this file
FLOODGATE_RUN_DIR="$FLOODGATE_ROOT/.run"
# Where cargo puts the binaries (CARGO_TARGET_DIR is honoured; a relative one is relative to the root).
FLOODGATE_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ $FLOODGATE_TARGET_DIR == /* ]] || FLOODGATE_TARGET_DIR="$FLOODGATE_ROOT/$FLOODGATE_TARGET_DIR"

# Local services. The ports are the project's defaults (DESIGN.md); they are variables only so
# that the code below reads as what it checks.
FG_HOST=127.0.0.1
FG_PG_PORT=5432
FG_REDIS_PORT=6379
FG_AMQP_PORT=5672
FG_DB_ROLE=floodgate
FG_DB_PASSWORD=floodgate
FG_DB_NAME=floodgate
FG_REDIS_DIR=/var/lib/redis
FG_REDIS_LOG=/var/log/redis/floodgate.log
# How long to wait for a service or process to answer.
FG_WAIT_SECONDS="${FLOODGATE_WAIT_SECONDS:-60}"

# Connection defaults for the processes and the tests; a value set by the caller wins.
# No TLS to the local server: see common/src/config.rs (defaults::DATABASE_URL) for why.
export DATABASE_URL="${DATABASE_URL:-postgres://$FG_DB_ROLE:$FG_DB_PASSWORD@$FG_HOST:$FG_PG_PORT/$FG_DB_NAME?sslmode=disable}"
export REDIS_URL="${REDIS_URL:-redis://$FG_HOST:$FG_REDIS_PORT}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@$FG_HOST:$FG_AMQP_PORT/%2f}"

# ---------------------------------------------------------------------------------------------
# Logging

if [[ -t 2 ]]; then
    _fg_bold=$'\e[1m' _fg_yellow=$'\e[33m' _fg_red=$'\e[31m' _fg_reset=$'\e[0m'
else
    _fg_bold='' _fg_yellow='' _fg_red='' _fg_reset=''
fi

info() { printf '%s==>%s %s\n' "$_fg_bold" "$_fg_reset" "$*" >&2; }
warn() { printf '%swarning:%s %s\n' "$_fg_yellow" "$_fg_reset" "$*" >&2; }
die() {
    printf '%serror:%s %s\n' "$_fg_red" "$_fg_reset" "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Small utilities

have() { command -v "$1" >/dev/null 2>&1; }

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif have sudo; then
        sudo "$@"
    else
        die "this step needs root and sudo is not installed: $*"
    fi
}

# Runs a command as another local user (from / so that the user need not read our directory).
as_user() {
    local user=$1
    shift
    if [[ $(id -un) == "$user" ]]; then
        (cd / && "$@")
    elif [[ $EUID -eq 0 ]] && have runuser; then
        (cd / && runuser -u "$user" -- "$@")
    elif [[ $EUID -eq 0 ]]; then
        (cd / && su -s /bin/bash "$user" -c "$(printf '%q ' "$@")")
    elif have sudo; then
        (cd / && sudo -u "$user" -- "$@")
    else
        return 1
    fi
}

# True when something accepts TCP connections on 127.0.0.1:<port>.
tcp_open() {
    timeout 3 bash -c "</dev/tcp/$FG_HOST/$1" 2>/dev/null
}

# wait_for <seconds> <command...>: polls the command every half second until it succeeds.
wait_for() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.5
    done
}

# Hex string of <bytes> random bytes.
random_hex() {
    od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

# Finds cargo when it is installed by rustup but not on PATH (e.g. a non-login shell).
ensure_cargo() {
    if ! have cargo && [[ -f "$HOME/.cargo/env" ]]; then
        # shellcheck source=/dev/null
        source "$HOME/.cargo/env"
    fi
    have cargo || die "cargo is not installed: install the Rust toolchain with rustup (https://rustup.rs)"
}

# ---------------------------------------------------------------------------------------------
# Debian packages

_fg_apt_updated=0

# apt_install <package...>: installs Debian packages (apt-get update once per run).
apt_install() {
    (($# > 0)) || return 0
    if ! have apt-get; then
        die "apt-get is not available: install these packages yourself, then re-run: $*"
    fi
    if ((_fg_apt_updated == 0)); then
        info "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
            die "apt-get update failed"
        _fg_apt_updated=1
    fi
    info "installing: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" ||
        die "apt-get install failed for: $*"
}

# ensure_tools <command:package...>: installs the package of every missing command.
ensure_tools() {
    local spec pkgs=()
    for spec in "$@"; do
        have "${spec%%:*}" || pkgs+=("${spec#*:}")
    done
    apt_install "${pkgs[@]}"
}

# ---------------------------------------------------------------------------------------------
# Service checks

pg_answering() {
    if have pg_isready; then
        pg_isready -q -h "$FG_HOST" -p "$FG_PG_PORT" -t 3
    else
        tcp_open "$FG_PG_PORT"
    fi
}

redis_answering() {
    if have redis-cli; then
        [[ $(timeout 5 redis-cli -h "$FG_HOST" -p "$FG_REDIS_PORT" ping 2>/dev/null) == PONG ]]
    else
        tcp_open "$FG_REDIS_PORT"
    fi
}

# rabbitmq-diagnostics talks to the node with the Erlang cookie, which only root and the
# rabbitmq user can read: other users get the port check alone.
rabbitmq_diagnostics_usable() {
    have rabbitmq-diagnostics && { [[ $EUID -eq 0 ]] || [[ $(id -un) == rabbitmq ]]; }
}

rabbitmq_answering() {
    tcp_open "$FG_AMQP_PORT" || return 1
    if rabbitmq_diagnostics_usable; then
        timeout 30 rabbitmq-diagnostics -q ping >/dev/null 2>&1
    fi
}

pg_server_installed() {
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

# The PostgreSQL major version to run: the newest with a `main` cluster, else the newest installed.
pg_version() {
    local dir versions=()
    for dir in /etc/postgresql/*/main/postgresql.conf; do
        [[ -f $dir ]] && versions+=("$(basename "$(dirname "$(dirname "$dir")")")")
    done
    if ((${#versions[@]} == 0)); then
        for dir in /usr/lib/postgresql/*/bin/postgres; do
            [[ -f $dir ]] && versions+=("$(basename "$(dirname "$(dirname "$dir")")")")
        done
    fi
    ((${#versions[@]} > 0)) || return 1
    printf '%s\n' "${versions[@]}" | sort -V | tail -n 1
}

redis_supports_optional_bind() {
    # "-::1" (bind this address only if it exists) arrived in Redis 6.2 / 7.
    local version major minor
    version=$(redis-server --version | sed -n 's/.*v=\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    read -r major minor <<<"$version"
    [[ -n ${major:-} ]] && ((major > 6 || (major == 6 && ${minor:-0} >= 2)))
}

# ---------------------------------------------------------------------------------------------
# Starting services (no systemd on these machines)

start_postgres() {
    local version
    version=$(pg_version) || die "PostgreSQL is installed but no version was found under /usr/lib/postgresql"
    if [[ ! -f /etc/postgresql/$version/main/postgresql.conf ]]; then
        info "creating PostgreSQL cluster $version/main"
        as_root pg_createcluster "$version" main || die "pg_createcluster $version main failed"
    fi
    info "starting PostgreSQL $version (cluster main)"
    if ! as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start; then
        warn "pg_ctlcluster failed; trying 'service postgresql start'"
        as_root service postgresql start || true
    fi
    PG_LOG="/var/log/postgresql/postgresql-$version-main.log"
}

start_redis() {
    # Run as the Debian package's `redis` user when it exists (it owns /var/lib/redis).
    local user bind=("$FG_HOST")
    user=$(id -un)
    if id -u redis >/dev/null 2>&1; then
        user=redis
    fi
    as_root mkdir -p "$FG_REDIS_DIR" "$(dirname "$FG_REDIS_LOG")"
    as_root chown "$user" "$FG_REDIS_DIR" "$(dirname "$FG_REDIS_LOG")"
    if redis_supports_optional_bind; then
        bind+=("-::1")
    fi
    info "starting Redis (append-only file, fsync every second) as $user"
    # AOF with appendfsync everysec is a project requirement: at most one second of waiting-room
    # state is lost when Redis dies.
    as_user "$user" redis-server \
        --daemonize yes \
        --bind "${bind[@]}" \
        --port "$FG_REDIS_PORT" \
        --appendonly yes \
        --appendfsync everysec \
        --dir "$FG_REDIS_DIR" \
        --pidfile "$FG_REDIS_DIR/redis-server-floodgate.pid" \
        --logfile "$FG_REDIS_LOG" ||
        die "redis-server did not start; read $FG_REDIS_LOG"
}

start_rabbitmq() {
    info "starting RabbitMQ"
    # The variables keep AMQP, the Erlang port mapper, clustering and the management/prometheus
    # listeners on loopback. A value from /etc/rabbitmq/rabbitmq-env.conf or rabbitmq.conf that
    # says otherwise is the operator's choice. The Debian wrapper switches to the rabbitmq user.
    as_root env \
        RABBITMQ_NODE_IP_ADDRESS="$FG_HOST" \
        ERL_EPMD_ADDRESS="$FG_HOST" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1} -rabbitmq_management tcp_config [{ip,"127.0.0.1"},{port,15672}] -rabbitmq_prometheus tcp_config [{ip,"127.0.0.1"},{port,15692}]' \
        rabbitmq-server -detached ||
        die "rabbitmq-server -detached failed; read the logs in /var/log/rabbitmq/"
}

# ---------------------------------------------------------------------------------------------
# ensure_services: PostgreSQL, Redis and RabbitMQ answer on 127.0.0.1.

ensure_services() {
    local pkgs=() pg_up=0 redis_up=0 rabbit_up=0

    pg_answering && pg_up=1
    redis_answering && redis_up=1
    rabbitmq_answering && rabbit_up=1

    # Clients are needed in any case (ensure_database uses psql, checks use redis-cli);
    # servers only for what is not running.
    if ((pg_up == 0)) && ! pg_server_installed; then
        pkgs+=(postgresql)
    elif ! have psql || ! have pg_isready; then
        pkgs+=(postgresql-client)
    fi
    if ((redis_up == 0)) && ! have redis-server; then
        pkgs+=(redis-server)
    elif ! have redis-cli; then
        pkgs+=(redis-tools)
    fi
    if ((rabbit_up == 0)) && ! have rabbitmq-server; then
        pkgs+=(rabbitmq-server)
    fi
    apt_install "${pkgs[@]}"

    # A package's install script may have started the service already; so may a service that
    # was merely slow to answer the first time. Look again before starting anything.
    local wait=$FG_WAIT_SECONDS
    if ((pg_up == 0)) && ! pg_answering; then
        PG_LOG=/var/log/postgresql/
        if ! tcp_open "$FG_PG_PORT"; then
            start_postgres
        fi
        wait_for "$wait" pg_answering ||
            die "PostgreSQL does not answer on $FG_HOST:$FG_PG_PORT after ${wait}s; read $PG_LOG"
    fi
    info "PostgreSQL answers on $FG_HOST:$FG_PG_PORT"

    if ((redis_up == 0)) && ! redis_answering; then
        if ! tcp_open "$FG_REDIS_PORT"; then
            start_redis
        fi
        wait_for "$wait" redis_answering ||
            die "Redis does not answer on $FG_HOST:$FG_REDIS_PORT after ${wait}s; read $FG_REDIS_LOG"
    fi
    info "Redis answers on $FG_HOST:$FG_REDIS_PORT"

    if ((rabbit_up == 0)) && ! rabbitmq_answering; then
        if ! tcp_open "$FG_AMQP_PORT"; then
            start_rabbitmq
        fi
        wait_for "$wait" rabbitmq_answering ||
            die "RabbitMQ does not answer on $FG_HOST:$FG_AMQP_PORT after ${wait}s; read /var/log/rabbitmq/ (rabbit@<host>.log, startup_err)"
    fi
    info "RabbitMQ answers on $FG_HOST:$FG_AMQP_PORT"
}

# Redis that was already running (e.g. started by the machine without an append-only file) is
# not restarted; scripts/up asks it to turn AOF on at run time, which may be refused.
ensure_redis_aof() {
    local appendonly fsync
    appendonly=$(redis-cli -h "$FG_HOST" -p "$FG_REDIS_PORT" CONFIG GET appendonly 2>/dev/null | sed -n 2p)
    fsync=$(redis-cli -h "$FG_HOST" -p "$FG_REDIS_PORT" CONFIG GET appendfsync 2>/dev/null | sed -n 2p)
    if [[ $appendonly == yes && $fsync == everysec ]]; then
        return 0
    fi
    if [[ $(redis-cli -h "$FG_HOST" -p "$FG_REDIS_PORT" CONFIG SET appendfsync everysec 2>&1) == OK &&
        $(redis-cli -h "$FG_HOST" -p "$FG_REDIS_PORT" CONFIG SET appendonly yes 2>&1) == OK ]]; then
        info "Redis: turned on the append-only file (appendfsync everysec) at run time"
    else
        warn "Redis runs without an append-only file and refused CONFIG SET appendonly yes;" \
            "waiting-room state will not survive a Redis restart"
    fi
}

# Best effort: the management UI (15672) and Prometheus metrics (15692) of RabbitMQ.
ensure_rabbitmq_plugins() {
    have rabbitmq-plugins || {
        warn "rabbitmq-plugins not found; skipping the management and prometheus plugins"
        return 0
    }
    local enabled
    enabled=$(as_root rabbitmq-plugins list -e -m -q 2>/dev/null) || enabled=''
    if grep -qx rabbitmq_management <<<"$enabled" && grep -qx rabbitmq_prometheus <<<"$enabled"; then
        return 0
    fi
    info "enabling RabbitMQ plugins rabbitmq_management and rabbitmq_prometheus"
    as_root rabbitmq-plugins enable rabbitmq_management rabbitmq_prometheus >/dev/null 2>&1 ||
        warn "could not enable the RabbitMQ plugins rabbitmq_management and rabbitmq_prometheus (continuing without them)"
}

# ---------------------------------------------------------------------------------------------
# ensure_database: role floodgate (LOGIN CREATEDB, password floodgate) and database floodgate.

_fg_app_url() {
    printf 'postgres://%s:%s@%s:%s/%s' "$FG_DB_ROLE" "$FG_DB_PASSWORD" "$FG_HOST" "$FG_PG_PORT" "$1"
}

# The superuser ways to reach PostgreSQL, tried in order: trust auth over TCP (CI-like
# machines), then the postgres OS user over the socket (peer auth on a fresh Debian install).
_fg_psql_super() {
    local how=$1
    shift
    case $how in
        tcp) psql -X -w -q -v ON_ERROR_STOP=1 -h "$FG_HOST" -p "$FG_PG_PORT" -U postgres -d postgres "$@" ;;
        peer) as_user postgres psql -X -w -q -v ON_ERROR_STOP=1 -p "$FG_PG_PORT" -d postgres "$@" ;;
        *) die "_fg_psql_super: unknown method $how" ;;
    esac
}

ensure_database() {
    have psql || die "psql is not installed (run ensure_services first, or apt-get install postgresql-client)"

    # Already set up: the role logs in, owns its database and may create test databases.
    if [[ $(PGCONNECT_TIMEOUT=5 psql -X -w -At "$(_fg_app_url "$FG_DB_NAME")" \
        -c 'select rolcreatedb from pg_roles where rolname = current_user' 2>/dev/null) == t ]]; then
        info "database $FG_DB_NAME and role $FG_DB_ROLE exist"
    else
        local how found=''
        for how in tcp peer; do
            if [[ $(_fg_psql_super "$how" -At -c \
                'select rolsuper or (rolcreaterole and rolcreatedb) from pg_roles where rolname = current_user' \
                2>/dev/null </dev/null) == t ]]; then
                found=$how
                break
            fi
        done
        [[ -n $found ]] || die "cannot connect to PostgreSQL as a superuser to create role $FG_DB_ROLE:" \
            "tried 'psql -h $FG_HOST -U postgres' and the postgres OS user (su/sudo -u postgres psql)." \
            "Create it yourself: CREATE ROLE $FG_DB_ROLE LOGIN CREATEDB PASSWORD '$FG_DB_PASSWORD';" \
            "CREATE DATABASE $FG_DB_NAME OWNER $FG_DB_ROLE;"
        info "creating role $FG_DB_ROLE and database $FG_DB_NAME (as postgres, via $found)"
        # \gexec runs the generated statement only when the row exists, which makes this
        # re-runnable (CREATE ROLE/DATABASE have no IF NOT EXISTS).
        _fg_psql_super "$found" <<SQL || die "creating role $FG_DB_ROLE / database $FG_DB_NAME failed"
SELECT format('CREATE ROLE %I', '$FG_DB_ROLE')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$FG_DB_ROLE') \gexec
ALTER ROLE $FG_DB_ROLE LOGIN CREATEDB PASSWORD '$FG_DB_PASSWORD';
SELECT format('CREATE DATABASE %I OWNER %I', '$FG_DB_NAME', '$FG_DB_ROLE')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$FG_DB_NAME') \gexec
ALTER DATABASE $FG_DB_NAME OWNER TO $FG_DB_ROLE;
SQL
    fi

    PGCONNECT_TIMEOUT=5 psql -X -w -q "$DATABASE_URL" -c 'select 1' >/dev/null ||
        die "cannot connect with DATABASE_URL=$DATABASE_URL (check pg_hba.conf allows password logins from 127.0.0.1)"
    info "DATABASE_URL=$DATABASE_URL connects"
}

# ---------------------------------------------------------------------------------------------
# Processes started by scripts/up (pid files in .run/)

# True when <pid> is alive and runs one of this repository's binaries (so a stale pid file
# whose number was reused by an unrelated process never gets that process killed).
fg_pid_is_ours() {
    local pid=$1 exe
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    [[ $exe == "$FLOODGATE_TARGET_DIR/"* ]]
}

# stop_pidfiles <timeout seconds> <pidfile...>: SIGTERM, wait for a graceful drain, SIGKILL
# what is left, remove the pid files.
stop_pidfiles() {
    local timeout=$1
    shift
    local file pid pids=() names=()
    for file in "$@"; do
        [[ -f $file ]] || continue
        pid=$(<"$file")
        if fg_pid_is_ours "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$(basename "$file" .pid)")
        fi
    done
    if ((${#pids[@]} > 0)); then
        info "stopping ${names[*]} (SIGTERM, up to ${timeout}s)"
        local tries=0 alive
        while :; do
            alive=()
            for pid in "${pids[@]}"; do
                fg_pid_is_ours "$pid" && alive+=("$pid")
            done
            ((${#alive[@]} == 0)) && break
            if ((tries >= timeout * 4)); then
                warn "still running after ${timeout}s, sending SIGKILL to pid ${alive[*]}"
                for pid in "${alive[@]}"; do
                    # scripts/up starts each process as the leader of its own session and process
                    # group: kill the group, so nothing it spawned survives it.
                    if [[ $(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ') == "$pid" ]]; then
                        kill -KILL -- "-$pid" 2>/dev/null || true
                    else
                        kill -KILL "$pid" 2>/dev/null || true
                    fi
                done
                break
            fi
            sleep 0.25
            tries=$((tries + 1))
        done
    fi
    for file in "$@"; do
        rm -f "$file"
    done
}

# Best effort: stops the local PostgreSQL, Redis and RabbitMQ (scripts/down --services).
stop_services() {
    if redis_answering; then
        info "stopping Redis"
        redis-cli -h "$FG_HOST" -p "$FG_REDIS_PORT" shutdown >/dev/null 2>&1 || true
    fi
    if tcp_open "$FG_AMQP_PORT" && have rabbitmqctl; then
        info "stopping RabbitMQ"
        as_root rabbitmqctl -q shutdown >/dev/null 2>&1 ||
            as_root rabbitmqctl -q stop >/dev/null 2>&1 ||
            warn "could not stop RabbitMQ"
    fi
    if pg_answering; then
        info "stopping PostgreSQL"
        local version
        if version=$(pg_version) && as_root pg_ctlcluster --skip-systemctl-redirect "$version" main stop; then
            :
        else
            as_root service postgresql stop || warn "could not stop PostgreSQL"
        fi
    fi
}

# Executed rather than sourced: run the named functions, e.g. `scripts/lib.sh ensure_services`.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    if (($# == 0)); then
        echo "usage: $0 FUNCTION... (e.g. ensure_services ensure_database); or source it" >&2
        exit 2
    fi
    for _fg_fn in "$@"; do
        [[ $(type -t "$_fg_fn") == function ]] || die "no such function: $_fg_fn"
        "$_fg_fn"
    done
fi
