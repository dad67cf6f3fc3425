"""The model the server holds: loaded once per worker (MXNet, after the fork), in a background thread."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segmentation_trainer.predict import PredictionConfig, Predictor
from segmentation_trainer.serving.config import ServeConfig

log = logging.getLogger("segmentation_trainer.serve")  # one logger for the whole server, as before the split


@dataclass
class LoadedModel:
    """A loaded network as a forward callable plus the metadata inference needs."""

    forward: Callable[[np.ndarray], np.ndarray]
    metadata: dict
    # the fastest time per window measured (at load and on every prediction): the cost estimate of a request
    seconds_per_window: float | None = None
    engine: str = "mxnet"  # which engine runs ``forward`` (segmentation_trainer.serving.engines)
    engine_timings: dict | None = None  # seconds per batch of windows of each engine timed at load

    def observe(self, windows: int, seconds: float) -> None:
        if windows > 0 and seconds > 0:
            per_window = seconds / windows
            if self.seconds_per_window is None or per_window < self.seconds_per_window:
                self.seconds_per_window = per_window

    def estimate_s(self, windows: int) -> float | None:
        return None if self.seconds_per_window is None else windows * self.seconds_per_window

    def predictor(self, config: ServeConfig) -> Predictor:
        md = self.metadata
        crop = md["crop_size"]
        crop = tuple(crop) if isinstance(crop, list | tuple) else int(crop)
        return Predictor(
            self.forward,
            PredictionConfig(
                num_classes=int(md["num_classes"]),
                bands=len(md["bands"]) if isinstance(md["bands"], list | tuple) else int(md["bands"]),
                crop_size=crop,
                mean=tuple(float(v) for v in md["mean"]),
                std=tuple(float(v) for v in md["std"]),
                scale=float(md.get("input_scale", 1.0)),
                overlap=config.overlap,
                batch_size=config.window_batch,
            ),
            normaliser=getattr(md, "normalise", None),
        )

    def nodata_value(self) -> float | None:
        value = self.metadata.get("nodata")
        return None if value is None else float(value)


def load_model_dir(
    model_dir: Path, window_batch: int = 4, engine: str = "mxnet", threads: int = 1
) -> LoadedModel:
    """The I/O edge: load the network (MXNet, imported here, in the worker) and pick the engine that serves it.

    ``engine``: ``mxnet``, ``onnx`` or ``auto`` (both timed on a full batch of windows, the faster serves; see
    :mod:`segmentation_trainer.serving.engines`). ``threads``: ONNX Runtime's intra-op threads (MXNet's come
    from OMP_NUM_THREADS, set before it was imported).
    """
    from segmentation_trainer.devices import default_context
    from segmentation_trainer.export import load_model
    from segmentation_trainer.predict import mxnet_forward
    from segmentation_trainer.serving import engines

    if engine not in engines.ENGINES:
        raise ValueError(f"EARTHMON_SERVE_ENGINE must be one of {', '.join(engines.ENGINES)}, got {engine!r}")
    ctx = default_context()
    net, metadata = load_model(str(model_dir), ctx=ctx)
    net.hybridize(static_alloc=True)
    mx_forward = mxnet_forward(net, ctx)
    crop = metadata["crop_size"]
    height, width = (crop, crop) if isinstance(crop, int) else crop
    with warnings.catch_warnings():  # the unused auxiliary head is reported once, when the graph is built
        warnings.filterwarnings("ignore", message=".*is not used by any computation.*")
        mx_forward(np.zeros((1, int(metadata["bands"]), int(height), int(width)), np.float32))
    # a full batch of windows: the speed the engine choice and the cost estimate of requests start from
    batch = np.zeros((max(1, window_batch), int(metadata["bands"]), int(height), int(width)), np.float32)
    timings: dict[str, float] = {}
    forwards: dict[str, Callable[[np.ndarray], np.ndarray]] = {"mxnet": mx_forward}
    on_gpu = getattr(ctx, "device_type", "cpu") == "gpu"
    if engine == "onnx" or (engine == "auto" and not on_gpu and engines.onnxruntime_available()):
        try:
            path = engines.onnx_file(Path(model_dir), metadata)
            forwards["onnx"] = engines.onnx_forward(path, threads)
        except Exception as exc:  # noqa: BLE001 - the exporter and ONNX Runtime raise anything
            if engine == "onnx":
                raise engines.EngineUnavailable(
                    f"EARTHMON_SERVE_ENGINE=onnx but the model cannot run in ONNX Runtime: {type(exc).__name__}: "
                    f"{exc}"[:600]
                ) from exc
            log.warning(
                "ONNX Runtime unavailable for this model (%s: %s): serving with MXNet",
                type(exc).__name__,
                exc,
            )
    if engine == "auto" and len(forwards) > 1:
        timings = engines.time_engines(forwards, batch)
        chosen = engines.choose("auto", timings)
    else:
        chosen = "mxnet" if engine == "auto" else engine
        timings = {chosen: engines.time_forward(forwards[chosen], batch, repeats=1)}
    if chosen != "mxnet":
        del net, mx_forward  # the other engine's copy of the weights is not kept
    log.info(
        "engine %s (EARTHMON_SERVE_ENGINE=%s, %d math thread(s)); %s per batch of %d windows of %dx%d",
        chosen,
        engine,
        threads,
        ", ".join(f"{name} {seconds:.3f} s" for name, seconds in sorted(timings.items())),
        len(batch),
        int(height),
        int(width),
    )
    model = LoadedModel(forwards[chosen], metadata, engine=chosen, engine_timings=timings)
    model.observe(len(batch), timings[chosen])
    return model


class ModelHolder:
    """Loads the model once, in a background thread, and tells whether it is ready."""

    def __init__(self, loader: Callable[[], LoadedModel]):
        self._loader = loader
        self._ready = threading.Event()
        self.model: LoadedModel | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._load, name="model-loader", daemon=True)

    def start(self) -> ModelHolder:
        self._thread.start()
        return self

    def _load(self) -> None:
        started = time.monotonic()
        try:
            self.model = self._loader()
            log.info("model loaded in %.1f s: %s", time.monotonic() - started, _describe(self.model.metadata))
        except Exception as exc:  # reported by /ping and /invocations
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the model failed")
        finally:
            self._ready.set()

    def wait(self, timeout: float | None) -> bool:
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.model is not None


def _describe(md: dict) -> str:
    keys = ("algorithm", "backbone", "num_classes", "bands", "crop_size")
    return ", ".join(f"{k}={md.get(k)}" for k in keys if k in md)


def building_class(metadata: dict) -> int | None:
    """The class counted as buildings in JSON summaries: the one named 'building(s)', else 1 of 2 classes."""
    names = [str(n).lower() for n in metadata.get("class_names") or []]
    for i, name in enumerate(names):
        if name in ("building", "buildings"):
            return i
    return 1 if int(metadata.get("num_classes", 0)) == 2 else None
