"""How many CPUs the worker may use: the default of ``--workers`` (compute threads) for the NDVI worker, the
composites and the mosaic.

``os.cpu_count()`` counts the host's processors, not the ones this process may run on: in a container started with
``--cpus 2`` (Docker, AWS Batch, a Kubernetes CPU limit: a cgroup CPU quota) or pinned with ``taskset`` / a
cpuset, it would start a thread per host processor, each waiting for a slice of the quota. The usable count is the
affinity mask, capped by the cgroup quota when there is one. (The training image computes its math threads the same
way in ``segmentation_trainer/threads.py``; the two images share no package, so each has its few lines.)
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def cgroup_quota_cpus(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs allowed by a cgroup CPU quota (rounded up), or None without a quota (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``)."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
        q, p = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if q.is_file() and p.is_file() and int(q.read_text()) > 0:
            return max(1, math.ceil(int(q.read_text()) / int(p.read_text())))
    except (OSError, ValueError):
        pass
    return None


def usable_cpus(affinity: int | None = None, quota: int | None = None) -> int:
    """The CPUs this process may use: its affinity mask (all processors where there is none), capped by a cgroup
    CPU quota. Both are read from the system unless given."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            affinity = os.cpu_count() or 1
    if quota is None:
        quota = cgroup_quota_cpus()
    return max(1, min(affinity, quota) if quota else affinity)
