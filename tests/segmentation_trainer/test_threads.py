"""Thread settings of training (segmentation_trainer.threads): derived from the CPUs the process may use and the
contract, overridable by hyperparameters and environment variables, set before MXNet is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segmentation_trainer import threads
from segmentation_trainer.threads import configure, derive, usable_cpus

ROOT = Path(__file__).resolve().parents[2]


def test_usable_cpus_is_the_affinity_capped_by_quota_and_contract():
    assert usable_cpus(affinity=8) == 8
    assert usable_cpus(affinity=8, quota=3) == 3
    assert usable_cpus(affinity=8, contract=4) == 4
    assert usable_cpus(affinity=2, quota=16, contract=64) == 2
    assert usable_cpus(affinity=0) == 1
    assert usable_cpus() == len(os.sched_getaffinity(0))


def test_cgroup_quota(tmp_path):
    assert threads._cgroup_quota_cpus(tmp_path) is None
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._cgroup_quota_cpus(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads._cgroup_quota_cpus(tmp_path) == 2
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert threads._cgroup_quota_cpus(v1) == 4


def test_every_usable_cpu_by_default():
    s = derive(2, {}, {})
    assert s.compute_threads == 2 and s.engine_threads == 1 and s.data_workers == 2
    assert s.environment == {
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
        "OPENBLAS_NUM_THREADS": "2",
        "MXNET_CPU_WORKER_NTHREADS": "1",
    }
    assert derive(16, {}, {}).environment["OMP_NUM_THREADS"] == "16"
    assert derive(16, {}, {}, gpus=4).data_workers == 8


def test_overrides_hyperparameter_then_environment_then_math_variables():
    env = {"EARTHMON_COMPUTE_THREADS": "3", "OMP_NUM_THREADS": "5", "EARTHMON_DATA_WORKERS": "0"}
    s = derive(8, {"earthmon_compute_threads": 4, "earthmon_data_workers": 1}, env)
    assert (s.compute_threads, s.data_workers, s.source) == (4, 1, "earthmon_compute_threads")
    assert s.environment["OMP_NUM_THREADS"] == "4"  # an explicit setting wins over the variable
    s = derive(8, {}, env)
    assert (s.compute_threads, s.data_workers, s.source) == (3, 0, "EARTHMON_COMPUTE_THREADS")
    s = derive(8, {}, {"OMP_NUM_THREADS": "5", "MKL_NUM_THREADS": "7", "MXNET_CPU_WORKER_NTHREADS": "2"})
    assert (s.compute_threads, s.source) == (5, "OMP_NUM_THREADS")
    assert s.environment["MKL_NUM_THREADS"] == "7" and s.environment["MXNET_CPU_WORKER_NTHREADS"] == "2"
    with pytest.raises(ValueError, match="EARTHMON_COMPUTE_THREADS"):
        derive(8, {}, {"EARTHMON_COMPUTE_THREADS": "zero"})


def test_configure_writes_the_environment_it_is_given(monkeypatch):
    monkeypatch.setattr(threads, "_cgroup_quota_cpus", lambda: None)
    env: dict[str, str] = {}
    s = configure({}, contract_cpus=1, environ=env)
    assert s.cpus == 1 and env["OMP_NUM_THREADS"] == "1"


def test_unknown_or_invalid_override_hyperparameters_are_client_errors():
    from segmentation_trainer.hyperparameters import HyperparameterError, parse_hyperparameters

    hp = parse_hyperparameters(
        {"num_classes": "2", "num_training_samples": "4", "earthmon_compute_threads": "3"}
    )
    assert hp.earthmon_compute_threads == 3
    assert "earthmon_compute_threads" in hp.to_strings()
    assert "earthmon_data_workers" not in hp.to_strings()  # unset: hyperparams.json as before
    with pytest.raises(HyperparameterError, match="earthmon_compute_threads"):
        parse_hyperparameters(
            {"num_classes": "2", "num_training_samples": "4", "earthmon_compute_threads": "0"}
        )


def test_train_sets_the_threads_before_mxnet_is_imported(tmp_path):
    """A fresh process runs the job (no train channel: it stops with a ClientError after the thread settings):
    the settings were made with MXNet not yet loaded, and are in the environment it will load with."""
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(
        json.dumps({"num_classes": "2", "num_training_samples": "4", "earthmon_compute_threads": "3"})
    )
    code = """
import os, sys
from segmentation_trainer import threads, train
from segmentation_trainer.contract import TrainingPaths
real = threads.configure
seen = []
def spy(*args, **kwargs):
    seen.append("mxnet" in sys.modules)
    return real(*args, **kwargs)
threads.configure = spy
code = train.run_training(TrainingPaths.resolve(sys.argv[1]), train.RunOptions(install_signal_handler=False))
print(code, seen, os.environ["OMP_NUM_THREADS"], os.environ["MXNET_CPU_WORKER_NTHREADS"])
"""
    env = {k: v for k, v in os.environ.items() if not k.endswith("NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-4:] == ["2", "[False]", "3", "1"], out.stdout
    assert "train channel is missing" in (tmp_path / "output" / "failure").read_text()
