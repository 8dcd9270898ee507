#!/usr/bin/env bash
# Builds enroot and Pyxis from their release sources and installs them, so that srun on the local
# cluster takes --container-image, --container-mounts and the other Pyxis options.
#
# Usage (as root): slurm/containers/build_pyxis.sh
#
# Sources: the release tarballs in third_party/containers/ (see its README), checked against the
# sha256 sums below. Builds happen under build/containers/src/; enroot keeps its image cache under
# build/containers/enroot/ and the containers it unpacks on each node's own disk. Installed: enroot in /usr/local (config in
# /etc/enroot), the Pyxis plugin in /usr/local/lib/slurm, enabled in /etc/slurm/plugstack.conf.d/.
# srun and each job step load that plugin stack afresh, so running daemons need no restart.
# A second run rebuilds nothing and installs nothing unless something changed.
set -euo pipefail
cd "$(dirname "$0")/../.."

ENROOT_VERSION=4.1.2
ENROOT_SHA256=65d7098241b5a86faf48ba29bbca1462e19682bf49d6b89c8a2d934f0196b4da
PYXIS_VERSION=0.24.0
PYXIS_SHA256=ede95ba2d48542881f137d9c07c417c5c765994710a74c593a21b3328f311f5d
SOURCES_DIR=$PWD/third_party/containers
WORK_DIR=$PWD/build/containers
PREFIX=/usr/local
SLURM_CONF_DIR=/etc/slurm                   # where Debian's SLURM reads plugstack.conf
ENROOT_CONF_DIR=/etc/enroot
PYXIS_PLUGIN=$PREFIX/lib/slurm/spank_pyxis.so
PYXIS_RUNTIME_DIR=/run/pyxis               # Pyxis' default runtime_path
# Build tools, then what enroot runs (its Debian package's Depends, and squashfuse and fuse-overlayfs
# to start a container straight from a squashfs file).
APT_PACKAGES=(make gcc libc6-dev linux-libc-dev libbsd-dev makeself libslurm-dev
              bash curl gawk jq parallel passwd squashfs-tools zstd bsdextrautils pigz
              squashfuse fuse-overlayfs)

die() { echo "build_pyxis: $*" >&2; exit 1; }

