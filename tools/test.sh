#!/usr/bin/env bash
# tools/test.sh — install what is missing, build, install, and run every test:
# pg_regress (make installcheck) against a throwaway cluster with pg_courier preloaded, then the
# TAP suite (test/t/*.pl; each test makes its own clusters and sinks).  Ends with one summary line.
#
#   tools/test.sh                               everything, on the host's PostgreSQL (15 on Debian 12)
#   PG_MAJORS="15 17 18" tools/test.sh          everything on each major: 15 on the host, 17 and 18
#                                               in Debian chroots made here (tools/chroot.sh)
#   PG_MAJORS=17 tools/test.sh                  one major
#   TAP=test/t/010_outbox_delivery.pl tools/test.sh   one TAP file (and all of pg_regress)
#   REGRESS=outbox tools/test.sh                a subset of pg_regress
source "$(dirname "$0")/lib.sh"

# run_suite: build, install and test against $PG_MAJOR on this machine; prints the summary line.
run_suite() {
    setup_base
    install_packages libipc-run-perl        # PostgreSQL::Test::Cluster needs IPC::Run
    receivers_install
    build_install
    make_rundir test

    # The server user runs the tests in its own copy of the tree when we are root.
    if is_root; then
        SRC=$RUNDIR/src
        copy_tree "$SRC"
        chown -R "$SERVER_USER" "$SRC"
    else
        SRC=$REPO
    fi

    cluster_start "$RUNDIR/cluster"
    trap cluster_stop EXIT

    say "PostgreSQL $PG_MAJOR: make installcheck (pg_regress, then TAP)"
    set +e
    as_server make -C "$SRC" installcheck PG_CONFIG="$PG_CONFIG" \
        ${REGRESS:+REGRESS="$REGRESS"} ${TAP:+TAP="$TAP"} 2>&1 | tee "$RUNDIR/installcheck.log"
    local status=${PIPESTATUS[0]}
    set -e
    [ -f "$SRC/regression.diffs" ] && { say "regression.diffs"; head -200 "$SRC/regression.diffs"; }

    local log=$RUNDIR/installcheck.log r_ok r_bad t_all t_bad t_files_bad passed failed
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
    echo "PostgreSQL $PG_MAJOR: pg_regress: $r_ok passed, $r_bad failed; TAP: $((t_all - t_bad)) passed, $t_bad failed"
    echo "summary: $passed passed, $failed failed"
    return "$status"
}

# Without PG_MAJORS: the one major on this machine (also what runs inside a chroot).
if [ -z "${PG_MAJORS:-}" ]; then
    run_suite
    exit $?
fi

# PG_MAJORS: each major in its own run (on the host when its Debian release ships it, otherwise in
# a chroot), one summary at the end.
is_root || die "testing other PostgreSQL majors needs root (debootstrap chroots)"
source "$REPO/tools/chroot.sh"
trap chroot_umount_all EXIT
mkdir -p "$REPO/.run"
declare -A RESULT
total_pass=0 total_fail=0 skipped=0 overall=0
for m in $PG_MAJORS; do
    log=$REPO/.run/test-pg$m.log
    if host_has_major "$m"; then
        say "PostgreSQL $m: on the host"
        set +e +o pipefail
        PG_MAJORS= PG_MAJOR=$m PG_CONFIG=/usr/lib/postgresql/$m/bin/pg_config bash "$REPO/tools/test.sh" 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
        set -e -o pipefail
    else
        prc=0
        dir=$(chroot_prepare "$m") || prc=$?
        if [ "$prc" -eq 2 ]; then
            printf '\n\033[1;31m!!! PostgreSQL %s NOT TESTED: the package registry failed while preparing its Debian chroot (see above) !!!\033[0m\n\n' "$m" >&2
            RESULT[$m]="NOT TESTED (package registry failed)"
            skipped=$((skipped + 1))
            continue
        fi
        [ "$prc" -eq 0 ] || die "PostgreSQL $m: could not prepare the chroot"
        say "PostgreSQL $m: in $dir"
        rc=0
        chroot_run_tests "$dir" "$m" "$log" || rc=$?
    fi
    line=$(grep -E '^summary: [0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
    p=$(echo "$line" | sed -nE 's/^summary: ([0-9]+) passed.*/\1/p'); p=${p:-0}
    f=$(echo "$line" | sed -nE 's/.* ([0-9]+) failed.*/\1/p'); f=${f:-0}
    [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && f=1      # a build failure prints no summary
    [ "$rc" -ne 0 ] && overall=1
    RESULT[$m]="$p passed, $f failed"
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
done

echo
for m in $PG_MAJORS; do echo "PostgreSQL $m: ${RESULT[$m]}"; done
if [ "$skipped" -gt 0 ]; then
    echo "summary: $total_pass passed, $total_fail failed, $skipped skipped"
else
    echo "summary: $total_pass passed, $total_fail failed"
fi
exit $overall
