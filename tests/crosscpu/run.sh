#!/usr/bin/env bash
# The same int8 bundle on three CPUs: this machine, an AVX2-only x86 (qemu-x86_64 -cpu Haswell:
# no AVX-512, no VNNI, so onnxruntime takes its vpmaddubsw kernels) and arm64 (an emulated root
# from arm64_root.sh). Embeds a few short texts on each and compares every pair. Exit status:
# 1 unless the two x86 machines agree to crosscpu.MIN_AGREEMENT (saturation-free bundles give
# identical vectors there); arm64's figure is reported and, with RECORD=1, written into the
# bundle's manifest beside them. Usage: run.sh BUNDLE ARM64_ROOT OUTDIR
set -euo pipefail
bundle=$(realpath "${1:?usage: run.sh BUNDLE ARM64_ROOT OUTDIR}")
root=$(realpath "${2:?arm64 root}")
out=$(realpath -m "${3:?output folder}")
here=$(cd "$(dirname "$0")/../.." && pwd)
py=$here/.venv/bin/python
mkdir -p "$out"
name=$(basename "$bundle")
"$py" -m edge_embed.quantize.crosscpu embed "$bundle" "$out/$name.native.npy"
# Haswell: AVX2 and FMA, no AVX-512 (TCG warns about a few flags it lacks; harmless here)
qemu-x86_64-static -cpu Haswell "$py" -m edge_embed.quantize.crosscpu embed "$bundle" \
  "$out/$name.avx2.npy" 2> >(grep -v "TCG doesn't support" >&2)
# The root has the runtime's packages but not ours: the package as installed, as links into the
# checkout (relative, so they resolve where it is mounted), goes on its PYTHONPATH.
"$py" "$here/tests/package_view.py" "$here/build/crosscpu-view"
# the checkout and the bundle, read-only inside the arm64 root
for d in mnt/repo mnt/bundle mnt/out; do mkdir -p "$root/$d"; done
mount --bind -o ro "$here" "$root/mnt/repo"
mount --bind -o ro "$bundle" "$root/mnt/bundle"
mount --bind "$out" "$root/mnt/out"
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
# unmounted on the way out: a `rm -rf` of the root must not walk into the checkout or /proc
trap 'umount "$root/mnt/repo" "$root/mnt/bundle" "$root/mnt/out" "$root/proc"' EXIT
# onnxruntime's cpuinfo finds no /sys in the root and says so: expected, not an error
chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin PYTHONPATH=/mnt/repo/build/crosscpu-view /opt/rt/bin/python -m \
  edge_embed.quantize.crosscpu embed /mnt/bundle "/mnt/out/$name.arm64.npy" 2> >(grep -v cpuinfo >&2)
record=()
if [ "${RECORD:-0}" = 1 ]; then record=(--record "$bundle"); fi
"$py" -m edge_embed.quantize.crosscpu compare "$out/$name.native.npy" "$out/$name.avx2.npy" \
  "$out/$name.arm64.npy" --min 0 "${record[@]}"
"$py" -m edge_embed.quantize.crosscpu compare "$out/$name.native.npy" "$out/$name.avx2.npy"
