#!/usr/bin/env bash
# tools/test.sh — install what is missing, build, install, and run every test:
# pg_regress (make installcheck) against a throwaway cluster with pg_courier preloaded, then the
# TAP suite (test/t/*.pl; each test makes its own clusters and sinks).  Ends with one summary line.
#
#   tools/test.sh                 everything
#   TAP=test/t/010_delivery.pl tools/test.sh    one TAP file (and all of pg_regress)
#   REGRESS=outbox tools/test.sh  a subset of pg_regress
source "$(dirname "$0")/lib.sh"

setup_base
install_packages libipc-run-perl        # PostgreSQL::Test::Cluster needs IPC::Run
build_install
make_rundir test

# The server user runs the tests in its own copy of the tree when we are root.
if is_root; then
    SRC=$RUNDIR/src
    mkdir -p "$SRC"
    if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$REPO" && git ls-files -co --exclude-standard -z | tar --null -cf - -T -) | tar -C "$SRC" -xf -
    else
        (cd "$REPO" && tar --exclude=./.run -cf - .) | tar -C "$SRC" -xf -
    fi
    chown -R "$SERVER_USER" "$SRC"
else
    SRC=$REPO
fi

cluster_start "$RUNDIR/cluster"
trap cluster_stop EXIT

say "make installcheck (pg_regress, then TAP)"
set +e
as_server make -C "$SRC" installcheck PG_CONFIG="$PG_CONFIG" \
    ${REGRESS:+REGRESS="$REGRESS"} ${TAP:+TAP="$TAP"} 2>&1 | tee "$RUNDIR/installcheck.log"
status=${PIPESTATUS[0]}
set -e
[ -f "$SRC/regression.diffs" ] && { say "regression.diffs"; head -200 "$SRC/regression.diffs"; }

log=$RUNDIR/installcheck.log
r_ok=$(grep -cE '^(ok |test |     )?.*\.\.\. ok|^ok [0-9]+ +[-+] ' "$log" || true)
r_bad=$(grep -cE '\.\.\. FAILED|^not ok [0-9]+ +[-+] ' "$log" || true)
t_all=$(sed -nE 's/^Files=[0-9]+, Tests=([0-9]+),.*/\1/p' "$log" | tail -1)
t_bad=$(sed -nE 's/.*Failed ([0-9]+)\/[0-9]+ subtests.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
t_files_bad=$(grep -cE 'Wstat: [1-9]|No subtests run|Bad plan' "$log" || true)
t_all=${t_all:-0}; t_bad=${t_bad:-0}
passed=$((r_ok + t_all - t_bad))
failed=$((r_bad + t_bad + t_files_bad))
[ "$status" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1
echo
echo "pg_regress: $r_ok passed, $r_bad failed; TAP: $((t_all - t_bad)) passed, $t_bad failed"
echo "summary: $passed passed, $failed failed"
exit $status
