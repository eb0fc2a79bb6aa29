#!/usr/bin/env bash
# Prepares a Debian host (run as root) to build and test the images with podman where no image
# registry is reachable: installs podman and runc (and qemu's user emulation for arm64), configures
# podman, and makes the base image `debian:bookworm-slim` from Debian's own packages with
# debootstrap. Idempotent: what exists is skipped, and the debootstrap tarballs are kept in
# $CACHE so a second run imports them without downloading anything.
#
#   deploy/container/host-setup.sh            # amd64 and arm64
#   ARCHES=amd64 deploy/container/host-setup.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

ARCHES=${ARCHES:-"amd64 arm64"}
CACHE=${CACHE:-.image-cache}
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# The name the Dockerfile starts from (docker.io's official image); arm64's copy gets an arch
# suffix, because one local tag names one image (image.mk passes it as the BASE build argument).
BASE=docker.io/library/debian:bookworm-slim

log() { printf '[host-setup] %s\n' "$*"; }

need=(podman runc debootstrap)
[[ " $ARCHES " == *" arm64 "* ]] && need+=(qemu-user-static binfmt-support)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
fi

# crun refuses this kind of host ("cgroups in hybrid mode not supported"), and setting the
# default ulimits is refused inside its containers: runc, and no default ulimits.
CONF=/etc/containers/containers.conf
if ! grep -q '^runtime = "runc"' "$CONF" 2>/dev/null; then
    log "writing $CONF"
    [[ -s $CONF ]] && cp "$CONF" "$CONF.before-edge-embed"
    mkdir -p "$(dirname "$CONF")"
    printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' > "$CONF"
fi

if [[ " $ARCHES " == *" arm64 "* ]]; then
    if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    update-binfmts --enable qemu-aarch64 2>/dev/null || true
    grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || { echo "qemu-aarch64 is not registered with binfmt_misc" >&2; exit 1; }
fi

base_tag() { if [[ $1 == amd64 ]]; then echo "$BASE"; else echo "$BASE-$1"; fi; }

mkdir -p "$CACHE"
for arch in $ARCHES; do
    tag=$(base_tag "$arch")
    if podman image exists "$tag"; then log "$tag exists"; continue; fi
    tarball=$CACHE/debian-$SUITE-minbase-$arch.tar
    if [[ ! -s $tarball ]]; then
        root=$(mktemp -d "$CACHE/root-$arch.XXXX")
        log "debootstrap $SUITE $arch (amd64 ~70 s, arm64 under emulation ~5 min)"
        debootstrap --variant=minbase --arch="$arch" "$SUITE" "$root" "$MIRROR" >/dev/null
        # debootstrap unmounts what it mounted; should a run have left one, neither the tarball
        # nor the clean-up below may descend into the host's /proc or /sys.
        for m in proc sys dev/pts dev; do
            if mountpoint -q "$root/$m"; then umount -l "$root/$m"; fi
        done
        # What Docker's debian:*-slim leaves out: downloaded packages, apt lists, docs, man pages
        # and translations.
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
            "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
            "$root"/usr/share/locale/*
        tar -C "$root" -cf "$tarball.part" .
        mv "$tarball.part" "$tarball"
        rm -rf "$root"
    fi
    log "podman import $tarball -> $tag"
    podman import --arch "$arch" --change 'CMD ["bash"]' "$tarball" "$tag" >/dev/null
done
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -F "${BASE%%:*}" || true
