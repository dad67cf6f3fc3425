"""How many threads the math libraries and the data pipeline use: derived from the instance, set before MXNet loads.

MXNet 1.9 sizes its OpenMP pool to *half* the processors when ``OMP_NUM_THREADS`` is unset (it assumes
hyper-threading: ``omp_get_num_procs() >> 1``), so on a 2-vCPU instance training ran on one core of two
(docs/performance-trainer.md). ``serve`` always set the thread counts; :func:`configure` now does it for
``train`` too, from:

- the CPUs this process may run on: ``os.sched_getaffinity(0)``, capped by a cgroup CPU quota
  (``/sys/fs/cgroup/cpu.max``, cgroup v2, or ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, v1) when there is one;
- the contract: the toolkit's view of the job (``Job.env.num_cpus``) when it is smaller;
- overrides (names the built-in algorithm does not use): the hyperparameters ``earthmon_compute_threads`` and
  ``earthmon_data_workers``, else the environment variables ``EARTHMON_COMPUTE_THREADS`` and
  ``EARTHMON_DATA_WORKERS``; and any of ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,
  ``MXNET_CPU_WORKER_NTHREADS`` already in the environment is kept (the user's setting wins).

The variables only take effect if set before ``import mxnet`` (the OpenMP runtime and MXNet's engine read them
when they load); :func:`configure` also calls ``MXSetNumOMPThreads`` when MXNet is already loaded (tests, a
script that imported it first), which resizes MXNet's own OpenMP pool but not the engine's worker threads.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

COMPUTE_THREADS_HP = "earthmon_compute_threads"
DATA_WORKERS_HP = "earthmon_data_workers"
COMPUTE_THREADS_ENV = "EARTHMON_COMPUTE_THREADS"
DATA_WORKERS_ENV = "EARTHMON_DATA_WORKERS"
MATH_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
ENGINE_VARIABLE = "MXNET_CPU_WORKER_NTHREADS"
# MXNet's CPU engine threads run operators; each operator runs on the OpenMP pool. One engine thread keeps the
# OpenMP pool alone on the cores (two engine threads x N OpenMP threads oversubscribe a small instance).
DEFAULT_ENGINE_THREADS = 1


@dataclass(frozen=True)
class ThreadSettings:
    cpus: int  # CPUs the process may use (affinity, quota, contract)
    compute_threads: int  # OpenMP / MKL / OpenBLAS threads
    engine_threads: int  # MXNET_CPU_WORKER_NTHREADS
    data_workers: int  # decoding + augmentation threads of the training batches
    source: str  # where compute_threads came from
    environment: dict[str, str]  # the variables to set

    def describe(self) -> str:
        return (
            f"{self.cpus} CPU(s) usable; {self.compute_threads} math thread(s) ({self.source}), "
            f"{self.engine_threads} MXNet engine thread(s), {self.data_workers} data worker thread(s) (0: in the training thread); "
            + " ".join(f"{k}={v}" for k, v in sorted(self.environment.items()))
        )


def _cgroup_quota_cpus(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs allowed by a cgroup CPU quota (rounded up), or None without a quota."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            if quota != "max":
                return max(1, math.ceil(int(quota) / int(period)))
            return None
        q, p = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if q.is_file() and p.is_file():
            quota_us = int(q.read_text())
            if quota_us > 0:
                return max(1, math.ceil(quota_us / int(p.read_text())))
    except (OSError, ValueError):
        pass
    return None


def usable_cpus(affinity: int | None = None, quota: int | None = None, contract: int | None = None) -> int:
    """The CPUs this process may use: the affinity mask, capped by a cgroup quota and the toolkit's count."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            affinity = os.cpu_count() or 1
    cpus = max(1, affinity)
    for cap in (quota, contract):
        if cap is not None and cap >= 1:
            cpus = min(cpus, cap)
    return cpus


def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected {what}") from None
    if n < minimum:
        raise ValueError(f"{name}={value!r}: expected {what}")
    return n


def derive(
    cpus: int,
    hyperparameters: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    gpus: int = 0,
) -> ThreadSettings:
    """The thread settings for ``cpus`` usable CPUs (pure: no environment is read or written).

    Defaults: math threads = every usable CPU (the training step is one big parallel computation; the batch
    pipeline's threads are mostly idle and run in the gaps); data workers = 2 (measured: decoding and
    augmenting a batch takes a few percent of a training step on CPU; docs/performance-trainer.md), more with
    GPUs, whose step is much faster (one per CPU, at most 8).
    """
    hp = hyperparameters or {}
    env = environ or {}
    source = "every usable CPU"
    compute = cpus
    if COMPUTE_THREADS_HP in hp:
        compute, source = _positive_int(hp[COMPUTE_THREADS_HP], COMPUTE_THREADS_HP), COMPUTE_THREADS_HP
    elif env.get(COMPUTE_THREADS_ENV, "").strip():
        compute, source = (
            _positive_int(env[COMPUTE_THREADS_ENV], COMPUTE_THREADS_ENV),
            COMPUTE_THREADS_ENV,
        )
    elif env.get("OMP_NUM_THREADS", "").strip():
        with contextlib.suppress(ValueError):
            compute, source = _positive_int(env["OMP_NUM_THREADS"], "OMP_NUM_THREADS"), "OMP_NUM_THREADS"
    if DATA_WORKERS_HP in hp:
        data_workers = _positive_int(hp[DATA_WORKERS_HP], DATA_WORKERS_HP, minimum=0)
    elif env.get(DATA_WORKERS_ENV, "").strip():
        data_workers = _positive_int(env[DATA_WORKERS_ENV], DATA_WORKERS_ENV, minimum=0)
    else:
        data_workers = min(8, cpus) if gpus else 2
    engine = DEFAULT_ENGINE_THREADS
    if env.get(ENGINE_VARIABLE, "").strip():
        engine = _positive_int(env[ENGINE_VARIABLE], ENGINE_VARIABLE)
    out = {}
    explicit = source in (COMPUTE_THREADS_HP, COMPUTE_THREADS_ENV)
    for name in MATH_VARIABLES:
        if explicit or not env.get(name, "").strip():
            out[name] = str(compute)
        else:
            out[name] = env[name]
    out[ENGINE_VARIABLE] = str(engine)
    return ThreadSettings(cpus, compute, engine, data_workers, source, out)


def configure(
    hyperparameters: Mapping[str, object] | None = None,
    contract_cpus: int | None = None,
    gpus: int = 0,
    environ: MutableMapping[str, str] | None = None,
) -> ThreadSettings:
    """Derive the settings for this process and write them into ``environ`` (default ``os.environ``); if MXNet is
    already loaded, also resize its OpenMP pool. Logs what was chosen."""
    env = os.environ if environ is None else environ
    cpus = usable_cpus(quota=_cgroup_quota_cpus(), contract=contract_cpus)
    settings = derive(cpus, hyperparameters, env, gpus)
    env.update(settings.environment)
    if environ is None and "mxnet" in sys.modules:
        _resize_loaded_mxnet(settings.compute_threads)
    log.info("threads: %s", settings.describe())
    return settings


def _resize_loaded_mxnet(threads: int) -> None:
    try:
        import ctypes

        import mxnet as mx

        mx.base.check_call(mx.base._LIB.MXSetNumOMPThreads(ctypes.c_int(int(threads))))
    except Exception as exc:  # noqa: BLE001 - an older MXNet without the call: the variables still apply next time
        log.warning("MXNet is already loaded and its OpenMP pool could not be resized: %s", exc)
