#!/usr/bin/env bash
# Builds build/containers/test-image.sqsh: a minimal Debian bookworm with Python, the trainer's
# packages (setup.cfg's install_requires and [train]) and the host's project Horovod build with the
# Open MPI libraries it links, which srun --container-image runs on the local cluster without
# reaching any registry. A second run with the same inputs does nothing.
#
# Usage (as root): slurm/containers/build_image.sh
#
# Inside the image, /opt/launch-test-image names the image and the inputs it was built from.
set -euo pipefail
SCRIPT=$(realpath "$0")
cd "$(dirname "$SCRIPT")/../.."

SUITE=bookworm                       # its python3 is 3.11, like the host's: the host's pip installs for it
WORK_DIR=$PWD/build/containers
ROOTFS=$WORK_DIR/rootfs
DEB_CACHE=$WORK_DIR/debs             # debootstrap's downloads, kept for the next build
IMAGE=$WORK_DIR/test-image.sqsh
INPUTS_FILE=$IMAGE.inputs            # what the image was built from; equal inputs skip the build
MARKER=/opt/launch-test-image
# lz4: Pyxis unpacks the whole image (enroot create) for every job on every node, and that is
# what the image's compression costs the tests. Measured on two cores for the ~1.8 GB rootfs:
# unpacking 3.5 CPU-s from zstd level 3 (490 MiB), 2.3 from lz4 (700 MiB), where most is writing
# the files; packing 4 s with lz4 against 20 s with zstd.
SQUASH_OPTIONS=(-comp lz4 -noappend -quiet -no-progress)

