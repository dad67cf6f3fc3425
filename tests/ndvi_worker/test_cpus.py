"""The default number of compute threads: the CPUs the process may use (affinity, cgroup CPU quota), not the
host's processor count (a container limited to 2 CPUs on a 64-core host must not start 64 threads)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ndvi_worker.cpus import cgroup_quota_cpus, usable_cpus


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota_cpus(tmp_path) == 2  # 1.5 CPUs of quota: 2 threads, rounded up
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota_cpus(tmp_path) is None
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert cgroup_quota_cpus(tmp_path) is None  # unreadable: no cap, not a crash


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    assert cgroup_quota_cpus(tmp_path) == 4
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_quota_cpus(tmp_path) is None
    assert cgroup_quota_cpus(tmp_path / "absent") is None


def test_usable_cpus_is_the_affinity_capped_by_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    import ndvi_worker.cpus as cpus

    assert usable_cpus(affinity=64, quota=2) == 2
    assert usable_cpus(affinity=2, quota=8) == 2
    monkeypatch.setattr(cpus, "cgroup_quota_cpus", lambda: 2)  # the system's quota, read when none is given
    assert cpus.usable_cpus(affinity=3) == 2
    monkeypatch.setattr(cpus, "cgroup_quota_cpus", lambda: None)
    assert cpus.usable_cpus(affinity=3) == 3


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux affinity")
def test_the_worker_pinned_to_one_cpu_starts_one_compute_thread(
    synthetic_input: Path, tmp_path: Path
) -> None:
    """`taskset -c 0 ndvi-worker ...` (or a cpuset): one compute thread by default, said in the log."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    proc = subprocess.run(
        [sys.executable, "-m", "ndvi_worker", "--input", str(synthetic_input), "--output", str(tmp_path / "out"),
         "--log-level", "INFO"],
        capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        env={**os.environ, "SAGEMAKER_BASE_DIR": str(tmp_path / "opt-ml")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "; 1 compute thread(s)," in proc.stdout + proc.stderr
    assert len(list((tmp_path / "out").glob("*_ndvi.tif"))) == 3