install_packages() {
    local need=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
    ((${#need[@]})) || return 0
    echo "build_pyxis: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

# Pyxis must be built against the spank.h of the SLURM release that loads it, or SLURM refuses it
# ("Incompatible plugin version").
check_slurm_version() {
    local daemon headers
    command -v slurmd >/dev/null || die "no slurmd; start the cluster first: slurm/local_cluster.sh start"
    daemon=$(slurmd -V | awk '{print $2}')
    headers=$(dpkg-query -W -f '${Version}' libslurm-dev | cut -d- -f1)
    [[ $daemon == "$headers" ]] \
        || die "slurmd is $daemon but libslurm-dev is $headers; install libslurm-dev=$daemon and rerun"
}

# unpack NAME VERSION SHA256: prints the source folder, unpacked once per tarball checksum.
unpack() {
    local tarball=$SOURCES_DIR/$1-$2.tar.gz dir=$WORK_DIR/src/$1-$2
    [[ -f $tarball ]] || die "missing $tarball"
    echo "$3  $tarball" | sha256sum -c --quiet - >&2 || die "$tarball does not match its pinned sha256"
    if [[ $(cat "$dir/.unpacked-from" 2>/dev/null) != "$3" ]]; then
        rm -rf "$dir"
        mkdir -p "$WORK_DIR/src"
        tar -xzf "$tarball" -C "$WORK_DIR/src"
        echo "$3" >"$dir/.unpacked-from"
    fi
    echo "$dir"
}

# The release tarball lacks enroot's git submodules (musl, makeself, kernel headers): its helpers are
# linked against glibc instead (FORCE_GLIBC), with libbsd's strlcpy that glibc 2.36 lacks; Debian's
# makeself and kernel headers stand in for the other two.
build_enroot() {
    local src=$1
    mkdir -p "$src/deps/dist/makeself/bin" "$src/deps/dist/linux/include"
    install -m 755 /usr/bin/makeself "$src/deps/dist/makeself/bin/enroot-makeself"
    touch "$src/deps/makeself/.stamp" "$src/deps/linux-headers/.stamp"
    # The same prefix for build and install: the enroot script has the config path written into it.
    CPPFLAGS="-DLIBBSD_OVERLAY -isystem /usr/include/bsd" \
        make -C "$src" -s -j"$(nproc)" FORCE_GLIBC=y prefix="$PREFIX" sysconfdir=/etc \
        LDLIBS="-l:libbsd.a -l:libbsd.so" all >"$WORK_DIR/enroot-build.log" 2>&1 \
        || { tail -n 20 "$WORK_DIR/enroot-build.log" >&2; die "enroot build failed; log: $WORK_DIR/enroot-build.log"; }
    if [[ $(enroot version 2>/dev/null) != "$ENROOT_VERSION" ]] || ! cmp -s "$src/bin/enroot-mount" "$PREFIX/bin/enroot-mount"; then
        make -C "$src" -s FORCE_GLIBC=y prefix="$PREFIX" sysconfdir=/etc \
            LDLIBS="-l:libbsd.a -l:libbsd.so" install >>"$WORK_DIR/enroot-build.log" 2>&1 \
            || die "enroot install failed; log: $WORK_DIR/enroot-build.log"
        echo "build_pyxis: installed enroot $ENROOT_VERSION in $PREFIX/bin"
    fi
}

# enroot's image cache goes under this checkout's build/ rather than root's home; the containers
# it unpacks and their running state on each node's own disk (`slurm/local_cluster.sh node-disk`:
# the same path, a different folder on each node). A folder per user id, in parents anyone may
# write to (like /tmp), since jobs run as their submitter.
configure_enroot() {
    local state=$WORK_DIR/enroot node_disk
    node_disk=$(slurm/local_cluster.sh node-disk)
    mkdir -p "$state/cache"
    chmod 1777 "$state/cache"
    mkdir -p "$ENROOT_CONF_DIR/enroot.conf.d"
    write_if_changed "$ENROOT_CONF_DIR/enroot.conf.d/local-cluster.conf" <<EOF
# Written by slurm/containers/build_pyxis.sh: the image cache in that checkout's build/, containers on each node's disk.
ENROOT_RUNTIME_PATH $(printf %q "$node_disk")/enroot-runtime-\${UID}
ENROOT_CACHE_PATH $(printf %q "$state/cache")/\${UID}
ENROOT_DATA_PATH $(printf %q "$node_disk")/enroot-data-\${UID}
EOF
    # SLURM runs the cluster's TaskProlog inside the container, after Pyxis has entered it: without
    # the SLURM config folder in every container, each container step fails before its command.
    mkdir -p "$ENROOT_CONF_DIR/mounts.d"
    write_if_changed "$ENROOT_CONF_DIR/mounts.d/50-local-cluster.fstab" <<EOF
# Written by slurm/containers/build_pyxis.sh.
$SLURM_CONF_DIR $SLURM_CONF_DIR none x-create=dir,bind,ro,nosuid,nodev,private 0 -1
EOF
}

# use_squashfuse: a squashfs image is mounted where the step runs, so the step starts in under a
# second instead of after unpacking 1.7 GB (~12 s for the test image) into ENROOT_DATA_PATH. Files
# read through FUSE are slower (TensorFlow imports in ~2x the time): a job with many steps can name
# its container (--container-name), which Pyxis then unpacks once and reuses.
# `optional`, not Pyxis' usual `required`: a plugin SLURM refuses then breaks container jobs only,
# not every srun of the other tests sharing this cluster.
install_pyxis() {
    local src=$1
    make -C "$src" -s -j"$(nproc)" >"$WORK_DIR/pyxis-build.log" 2>&1 \
        || { tail -n 20 "$WORK_DIR/pyxis-build.log" >&2; die "pyxis build failed; log: $WORK_DIR/pyxis-build.log"; }
    if ! cmp -s "$src/spank_pyxis.so" "$PYXIS_PLUGIN"; then
        install -D -m 644 "$src/spank_pyxis.so" "$PYXIS_PLUGIN"
        echo "build_pyxis: installed $PYXIS_PLUGIN ($PYXIS_VERSION)"
    fi
    # A slurmd started before this install never ran Pyxis' slurmd part, whose only task with the
    # default container_scope=global is to make this folder; steps need it for named containers.
    mkdir -p -m 755 "$PYXIS_RUNTIME_DIR"
    mkdir -p "$SLURM_CONF_DIR/plugstack.conf.d"
    write_if_changed "$SLURM_CONF_DIR/plugstack.conf.d/pyxis.conf" <<EOF
# Written by slurm/containers/build_pyxis.sh.
optional $PYXIS_PLUGIN use_squashfuse=true
EOF
    # Debian's slurm-wlm ships this include; a hand-made SLURM install may not.
    local include="include $SLURM_CONF_DIR/plugstack.conf.d/*.conf"
    grep -qxF "$include" "$SLURM_CONF_DIR/plugstack.conf" 2>/dev/null \
        || echo "$include" >>"$SLURM_CONF_DIR/plugstack.conf"
}

# write_if_changed FILE: writes stdin to FILE unless FILE already holds exactly that.
write_if_changed() {
    local text
    text=$(cat)
    [[ -f $1 && $(cat "$1") == "$text" ]] && return 0
    printf '%s\n' "$text" >"$1"
    echo "build_pyxis: wrote $1"
}

main() {
    local start=$SECONDS enroot_src pyxis_src
    [[ $EUID -eq 0 ]] || die "run as root (it installs into $PREFIX and /etc)"
    mkdir -p "$WORK_DIR"
    install_packages
    check_slurm_version
    enroot_src=$(unpack enroot "$ENROOT_VERSION" "$ENROOT_SHA256")
    pyxis_src=$(unpack pyxis "$PYXIS_VERSION" "$PYXIS_SHA256")
    build_enroot "$enroot_src"
    configure_enroot
    install_pyxis "$pyxis_src"
    srun --help 2>&1 | grep -q -- '--container-image' \
        || die "srun has no --container-image; SLURM did not load $PYXIS_PLUGIN (see srun --help)"
    echo "build_pyxis: enroot $ENROOT_VERSION and pyxis $PYXIS_VERSION ready in $((SECONDS - start)) s"
}

main
