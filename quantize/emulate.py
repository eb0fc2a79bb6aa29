"""A bundle's vectors as another x86 CPU's int8 kernels compute them, under QEMU's user-mode
emulation: for numerics only (emulated speed means nothing).

    python -m edge_embed.quantize.emulate BUNDLE [--fp32 FP32_BUNDLE] [--cpu Haswell] [--texts 16]

onnxruntime picks its int8 kernels from CPUID, and `qemu-x86_64 -cpu Haswell` reports a CPU
with AVX2 and no AVX-512 or VNNI, so the same Python and onnxruntime run the AVX2 kernels
(u8 x s8 through `vpmaddubsw`, whose pair sums saturate at 16 bits) on a VNNI machine. The
tool first checks that they do (a u8 x s8 product that saturates there but not with VNNI),
then embeds the evaluation set's first `--texts` texts under emulation and natively, each alone
and all in one padded batch, and prints: emulated vs native cosines, emulated batch invariance
and, with --fp32, emulated int8 vs fp32. Needs `qemu-x86_64` (Debian: apt-get install
qemu-user) on an x86-64 host. Keep the texts short and few: emulation is ~50x slower.
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
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
QEMU = "qemu-x86_64"
# Haswell: AVX2 and FMA, no AVX-512, no VNNI: the oldest CPU the AVX2 int8 kernels run on.
DEFAULT_CPU = "Haswell"
# Texts embedded per run: the evaluation set's first ones (short sentences); under emulation
# MiniLM takes about a second per short text.
TEXTS = 16
# One emulated run: Python's start-up alone takes ~25 s under emulation on 2 cores.
TIMEOUT_S = 1800
# The saturation probe: K bytes of 255 times K weights of 127. Exact: 255*127*K; through
# vpmaddubsw every pair sum clips at 32767, so the result is 32767*K/2.
PROBE_K = 64
PROBE_ROWS = 4  # more than one row: a single row may take MLAS's matrix-vector kernel


@dataclass(frozen=True)
class Emulated:
    saturates: bool  # the u8 x s8 kernel clipped the probe: 16-bit pair sums (AVX2 without VNNI)
    alone: F32  # each text in a batch of its own
    batched: F32  # all texts in one padded batch


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


def texts(count: int) -> list[str]:
    from .evalset import load_eval_set

    return load_eval_set().texts[:count]


def embed(bundle: Path, items: list[str]) -> tuple[F32, F32]:
    """(each text alone, all in one batch): normalized vectors."""
    from edge_embed.service.encoder import BundleModel
    from edge_embed.service.runtime import RuntimeOptions

    model = BundleModel(bundle, RuntimeOptions(intra_op_threads=1))
    rows = [t.ids for t in model.tokenizer.encode(items)]
    alone = np.concatenate([model.finish(model.run([r])) for r in rows])
    return alone, model.finish(model.run(rows))


def _worker(bundle: Path, count: int, out: Path) -> int:
    alone, batched = embed(bundle, texts(count))
    np.savez(out, alone=alone, batched=batched, saturates=np.array(saturation_probe()))
    return 0


def emulate(bundle: Path, count: int = TEXTS, cpu: str = DEFAULT_CPU) -> Emulated:
    """Run the bundle under `qemu-x86_64 -cpu CPU` in a child Python."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise RuntimeError(f"{QEMU} not found (Debian: apt-get install qemu-user)")
    with tempfile.TemporaryDirectory(prefix="edge-embed-emulate-") as tmp:
        out = Path(tmp) / "out.npz"
        cmd = [qemu, "-cpu", cpu, sys.executable, "-m", "edge_embed.quantize.emulate",
               str(bundle), "--texts", str(count), "--worker", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False)
        if done.returncode != 0 or not out.is_file():
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"emulated run failed (exit {done.returncode}): {tail}")
        data = np.load(out)
        return Emulated(bool(data["saturates"]), data["alone"].astype(np.float32),
                        data["batched"].astype(np.float32))


def _row_cosines(a: F32, b: F32) -> F32:
    return np.asarray((a * b).sum(axis=1), dtype=np.float32)


def report(bundle: Path, fp32: Path | None, count: int, cpu: str) -> dict[str, object]:
    emulated = emulate(bundle, count, cpu)
    items = texts(count)
    native_alone, _ = embed(bundle, items)
    out: dict[str, object] = {
        "bundle": str(bundle), "cpu": cpu, "texts": count,
        "emulated_saturates": emulated.saturates, "native_saturates": saturation_probe(),
        "emulated_vs_native_min": float(_row_cosines(emulated.alone, native_alone).min()),
        "emulated_batch_invariance_min": float(
            _row_cosines(emulated.alone, emulated.batched).min()),
    }
    if fp32 is not None:
        ref, _ = embed(fp32, items)
        cos = _row_cosines(emulated.alone, ref)
        out["emulated_vs_fp32_min"] = float(cos.min())
        out["emulated_vs_fp32_mean"] = float(cos.mean())
        out["native_vs_fp32_min"] = float(_row_cosines(native_alone, ref).min())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_embed.quantize.emulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--fp32", type=Path, metavar="BUNDLE", help="the fp32 bundle to compare with")
    p.add_argument("--cpu", default=DEFAULT_CPU, help=f"QEMU CPU model (default {DEFAULT_CPU})")
    p.add_argument("--texts", type=int, default=TEXTS)
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # the emulated child's side
    args = p.parse_args(argv)
    if args.worker is not None:
        return _worker(args.bundle, args.texts, args.worker)
    try:
        result = report(args.bundle, args.fp32, args.texts, args.cpu)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"{p.prog}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
