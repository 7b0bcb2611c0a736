# tools/lib.sh — shared by tools/demo.sh, tools/test.sh and tools/bench.sh.
#
# Responsibilities: install what is missing (as root, from Debian's archive), build and install the
# extension, and run throwaway PostgreSQL clusters under the work tree as an unprivileged OS user
# (PostgreSQL refuses to run as root).  Source it; do not run it.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_MAJOR=${PG_MAJOR:-15}
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/$PG_MAJOR/bin/pg_config}
# the unprivileged OS user that runs servers when we are root
SERVER_USER=${SERVER_USER:-postgres}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# install_packages PKG...: install the Debian packages that are missing (root only).
install_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! is_root; then
        die "missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# setup_base: what building, running the server and the sink need.
setup_base() {
    install_packages make gcc libc6-dev postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR \
        libcurl4-openssl-dev curl ca-certificates
    command -v node >/dev/null 2>&1 || install_packages nodejs
    [ -x "$PG_CONFIG" ] || die "pg_config not found at $PG_CONFIG"
    PG_BINDIR=$("$PG_CONFIG" --bindir)
    export PG_CONFIG PG_BINDIR
    export PATH="$PG_BINDIR:$PATH"
    if is_root; then
        id "$SERVER_USER" >/dev/null 2>&1 || useradd --system --create-home "$SERVER_USER"
    fi
}

# build_install: compile warning-free (-Werror) and install into $PG_CONFIG's tree.
build_install() {
    say "building pg_courier"
    make -C "$REPO" -s -j2 COURIER_WERROR=1 PG_CONFIG="$PG_CONFIG" >/dev/null
    if [ -w "$("$PG_CONFIG" --pkglibdir)" ]; then
        make -C "$REPO" -s install PG_CONFIG="$PG_CONFIG" >/dev/null
    else
        die "cannot write $("$PG_CONFIG" --pkglibdir): run as root, or set PG_CONFIG to a writable install"
    fi
}

# as_server: run a command as the unprivileged server user (ourselves when not root).
as_server() {
    if is_root; then
        runuser -u "$SERVER_USER" -- env PATH="$PATH" "$@"
    else
        "$@"
    fi
}

# make_rundir NAME: a fresh directory for clusters and logs, writable by the server user.
# Prefer the work tree (.run/NAME); fall back to /tmp when the server user cannot reach it
# (e.g. a clone under /root).
make_rundir() {
    local name=$1 dir="$REPO/.run/$1"
    mkdir -p "$REPO/.run"
    rm -rf "$dir"
    mkdir -p "$dir"
    if is_root; then
        chown "$SERVER_USER" "$dir"
        if ! runuser -u "$SERVER_USER" -- test -w "$dir"; then
            rm -rf "$dir"
            dir=$(mktemp -d "/tmp/pg_courier-$name.XXXXXX")
            chown "$SERVER_USER" "$dir"
            say "$REPO is not reachable by $SERVER_USER; using $dir"
        fi
    fi
    RUNDIR=$dir
}

# free_port: a TCP port nobody listens on (for the cluster; sinks pick their own).
free_port() {
    local p
    for p in $(shuf -i 20000-60000 -n 50); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    die "no free port"
}

# cluster_start DIR [extra postgresql.conf lines...]: initdb + start, exports PGHOST/PGPORT/PGUSER.
cluster_start() {
    local dir=$1; shift
    local port; port=$(free_port)
    as_server mkdir -p "$dir/sock"
    as_server initdb -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
    as_server tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF
port = $port
listen_addresses = ''
unix_socket_directories = '$dir/sock'
shared_preload_libraries = 'pg_courier'
max_worker_processes = 32
courier.databases = 'postgres'
# the local sink (demo, bench, tests) is on 127.0.0.1, which the endpoint policy refuses by default
courier.allow_private_endpoints = on
log_line_prefix = '%m [%p] %q%a '
EOF
    local line
    for line in "$@"; do echo "$line" | as_server tee -a "$dir/data/postgresql.conf" >/dev/null; done
    as_server bash -c "ulimit -c unlimited 2>/dev/null; exec pg_ctl -D \"$dir/data\" -l \"$dir/server.log\" -w -t 60 start" >/dev/null \
        || { cat "$dir/server.log" >&2; die "server did not start"; }
    export PGHOST="$dir/sock" PGPORT=$port PGUSER=postgres PGDATABASE=postgres
    CLUSTER_DIR=$dir
}

