#!/usr/bin/env bash
# An arm64 Debian root with the serving runtime, run under qemu-user emulation: where
# `make test-cross-cpu` embeds as an ARM machine would. Needs root and apt (about 6 minutes:
# debootstrap ~5, the wheels and the emulated pip ~1). Usage: arm64_root.sh DIR
set -euo pipefail
root=${1:?usage: arm64_root.sh DIR}
here=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
apt-get install -y -q qemu-user-static binfmt-support debootstrap >/dev/null
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64
if [ ! -x "$root/usr/bin/python3" ]; then
  debootstrap --variant=minbase --arch=arm64 --include=python3,python3-venv bookworm "$root"
fi
# the same onnxruntime/tokenizers/numpy versions as this checkout's venv, built for aarch64
pins=$("$py" -m pip list --format=freeze 2>/dev/null | grep -iE '^(onnxruntime|tokenizers|numpy)==')
mkdir -p "$root/wheels"
"$py" -m pip download -q --only-binary=:all: --platform manylinux_2_28_aarch64 \
  --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp \
  -d "$root/wheels" $pins
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
# unmounted again on the way out: a `rm -rf` of the root must not walk into /proc
trap 'umount "$root/proc"' EXIT
# no /sys inside: onnxruntime's cpuinfo would read the host's x86 topology there and crash
chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin /bin/sh -c "test -x /opt/rt/bin/python || python3 -m venv /opt/rt; \
  /opt/rt/bin/pip install -q --no-index --find-links /wheels $(echo $pins)"
