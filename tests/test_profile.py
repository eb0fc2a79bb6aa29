"""quantize.profile: onnxruntime's per-node profile summed by operator type, for both workloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_embed.quantize.profile import after_first_run, main, op_times, profile


def test_op_times_sums_node_kernels_only() -> None:
    events: list[dict[str, object]] = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 900},
        {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 100,
         "args": {"op_name": "MatMul"}},
        {"cat": "Session", "name": "model_run", "ts": 1000, "dur": 900},
        {"cat": "Node", "name": "b_kernel_time", "ts": 1010, "dur": 30,
         "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "c_kernel_time", "ts": 1050, "dur": 20,
         "args": {"op_name": "Add"}},
        {"cat": "Node", "name": "c_fence_before", "ts": 1040, "dur": 5,
         "args": {"op_name": "Add"}},
    ]
    assert op_times(events) == {"MatMul": 130.0, "Add": 20.0}
    # the first run (weights packed, arena grown) is left out
    assert op_times(after_first_run(events)) == {"MatMul": 30.0, "Add": 20.0}


def test_profile_of_an_int8_bundle(tiny_int8_bundle: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    times = profile(tiny_int8_bundle, runs=2, threads=1)
    assert set(times) == {"short", "long"}
    for ops in times.values():
        assert ops["MatMulIntegerToFloat"] > 0 and all(ms >= 0 for ms in ops.values())
    assert main([str(tiny_int8_bundle), "--runs", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "int8 flags:" in out and "MatMulIntegerToFloat" in out and "%" in out