die() { echo "build_image: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root (debootstrap needs it)"

# The trainer's requirements from setup.cfg, one a line; with `installed`, the host's version of
# each instead. The image is for CPU test nodes: TensorFlow comes as tensorflow-cpu (the same
# release without CUDA kernels, a third smaller), and tf-keras, which names `tensorflow`, is
# installed without its dependencies below.
requirements() {
    python3 - "${1:-}" <<'EOF'
import configparser, importlib.metadata, re, sys
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
lines = cfg["options"]["install_requires"].splitlines() + cfg["options.extras_require"]["train"].splitlines()
for line in (l.strip() for l in lines):
    if not line or line.startswith("#"):
        continue
    if sys.argv[1] == "installed":
        name = re.match(r"[A-Za-z0-9_.-]+", line).group()
        try:
            print(name, importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            print(name, "absent")
    else:
        print("tensorflow-cpu" + line[len("tensorflow"):] if line.startswith("tensorflow==") else line)
EOF
}

# The host's installed versions pin the image's, so a job sees the same stack in and out of the image;
# the host's TensorFlow release pins tensorflow-cpu.
host_pins() {
    local pins
    pins=$(python3 -m pip freeze --exclude-editable | grep -E '^[A-Za-z0-9_.-]+==' || true)
    printf '%s\n' "$pins"
    sed -n 's/^tensorflow==/tensorflow-cpu==/p' <<<"$pins"
}

# NAME==VERSION lines with each name as pip writes it in messages (lower case, "-" between words).
canonical() {
    awk -F'==' '{ name = tolower($1); gsub(/[-_.]+/, "-", name); print name "==" $2 }'
}

# pip install into $1 of the rest, constrained by $WORK_DIR/pins.txt. A host package whose version
# the package index does not offer (installed from elsewhere) loses its pin, said on stderr, and the
# image gets the index's release of it; any other failure is pip's.
install_pinned() {
    local target=$1 tries unpinned
    shift
    for tries in 1 2 3 4 5 6 7 8; do
        python3 -m pip install --target "$target" --no-warn-script-location --root-user-action=ignore \
            -c "$WORK_DIR/pins.txt" "$@" >"$WORK_DIR/pip-try.log" 2>&1 && { cat "$WORK_DIR/pip-try.log"; return 0; }
        cat "$WORK_DIR/pip-try.log"
        unpinned=$(sed -n 's/.*The user requested (constraint) \([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p' "$WORK_DIR/pip-try.log" \
            | head -n 1 | canonical)
        [[ -n $unpinned ]] && grep -qxF "$unpinned" "$WORK_DIR/pins.txt" || return 1
        echo "build_image: the host's $unpinned is not in the package index; the image gets the index's" >&2
        grep -vxF "$unpinned" "$WORK_DIR/pins.txt" >"$WORK_DIR/pins.next" && mv "$WORK_DIR/pins.next" "$WORK_DIR/pins.txt"
    done
    return 1
}

# The host's Horovod, as training/horovod_build/build.sh installed it (a machine that already had it
# keeps no wheel, so the installed files are what is copied). `inputs`: its version and the hash of
# its RECORD, which lists every file's hash, so a rebuild of Horovod rebuilds the image; `files`: its
# dist-info and package folders; `requires`: what it needs at run time (cloudpickle, psutil, ...).
horovod() {
    python3 - "$1" <<'EOF'
import hashlib, importlib.metadata, sys
try:
    dist = importlib.metadata.distribution("horovod")
except importlib.metadata.PackageNotFoundError:
    sys.exit("build_image: the host's python3 has no Horovod; build it first: training/horovod_build/build.sh")
record = next(f for f in dist.files if f.name == "RECORD").locate()
if sys.argv[1] == "inputs":
    print("horovod", dist.version, "record", hashlib.sha256(record.read_bytes()).hexdigest())
elif sys.argv[1] == "files":
    print(record.parent)
    for name in dist.read_text("top_level.txt").split():
        print(dist.locate_file(name))
else:
    from packaging.requirements import Requirement  # one of Horovod's own requirements
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            print(req)
EOF
}

inputs() {
    echo "suite $SUITE"
    echo "squash ${SQUASH_OPTIONS[*]}"
    echo "script $(sha256sum "$SCRIPT" | cut -d' ' -f1)"
    requirements | sed 's/^/requirement /'
    requirements installed | sed 's/^/host /'
    horovod inputs
}

install_tools() {
    local need=() pkg
    for pkg in debootstrap squashfs-tools; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
    ((${#need[@]})) || return 0
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

# Unmounts whatever an interrupted debootstrap left mounted under the rootfs, deepest first.
unmount_rootfs() {
    local mnt
    [[ -d $ROOTFS ]] || return 0
    for mnt in $(awk -v r="$ROOTFS" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$mnt"
    done
}

build_rootfs() {
    local start=$1 target py_host py_image files check
    unmount_rootfs
    rm -rf "$ROOTFS"
    mkdir -p "$DEB_CACHE"
    # The rootfs is thrown away if the build stops half-way, so dpkg's fsync per file buys nothing.
    # libopenmpi3: the Open MPI runtime Horovod's library links (libmpi.so.40), bookworm's like the host's.
    DPKG_FORCE=unsafe-io debootstrap --variant=minbase --include=python3,libopenmpi3 --cache-dir="$DEB_CACHE" \
        "$SUITE" "$ROOTFS" >"$WORK_DIR/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK_DIR/debootstrap.log" >&2; die "debootstrap failed; log: $WORK_DIR/debootstrap.log"; }
    py_host=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    py_image=$(chroot "$ROOTFS" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [[ $py_host == "$py_image" ]] \
        || die "the host's Python is $py_host but $SUITE's is $py_image; run this with a python3 $py_image"
    # dist-packages under /usr/local is on the sys.path of Debian's python3 and belongs to no package.
    target=$ROOTFS/usr/local/lib/python$py_image/dist-packages
    echo "build_image: $SUITE with python$py_image after $((SECONDS - start)) s; installing packages"
    host_pins | canonical >"$WORK_DIR/pins.txt"
    {
        install_pinned "$target" $(requirements | grep -v '^tf-keras') $(horovod requires) \
        && python3 -m pip install --target "$target" --no-deps --root-user-action=ignore \
            $(requirements | grep '^tf-keras')
    } >"$WORK_DIR/pip.log" 2>&1 || { tail -n 20 "$WORK_DIR/pip.log" >&2; die "pip failed; log: $WORK_DIR/pip.log"; }
    grep "^build_image: the host's" "$WORK_DIR/pip.log" >&2 || true  # pins the index did not offer
    # Console scripts carry the host's interpreter path, and TensorFlow's C++ headers only serve
    # builds of extensions (Horovod), which happen on the host: neither is used inside the image.
    rm -rf "$target/bin" "$target/tensorflow/include"
    # Horovod from the host, its compiled .pyc too (bytecode is the same in every Python 3.11.x). Its
    # library carries debug information: most of its 54 MB, which no job reads.
    mapfile -t files < <(horovod files)
    cp -a "${files[@]}" "$target/"
    find "$target/horovod" -name '*.so' -exec strip --strip-debug {} +
    rm -rf "$ROOTFS"/usr/share/{doc,man,info,locale} "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/*
    check=$(TF_USE_LEGACY_KERAS=1 chroot "$ROOTFS" python3 -c 'import horovod.tensorflow.keras' 2>&1) \
        || die "the image cannot import horovod.tensorflow.keras: $(printf '%s\n' "$check" | grep . | tail -n 1)"
    inputs >"$ROOTFS$MARKER"
}

main() {
    local start
    start=$SECONDS
    horovod inputs >/dev/null   # no Horovod on the host: one line, before any work
    mkdir -p "$WORK_DIR"
    if [[ -s $IMAGE && -s $INPUTS_FILE ]] && cmp -s "$INPUTS_FILE" <(inputs); then
        echo "build_image: $IMAGE is up to date"
        return
    fi
    install_tools
    build_rootfs "$start"
    echo "build_image: rootfs ready after $((SECONDS - start)) s; packing $IMAGE"
    # Steps still running on the old image keep reading it: mv replaces the name, not the file.
    rm -f "$INPUTS_FILE" "$IMAGE.part"
    mksquashfs "$ROOTFS" "$IMAGE.part" "${SQUASH_OPTIONS[@]}"
    mv "$IMAGE.part" "$IMAGE"
    cp "$ROOTFS$MARKER" "$INPUTS_FILE"
    rm -rf "$ROOTFS"   # ~1.5 GB; the .debs in $DEB_CACHE make the next build quicker
    echo "build_image: $IMAGE, $(du -m "$IMAGE" | cut -f1) MiB, built in $((SECONDS - start)) s"
}

main
