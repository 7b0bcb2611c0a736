#!/usr/bin/env bash
# tools/bench.sh — build, install, start a throwaway cluster with pg_courier preloaded, and run every
# bench/*.sh (or those named: tools/bench.sh outbox cache).  Benchmarks print figures and ratios
# against baselines measured in the same run; nothing passes or fails on time.
source "$(dirname "$0")/lib.sh"

setup_base
install_packages postgresql-$PG_MAJOR-pgq3      # PgQ: the producer-cost anchor of the outbox bench
build_install
make_rundir bench
trap 'sink_stop; cluster_stop' EXIT
cluster_start "$RUNDIR/cluster" \
    "shared_buffers = '512MB'" "max_wal_size = '4GB'" "checkpoint_timeout = '30min'" \
    "courier.poll_interval = '1s'" "courier.breaker_reset_ms = '1s'"
psql -q -c 'CREATE EXTENSION pg_courier'
export REPO RUNDIR

if [ $# -eq 0 ]; then set -- $(cd "$REPO/bench" && ls *.sh | sed 's/\.sh$//'); fi
echo "pg_courier benchmarks on $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ); PostgreSQL $(psql -Atc 'SHOW server_version')"
for b in "$@"; do
    echo
    echo "=== $b ==="
    bash "$REPO/bench/$b.sh"
done
