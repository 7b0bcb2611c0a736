# tools/chroot.sh — Debian chroots for testing PostgreSQL majors the host does not ship.
# Sourced by tools/test.sh after lib.sh; root only.
#
# A major runs on the host when the host's Debian release ships it (Debian 12: 15).  Otherwise it
# runs in a debootstrap chroot of the Debian suite that ships it (17: trixie, 18: sid), made here:
# `debootstrap --variant=minbase`, then the server, its headers, libcurl, IPC::Run and Node.js.
# The prepared chroot is kept as a tarball under .run/chroots/ (ignored by git), so a second run on
# the same machine unpacks it instead of downloading again.  Each run unpacks a fresh copy.
#
# Packages come from the mirror the host's apt is configured with (no host name is written here).

CHROOT_CACHE=${CHROOT_CACHE:-$REPO/.run/chroots}
CHROOT_MOUNTS=()

# suite_for_major MAJOR: the Debian suite whose postgresql-MAJOR we test against (empty: none).
suite_for_major() {
    case $1 in
        17) echo trixie ;;
        18) echo sid ;;
        *) echo "" ;;
    esac
}

# host_has_major MAJOR: true when the host's own Debian release ships postgresql-MAJOR (or it is
# installed already).
host_has_major() {
    [ -x "/usr/lib/postgresql/$1/bin/pg_config" ] && return 0
    local codename
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    case $codename:$1 in
        bookworm:15 | trixie:17 | forky:18 | sid:18) return 0 ;;
    esac
    return 1
}

# debian_mirror: the host's configured Debian archive URI (deb822 or one-line format).
debian_mirror() {
    local uri
    uri=${COURIER_DEBIAN_MIRROR:-}
    [ -n "$uri" ] && { echo "$uri"; return; }
    uri=$(sed -nE 's/^URIs:[[:space:]]*([^[:space:]]+\/debian)\/?$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
    [ -n "$uri" ] || uri=$(sed -nE 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+\/debian)\/?[[:space:]].*/\2/p' \
                             /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -1)
    [ -n "$uri" ] || die "cannot find the host's Debian mirror in /etc/apt; set COURIER_DEBIAN_MIRROR"
    echo "$uri"
}

# chroot_mount DIR: what postgresql-common's scripts and the server need (/proc, /sys, /dev, DNS).
# Bind mounts are made slaves so that unmounting them never reaches the host's own mounts.
chroot_mount() {
    local dir=$1 m
    for m in proc sys dev; do
        mountpoint -q "$dir/$m" && continue
        case $m in
            proc) mount -t proc proc "$dir/proc" ;;
            *) mount --rbind "/$m" "$dir/$m" && mount --make-rslave "$dir/$m" ;;
        esac
        CHROOT_MOUNTS+=("$dir/$m")
    done
    cp /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null || true
}

# chroot_umount_all: undo every chroot_mount (safe to call twice; used from traps).
chroot_umount_all() {
    local m
    for m in "${CHROOT_MOUNTS[@]}"; do
        umount -R "$m" 2>/dev/null || umount -lR "$m" 2>/dev/null || true
    done
    CHROOT_MOUNTS=()
}

# chroot_build SUITE MAJOR DIR: debootstrap and install the packages; non-zero means the package
# registry failed (download, signature, dependency resolution), not our code.
chroot_build() {
    local suite=$1 major=$2 dir=$3 mirror
    mirror=$(debian_mirror)
    install_packages debootstrap
    rm -rf "$dir"; mkdir -p "$dir"
    debootstrap --variant=minbase "$suite" "$dir" "$mirror" >"$dir.debootstrap.log" 2>&1 || return 1
    # sid's Release may be past its Valid-Until against this machine's clock
    echo 'Acquire::Check-Valid-Until "false";' >"$dir/etc/apt/apt.conf.d/99courier-no-valid-until"
    # no services start inside the chroot, and no packaged cluster is made: tests make their own
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"; chmod +x "$dir/usr/sbin/policy-rc.d"
    mkdir -p "$dir/etc/postgresql-common"
    echo 'create_main_cluster = false' >"$dir/etc/postgresql-common/createcluster.conf"
    chroot_mount "$dir"
    chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends \
               postgresql-$major postgresql-server-dev-$major libcurl4-openssl-dev libipc-run-perl \
               nodejs make gcc libc6-dev ca-certificates curl procps" >>"$dir.debootstrap.log" 2>&1
    local rc=$?
    chroot_umount_all
    apt-get clean >/dev/null 2>&1 || true
    rm -rf "$dir/var/cache/apt/archives/"*.deb
    return $rc
}

# chroot_prepare MAJOR: unpack (or first build) the chroot for MAJOR; prints its directory.
# Exit status 2 means the package registry failed.
chroot_prepare() {
    local major=$1 suite dir tarball
    suite=$(suite_for_major "$major")
    [ -n "$suite" ] || die "no Debian suite ships PostgreSQL $major (supported here: 15 on the host, 17, 18)"
    mkdir -p "$CHROOT_CACHE"
    dir=$CHROOT_CACHE/$suite-pg$major
    tarball=$dir.tar
    if [ ! -s "$tarball" ]; then
        say "PostgreSQL $major: building a Debian $suite chroot (cached as ${tarball#$REPO/})"
        if ! chroot_build "$suite" "$major" "$dir"; then
            tail -20 "$dir.debootstrap.log" >&2
            return 2
        fi
        tar -cpf "$tarball.tmp" -C "$dir" . && mv "$tarball.tmp" "$tarball"
    else
        say "PostgreSQL $major: unpacking the cached Debian $suite chroot"
        rm -rf "$dir"; mkdir -p "$dir"
        tar -xpf "$tarball" -C "$dir"
    fi
    echo "$dir"
}

# chroot_run_tests DIR MAJOR LOG: copy the tree into the chroot and run tools/test.sh there.
chroot_run_tests() {
    local dir=$1 major=$2 log=$3
    rm -rf "$dir/src"
    receivers_install               # the chroot has no npm: it gets the host's copy
    copy_tree "$dir/src"
    chroot_mount "$dir"
    local rc
    set +e +o pipefail
    chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        PG_MAJOR="$major" ${REGRESS:+REGRESS="$REGRESS"} ${TAP:+TAP="$TAP"} \
        bash /src/tools/test.sh 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e -o pipefail
    chroot_umount_all
    return "$rc"
}
