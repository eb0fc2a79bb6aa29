"""How many CPUs this process may really use: affinity mask and cgroup quota, not os.cpu_count().

In a container limited to 2 CPUs on a 64-core host, os.cpu_count() says 64; onnxruntime sized
to 64 threads then thrashes. Both limits are read; the smaller wins.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cgroup_quota(v2: Path = _CGROUP_V2, v1_quota: Path = _CGROUP_V1_QUOTA,
                 v1_period: Path = _CGROUP_V1_PERIOD) -> float | None:
    """CPUs granted by the cgroup quota, or None where there is none."""
    try:
        quota, period = v2.read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        q = int(v1_quota.read_text())
        p = int(v1_period.read_text())
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    cpus = _affinity()
    quota = cgroup_quota()
    if quota is not None:
        # A quota of 1.5 CPUs still lets two threads make progress; round up, never below 1.
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


# Model runs at once when neither --concurrent-runs nor --threads is given: single-threaded runs
# side by side fill the threads that one run's serial parts leave idle; capped because a run's
# latency grows as its share of threads shrinks. Figures: docs/measurements.md#default_max_runs
DEFAULT_MAX_RUNS = 4


def plan_threads(cpus: int, threads: int | None, runs: int | None) -> tuple[int, int]:
    """(intra-op threads per run, concurrent runs) for `cpus` usable CPUs and the given flags.

    What is given wins; what is not fills the CPUs: runs from threads (cpus // threads), threads
    from runs (cpus // runs), both unset: min(cpus, DEFAULT_MAX_RUNS) runs.
    """
    if runs is None:
        runs = cpus // threads if threads else min(cpus, DEFAULT_MAX_RUNS)
    runs = max(1, min(runs, cpus))
    return (threads or max(1, cpus // runs)), runs


def plan_lone_threads(cpus: int, threads: int, given: int | None) -> int | None:
    """Intra-op threads for a run alone in flight, or None: no session apart for it.

    Off unless asked (`given`, --lone-threads, above `threads`): a second session with more
    threads for a run that finds no other in flight costs a second copy of the prepacked
    weights and its own arena (+45 MiB ready, +65 MiB after load with MiniLM int8), and on a
    shared 2-core box its spinning threads compete with the event loop and the client; there
    it measured slower on every workload, one sentence at c=1 included (figures:
    docs/measurements.md, "The lone session").
    """
    del cpus  # the lone session is asked for by its thread count alone
    if given is None:
        return None
    return given if given > threads else None
