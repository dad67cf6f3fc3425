"""The serving engines: MXNet (the Gluon network) or ONNX Runtime (``model.onnx``), chosen when the model loads.

``EARTHMON_SERVE_ENGINE``:

- ``mxnet``: the Gluon network (any window size; the GPU when there is one);
- ``onnx``: ``model.onnx`` in ONNX Runtime (CPU), all graph optimisations on (constant folding, batch norm and
  activations fused into the convolutions), ``intra_op_num_threads`` = the worker's math threads;
- ``auto`` (default): on a CPU, both are timed on a batch of windows and the faster one serves (logged with both
  times); on a GPU, MXNet.

``model.onnx`` is written at the end of training; a model directory without it (an older artifact, the
built-in algorithm's) gets one exported at start-up, into the model directory when it is writable, else into a
cache directory (``EARTHMON_ONNX_CACHE``, default ``$TMPDIR/earthmon-onnx``), under a file lock so the
workers export it once. The built-in artifacts (``model_algo-1``, ``hyperparams.json``, ``model_best.params``)
are never changed. ONNX files written by older exporters list their weights among the graph inputs; they are
made constants in memory (:func:`segmentation_trainer.export.constant_weights`) before the session is built.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger("segmentation_trainer.serve")

ENGINES = ("auto", "mxnet", "onnx")
Forward = Callable[[np.ndarray], np.ndarray]


class EngineUnavailable(RuntimeError):
    """The engine asked for cannot run this model here (the message says why)."""


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_session_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 2  # warnings and errors (the weights-as-inputs warning would show)
    return options


def onnx_forward(path: Path, threads: int = 1) -> Forward:
    """A forward callable running ``path`` in ONNX Runtime on the CPU (first output = logits)."""
    import onnx
    import onnxruntime as ort

    from segmentation_trainer.export import constant_weights

    model = constant_weights(onnx.load(str(path)))
    session = ort.InferenceSession(
        model.SerializeToString(), onnx_session_options(threads), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name

    def forward(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    forward.session = session  # type: ignore[attr-defined]
    return forward


def _cache_dir() -> Path:
    return Path(os.environ.get("EARTHMON_ONNX_CACHE") or Path(tempfile.gettempdir()) / "earthmon-onnx")


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def onnx_file(model_dir: Path, metadata: dict) -> Path:
    """``model.onnx`` of ``model_dir``, exported now (once, under a lock) when the directory has none."""
    from segmentation_trainer.export import ONNX_FILE, ModelMetadata, export_onnx, inside, params_path

    described = metadata.get("onnx")
    if isinstance(described, dict) and described.get("file"):
        path = inside(model_dir, described["file"], "metadata.json onnx.file")
        if path.is_file():
            return path
    path = model_dir / ONNX_FILE
    if path.is_file():
        return path
    params = params_path(model_dir, metadata)
    if os.access(model_dir, os.W_OK):
        target = model_dir
    else:  # a read-only model directory: a cache keyed by the parameter file
        key = hashlib.sha256(f"{params.resolve()}:{params.stat().st_mtime_ns}".encode()).hexdigest()[:16]
        target = _cache_dir() / key
    out = target / ONNX_FILE
    target.mkdir(parents=True, exist_ok=True)
    with _locked(target / ".onnx-export.lock"):
        if not out.is_file():  # another worker may have written it while this one waited
            started = time.monotonic()
            with tempfile.TemporaryDirectory(dir=target) as tmp:
                export_onnx(ModelMetadata(metadata), params, Path(tmp))
                os.replace(Path(tmp) / ONNX_FILE, out)
            log.info("exported %s from %s in %.1f s", out, params.name, time.monotonic() - started)
    return out


def time_forward(forward: Forward, batch: np.ndarray, repeats: int = 2) -> float:
    """The fastest of ``repeats`` calls on ``batch`` after one warm-up call (seconds)."""
    forward(batch)
    best = float("inf")
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        forward(batch)
        best = min(best, time.perf_counter() - started)
    return best


def time_engines(forwards: dict[str, Forward], batch: np.ndarray, rounds: int = 3) -> dict[str, float]:
    """The fastest call of each engine on ``batch``, the engines alternating (one warm-up call each first), so a
    burst of load from other processes hits both alike."""
    for forward in forwards.values():
        forward(batch)
    best = {name: float("inf") for name in forwards}
    for _ in range(max(1, rounds)):
        for name, forward in forwards.items():
            started = time.perf_counter()
            forward(batch)
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def choose(setting: str, timings: dict[str, float]) -> str:
    """The engine to serve with: the setting, or under ``auto`` the fastest of ``timings`` (seconds per batch;
    MXNet when only it was timed)."""
    if setting not in ENGINES:
        raise ValueError(f"EARTHMON_SERVE_ENGINE must be one of {', '.join(ENGINES)}, got {setting!r}")
    if setting != "auto":
        return setting
    if not timings:
        return "mxnet"
    return min(timings, key=lambda name: (timings[name], name != "mxnet"))