# cluster_stop: stop the cluster started by cluster_start (safe to call twice).
cluster_stop() {
    [ -n "${CLUSTER_DIR:-}" ] || return 0
    as_server pg_ctl -D "$CLUSTER_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    CLUSTER_DIR=
}

# sink_start LOGFILE: start the test sink, sets SINK_PID, SINK_PORT and SINK_CONTROL.
sink_start() {
    local log=$1 fifo line
    fifo=$(mktemp -u); mkfifo "$fifo"
    node "$REPO/test/sink/sink.js" >"$fifo" 2>"$log" &
    SINK_PID=$!
    exec 7<"$fifo"; rm -f "$fifo"
    SINK_PORT= SINK_CONTROL=
    while read -r -t 10 line <&7; do
        case $line in
            "SINK LISTENING "*) SINK_PORT=${line#SINK LISTENING } ;;
            "SINK CONTROL "*) SINK_CONTROL=${line#SINK CONTROL } ;;
        esac
        [ -n "$SINK_PORT" ] && [ -n "$SINK_CONTROL" ] && break
    done
    [ -n "$SINK_PORT" ] && [ -n "$SINK_CONTROL" ] || { cat "$log" >&2; die "sink did not start"; }
}

sink_stop() {
    [ -n "${SINK_PID:-}" ] || return 0
    kill "$SINK_PID" 2>/dev/null || true
    wait "$SINK_PID" 2>/dev/null || true
    SINK_PID=
}

# sink_get PATH: GET a control endpoint of the sink (JSON on stdout).
sink_get() { curl -sf "http://127.0.0.1:$SINK_CONTROL$1"; }
sink_post() { curl -sf -X POST -H 'Content-Type: application/json' -d "${2:-{\}}" "http://127.0.0.1:$SINK_CONTROL$1"; }

# json_field JSON EXPR: evaluate a JavaScript expression over parsed JSON `j` (node is there anyway).
json_field() { node -e 'const j=JSON.parse(process.argv[1]); const v=eval(process.argv[2]); console.log(typeof v==="object"?JSON.stringify(v):v)' "$1" "$2"; }

# receivers_install: the official receiver-side libraries the tests judge deliveries with
# (test/receivers: the CloudEvents SDK, the Standard Webhooks verifier), from the npm registry,
# as pinned by its package-lock.json.  Skipped when they are there already (e.g. in a chroot,
# which gets the host's copy).
receivers_install() {
    local dir=$REPO/test/receivers
    [ -d "$dir/node_modules/cloudevents" ] && [ -d "$dir/node_modules/standardwebhooks" ] && return 0
    command -v npm >/dev/null 2>&1 || install_packages npm
    say "installing the receiver libraries (npm ci in test/receivers)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
        || die "npm ci in test/receivers failed (the npm registry must be reachable)"
}

# copy_tree DEST: the work tree as git sees it (tracked and untracked, not ignored files), plus
# the receiver libraries installed by receivers_install.
copy_tree() {
    local dest=$1
    mkdir -p "$dest"
    if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$REPO" && git ls-files -co --exclude-standard -z | tar --null -cf - -T -) | tar -C "$dest" -xf -
    else
        (cd "$REPO" && tar --exclude=./.run --exclude=node_modules -cf - .) | tar -C "$dest" -xf -
    fi
    if [ -d "$REPO/test/receivers/node_modules" ]; then
        mkdir -p "$dest/test/receivers"
        (cd "$REPO/test/receivers" && tar -cf - node_modules) | tar -C "$dest/test/receivers" -xf -
    fi
}
