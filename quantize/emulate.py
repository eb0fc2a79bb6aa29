"""A bundle's canaries as another x86 CPU's int8 kernels compute them, under QEMU's user-mode
emulation: for numerics only (emulated speed means nothing).

    python -m edge_embed.quantize.emulate BUNDLE [--cpu Haswell]

onnxruntime picks its int8 kernels from CPUID, and `qemu-x86_64 -cpu Haswell` reports a CPU
with AVX2 and no AVX-512 or VNNI, so the same Python and onnxruntime run the AVX2 kernels
(u8 x s8 through `vpmaddubsw`, whose pair sums saturate at 16 bits) on a VNNI machine. The
tool first checks that they do (a u8 x s8 product that saturates there but not with VNNI),
then embeds the bundle's canaries (`canary.json`: fixed texts with their fp32 reference
vectors) under emulation as the service's start-up check does, and all of them in one padded
batch, and prints: the agreement with the reference against the bundle's canary gate (what the
service would decide on such a CPU), the same natively, emulated vs native vectors, and the
emulated batch invariance. Needs `qemu-x86_64` (Debian: apt-get install qemu-user) on an x86-64
host; about a minute for MiniLM, most of it Python's start-up under emulation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_embed.core import canary
from edge_embed.core.bundle import load_manifest
from edge_embed.core.encoder import BundleModel
from edge_embed.core.pooling import F32
from edge_embed.core.runtime import RuntimeOptions

QEMU = "qemu-x86_64"
# Haswell: AVX2 and FMA, no AVX-512, no VNNI: the oldest CPU the AVX2 int8 kernels run on.
DEFAULT_CPU = "Haswell"
# One emulated run: Python's start-up alone takes ~25 s under emulation on 2 cores.
TIMEOUT_S = 1800
# The saturation probe: K bytes of 255 times K weights of 127. Exact: 255*127*K; through
# vpmaddubsw every pair sum clips at 32767, so the result is 32767*K/2.
PROBE_K = 64
PROBE_ROWS = 4  # more than one row: a single row may take MLAS's matrix-vector kernel


@dataclass(frozen=True)
class Emulated:
    saturates: bool  # the u8 x s8 kernel clipped the probe: 16-bit pair sums (AVX2 without VNNI)
    alone: F32  # each canary in a run of its own, as the start-up check embeds them
    batched: F32  # all canaries in one padded batch


def saturation_probe() -> bool:
    """True when this process's onnxruntime sums u8 x s8 pairs in saturating 16 bits."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    a = np.full((PROBE_ROWS, PROBE_K), 255, np.uint8)
    b = np.full((PROBE_K, 1), 127, np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "probe",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [PROBE_ROWS, PROBE_K])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [PROBE_ROWS, 1])],
        [numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = int(session.run(None, {"A": a})[0][0, 0])
    return got != 255 * 127 * PROBE_K


def canaries(bundle: Path) -> canary.Canaries:
    found = canary.load(bundle, load_manifest(bundle))
    if found is None:
        raise RuntimeError(f"{bundle} has no canaries (bundle.json has no canary section)")
    return found


def embed(bundle: Path) -> tuple[F32, F32]:
    """The canaries (each alone, as the start-up check runs them; all in one batch)."""
    model = BundleModel(bundle, RuntimeOptions(intra_op_threads=1))
    texts = canaries(bundle).texts
    rows = [t.ids for t in model.tokenizer.encode(texts)]
    return canary.embed(model, texts), model.finish(model.run(rows))


def _worker(bundle: Path, out: Path) -> int:
    alone, batched = embed(bundle)
    np.savez(out, alone=alone, batched=batched, saturates=np.array(saturation_probe()))
    return 0


def emulate(bundle: Path, cpu: str = DEFAULT_CPU) -> Emulated:
    """Run the bundle's canaries under `qemu-x86_64 -cpu CPU` in a child Python."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise RuntimeError(f"{QEMU} not found (Debian: apt-get install qemu-user)")
    with tempfile.TemporaryDirectory(prefix="edge-embed-emulate-") as tmp:
        out = Path(tmp) / "out.npz"
        cmd = [qemu, "-cpu", cpu, sys.executable, "-m", "edge_embed.quantize.emulate",
               str(bundle), "--worker", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False)
        if done.returncode != 0 or not out.is_file():
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"emulated run failed (exit {done.returncode}): {tail}")
        data = np.load(out)
        return Emulated(bool(data["saturates"]), data["alone"].astype(np.float32),
                        data["batched"].astype(np.float32))


def report(bundle: Path, cpu: str = DEFAULT_CPU) -> dict[str, object]:
    manifest = load_manifest(bundle)
    reference = canaries(bundle).vectors
    emulated = emulate(bundle, cpu)
    native, _ = embed(bundle)
    gate = manifest.canary.gate if manifest.canary is not None else None
    agreement = canary.agreement(reference, emulated.alone)
    return {
        "bundle": str(bundle), "cpu": cpu, "canaries": len(reference),
        "emulated_saturates": emulated.saturates, "native_saturates": saturation_probe(),
        "canary_gate": gate, "emulated_canary_agreement": agreement,
        "native_canary_agreement": canary.agreement(reference, native),
        "emulated_passes_gate": gate is None or agreement >= gate,
        "emulated_vs_native_min": canary.agreement(native, emulated.alone),
        "emulated_batch_invariance_min": canary.agreement(emulated.alone, emulated.batched),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_embed.quantize.emulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--cpu", default=DEFAULT_CPU, help=f"QEMU CPU model (default {DEFAULT_CPU})")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # the emulated child's side
    args = p.parse_args(argv)
    if args.worker is not None:
        return _worker(args.bundle, args.worker)
    try:
        result = report(args.bundle, args.cpu)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"{p.prog}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
