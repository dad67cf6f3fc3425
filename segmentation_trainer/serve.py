"""The inference server of the training image: ``docker run IMAGE serve`` (hosting and batch transform).

- ``GET /ping``: 200 once this worker's model is loaded, 503 while it loads, 500 if loading failed (the
  reason in the body and the log).
- ``POST /invocations``: one image in (``image/jpeg``, ``image/png``, ``image/tiff``, ``application/x-npy``),
  the prediction out by ``Accept`` (see :mod:`segmentation_trainer.codecs`). Errors: 415 unsupported
  Content-Type, 406 unsupported Accept, 413 body or image too large, 400 corrupt image or wrong band count,
  503 model not loaded; each with a JSON body ``{"error": "..."}``.
- ``GET /execution-parameters``: batch transform settings (``MaxConcurrentTransforms`` = workers,
  ``BatchStrategy``, ``MaxPayloadInMB``), honouring ``SAGEMAKER_MAX_PAYLOAD_IN_MB`` and
  ``SAGEMAKER_BATCH_STRATEGY``.

Production server: gunicorn, pre-forked workers (one per vCPU by default, ``SAGEMAKER_MODEL_SERVER_WORKERS``
overrides), each with its own copy of the model and ``cpus / workers`` math threads, one inference at a
time per worker (inference is CPU-bound) while a second thread answers ``/ping``; busy workers let idle ones
accept new connections first (:class:`BalancedThreadWorker`). SIGTERM stops accepting and lets in-flight
requests finish within 25 s (SageMaker sends SIGKILL 30 s after SIGTERM). The master never imports MXNet:
workers load it after the fork.

Configuration comes from the environment SageMaker sets (read once, in :meth:`ServeConfig.from_env`):

=================================  =========================================================  =========
``SAGEMAKER_BIND_TO_PORT``         port to listen on                                          8080
``SAGEMAKER_BASE_DIR``             root of the contract paths; the model is in ``model/``     /opt/ml
``SAGEMAKER_MODEL_SERVER_WORKERS`` worker processes                                           vCPUs
``SAGEMAKER_MODEL_SERVER_TIMEOUT`` seconds a request may take before its worker is restarted  60
``SAGEMAKER_MAX_PAYLOAD_IN_MB``    largest request body (413 above it)                        6
``SAGEMAKER_BATCH_STRATEGY``       reported by /execution-parameters                          SINGLE_RECORD
``EARTHMON_MAX_PIXELS``            largest decoded image, in pixels (413 above it)            64 Mi
``EARTHMON_WINDOW_OVERLAP``        overlap of sliding windows, fraction of the window         0.333
``EARTHMON_WINDOW_BATCH``          windows per forward pass                                   4
``EARTHMON_MIN_BUILDING_PIXELS``   smallest component counted as a building (JSON summary)    80
=================================  =========================================================  =========
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segmentation_trainer import codecs
from segmentation_trainer.predict import PredictionConfig, Predictor, class_mask

log = logging.getLogger("segmentation_trainer.serve")

BATCH_STRATEGIES = ("SINGLE_RECORD", "MULTI_RECORD")
GRACEFUL_TIMEOUT_S = 25  # SageMaker sends SIGKILL 30 s after SIGTERM


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_workers(cpus: int) -> int:
    """One single-threaded worker per vCPU.

    benchmarks/bench_serve.py on 2 shared vCPUs (DeepLabV3-ResNet50, 512 x 512 requests, 4 clients): with
    the balanced workers, 2 workers x 1 thread served 1.6x the requests of 1 worker x 2 threads. (Before the
    workers were balanced, greedy accepting made the 2-worker layout the slower one.) Each worker holds its
    own model (~1 GB for ResNet-50): lower SAGEMAKER_MODEL_SERVER_WORKERS on small-memory instances.
    """
    return max(1, cpus)


@dataclass(frozen=True)
class ServeConfig:
    """Everything the server needs, resolved once at start-up."""

    model_dir: Path
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    threads_per_worker: int = 1
    timeout_s: int = 60
    max_payload_mb: float = 6.0
    batch_strategy: str = "SINGLE_RECORD"
    max_pixels: int = 64 * 2**20
    overlap: float = 1 / 3
    window_batch: int = 4
    min_building_pixels: int = 80
    model_wait_s: float = 60.0  # how long /invocations waits for a model that is still loading

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"port {self.port} is not in 1-65535")
        if self.workers < 1:
            problems.append(f"workers must be >= 1, got {self.workers}")
        if self.threads_per_worker < 1:
            problems.append(f"threads per worker must be >= 1, got {self.threads_per_worker}")
        if self.timeout_s < 1:
            problems.append(f"timeout must be >= 1 s, got {self.timeout_s}")
        if self.max_payload_mb <= 0:
            problems.append(f"SAGEMAKER_MAX_PAYLOAD_IN_MB must be > 0, got {self.max_payload_mb}")
        if self.batch_strategy not in BATCH_STRATEGIES:
            problems.append(
                f"SAGEMAKER_BATCH_STRATEGY must be one of {BATCH_STRATEGIES}, got {self.batch_strategy!r}"
            )
        if self.max_pixels < 1:
            problems.append(f"max pixels must be >= 1, got {self.max_pixels}")
        if not 0 <= self.overlap < 1:
            problems.append(f"EARTHMON_WINDOW_OVERLAP must be in [0, 1), got {self.overlap}")
        if self.window_batch < 1:
            problems.append(f"EARTHMON_WINDOW_BATCH must be >= 1, got {self.window_batch}")
        if problems:
            raise ValueError("invalid server configuration: " + "; ".join(problems))

    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServeConfig:
        """Read the SageMaker serving environment; ``overrides`` (not None) win over it."""
        env = os.environ if env is None else env

        def get(name: str, convert: Callable[[str], Any], default: Any) -> Any:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                return convert(raw)
            except ValueError as exc:
                raise ValueError(f"invalid {name}={raw!r}: {exc}") from exc

        from segmentation_trainer.contract import TrainingPaths, base_dir

        cpus = available_cpus()
        workers = get("SAGEMAKER_MODEL_SERVER_WORKERS", int, default_workers(cpus))
        values: dict[str, Any] = {
            "model_dir": TrainingPaths.resolve(base_dir(dict(env))).model_dir,
            "port": get("SAGEMAKER_BIND_TO_PORT", int, 8080),
            "workers": workers,
            "timeout_s": get("SAGEMAKER_MODEL_SERVER_TIMEOUT", int, 60),
            "max_payload_mb": get("SAGEMAKER_MAX_PAYLOAD_IN_MB", float, 6.0),
            "batch_strategy": get("SAGEMAKER_BATCH_STRATEGY", lambda s: s.upper(), "SINGLE_RECORD"),
            "max_pixels": get("EARTHMON_MAX_PIXELS", int, 64 * 2**20),
            "overlap": get("EARTHMON_WINDOW_OVERLAP", float, 1 / 3),
            "window_batch": get("EARTHMON_WINDOW_BATCH", int, 4),
            "min_building_pixels": get("EARTHMON_MIN_BUILDING_PIXELS", int, 80),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "threads_per_worker" not in values:
            values["threads_per_worker"] = max(1, cpus // max(1, values["workers"]))
        values["model_dir"] = Path(values["model_dir"])
        return cls(**values)


# ----------------------------------------------------------------------------------------------- the model
@dataclass
class LoadedModel:
    """A loaded network as a forward callable plus the metadata inference needs."""

    forward: Callable[[np.ndarray], np.ndarray]
    metadata: dict

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


def load_model_dir(model_dir: Path) -> LoadedModel:
    """The I/O edge: load the exported network with MXNet (imported here, in the worker)."""
    from segmentation_trainer.devices import default_context
    from segmentation_trainer.export import load_model
    from segmentation_trainer.predict import mxnet_forward

    ctx = default_context()
    net, metadata = load_model(str(model_dir), ctx=ctx)
    net.hybridize(static_alloc=True)
    forward = mxnet_forward(net, ctx)
    crop = metadata["crop_size"]
    height, width = (crop, crop) if isinstance(crop, int) else crop
    with warnings.catch_warnings():  # the unused auxiliary head is reported once, when the graph is built
        warnings.filterwarnings("ignore", message=".*is not used by any computation.*")
        forward(np.zeros((1, int(metadata["bands"]), int(height), int(width)), np.float32))
    return LoadedModel(forward, metadata)


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


# ----------------------------------------------------------------------------------------------- inference
def infer(body: bytes, content_type: str | None, accept: str | None, model: LoadedModel, config: ServeConfig):
    """One request, pure apart from the network: (body bytes, response media type)."""
    media = codecs.parse_content_type(content_type)
    answer = codecs.negotiate_accept(accept)
    if len(body) > config.max_payload_bytes:
        raise codecs.PayloadTooLarge(
            f"request body of {len(body)} bytes exceeds {config.max_payload_mb:g} MB "
            "(SAGEMAKER_MAX_PAYLOAD_IN_MB): split the image into tiles"
        )
    predictor = model.predictor(config)
    bands = predictor.config.bands
    # the band count and the decoded size are checked from the body's header, before any pixel is decoded
    names = model.metadata.get("band_names")
    image = codecs.decode_request(
        body,
        media,
        bands=bands,
        max_pixels=config.max_pixels,
        band_names=names if isinstance(names, list) else None,
    )
    probabilities = predictor.probabilities(image.array)
    num_classes = predictor.config.num_classes
    if answer in (codecs.RECORDIO_PROTOBUF, codecs.PROTOBUF):
        return codecs.encode_probabilities(probabilities), answer
    if image.nodata is None:  # no nodata declared by the request: the training data's nodata value, if any
        image.nodata = model.nodata_value()
    mask = class_mask(probabilities, ignore=image.nodata_mask(), ignore_value=codecs.IGNORE_CLASS)
    if answer == codecs.PNG:
        return codecs.encode_png(mask, num_classes), answer
    if answer == codecs.TIFF:
        names = model.metadata.get("class_names")
        return codecs.encode_geotiff(mask, image.crs, image.transform, names), answer
    summary = codecs.summarize(
        mask,
        num_classes,
        model.metadata.get("class_names"),
        building_class(model.metadata),
        config.min_building_pixels,
    )
    return codecs.encode_json(summary), answer


# ----------------------------------------------------------------------------------------------- one at a time
class InferenceGate:
    """Serialises inferences within a worker process (the math already uses the worker's cores) and tells the
    worker's accept loop whether it is busy, so idle workers take new connections first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._in_flight = 0

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    def __enter__(self) -> InferenceGate:
        with self._count_lock:
            self._in_flight += 1
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        with self._count_lock:
            self._in_flight -= 1


GATE = InferenceGate()  # one per worker process
BUSY_ACCEPT_DELAY_S = 0.05

try:  # the production worker class (gunicorn is in the image; the in-process app does not need it)
    from gunicorn.workers.gthread import ThreadWorker as _ThreadWorker
except ImportError:  # pragma: no cover
    _ThreadWorker = object


class BalancedThreadWorker(_ThreadWorker):  # type: ignore[misc, valid-type]
    """gunicorn's threaded worker, minus its greed: a worker busy with an inference waits a moment before
    accepting, so a new connection goes to an idle worker when there is one. Its second thread still
    answers /ping at once while an inference runs (SageMaker wants /ping within 2 s)."""

    def accept(self, listener):  # noqa: D102 - gunicorn's hook
        if GATE.busy:
            time.sleep(BUSY_ACCEPT_DELAY_S)  # an idle worker, if any, accepts first; EAGAIN is then ignored
        return super().accept(listener)


# ----------------------------------------------------------------------------------------------- HTTP app
def create_app(config: ServeConfig, loader: Callable[[], LoadedModel] | None = None):
    """The WSGI application (Flask). ``loader`` defaults to loading ``config.model_dir`` with MXNet."""
    from flask import Flask, Response, request

    holder = ModelHolder(loader or (lambda: load_model_dir(config.model_dir))).start()
    app = Flask("segmentation_trainer.serve")
    app.config["MAX_CONTENT_LENGTH"] = None  # checked below, with a helpful message
    app.extensions["earthmon.model"] = holder

    def error(status: int, message: str) -> Response:
        return Response(json.dumps({"error": message}), status=status, mimetype="application/json")

    @app.get("/ping")
    def ping() -> Response:
        if holder.ready:
            return Response("", status=200)
        if holder.error:
            return error(500, f"model failed to load from {config.model_dir}: {holder.error}")
        return error(503, "model is loading")

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        body = {
            "MaxConcurrentTransforms": config.workers,
            "BatchStrategy": config.batch_strategy,
            "MaxPayloadInMB": int(config.max_payload_mb) if config.max_payload_mb >= 1 else 1,
        }
        return Response(json.dumps(body), status=200, mimetype="application/json")

    @app.post("/invocations")
    def invocations() -> Response:
        started = time.perf_counter()
        try:
            codecs.parse_content_type(request.headers.get("Content-Type"))
            codecs.negotiate_accept(request.headers.get("Accept"))
            length = request.content_length
            if length is not None and length > config.max_payload_bytes:
                raise codecs.PayloadTooLarge(
                    f"request body of {length} bytes exceeds {config.max_payload_mb:g} MB "
                    "(SAGEMAKER_MAX_PAYLOAD_IN_MB): split the image into tiles"
                )
            body = request.stream.read(config.max_payload_bytes + 1)
            if not holder.wait(config.model_wait_s) or holder.model is None:
                reason = holder.error or "model is still loading"
                return error(503, f"model not available: {reason}")
            with GATE:
                payload, media = infer(
                    body,
                    request.headers.get("Content-Type"),
                    request.headers.get("Accept"),
                    holder.model,
                    config,
                )
        except codecs.CodecError as exc:
            log.info("invocation rejected (%d): %s", exc.status, exc)
            return error(exc.status, str(exc))
        except Exception as exc:
            log.exception("invocation failed")
            return error(500, f"inference failed: {type(exc).__name__}: {exc}")
        log.debug(
            "invocation %s -> %s in %.0f ms",
            request.content_type,
            media,
            1e3 * (time.perf_counter() - started),
        )
        return Response(payload, status=200, mimetype=media)

    return app


# ----------------------------------------------------------------------------------------------- gunicorn
def gunicorn_options(config: ServeConfig) -> dict[str, Any]:
    return {
        "bind": f"{config.host}:{config.port}",
        "workers": config.workers,
        # threads: one runs the inference (GATE: one at a time), the other answers /ping meanwhile
        "worker_class": "segmentation_trainer.serve.BalancedThreadWorker",
        "threads": 2,
        "timeout": config.timeout_s + 30,
        "graceful_timeout": GRACEFUL_TIMEOUT_S,
        # no keep-alive: a kept connection would pin its next requests to one worker while others idle;
        # a reconnect costs microseconds next to an inference
        "keepalive": 0,
        "backlog": 2048,
        "preload_app": False,  # each worker imports MXNet and loads the model after the fork
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
        "access_log_format": 'worker %(p)s %(h)s "%(r)s" %(s)s %(B)s bytes %(M)s ms',
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
    }


def check_model_dir(model_dir: Path) -> None:
    """Fail fast, before starting workers, when the model directory is missing or empty."""
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"model directory {model_dir} does not exist: SageMaker extracts model.tar.gz there; "
            "outside a container set SAGEMAKER_BASE_DIR (the model is read from $SAGEMAKER_BASE_DIR/model)"
        )
    if not any(model_dir.iterdir()):
        raise FileNotFoundError(f"model directory {model_dir} is empty: expected the files of a training job")


def run(config: ServeConfig) -> None:
    """Serve until SIGTERM/SIGINT (blocks)."""
    from gunicorn.app.base import BaseApplication

    check_model_dir(config.model_dir)
    # The math libraries read these when MXNet is imported, in each worker after the fork.
    threads = str(config.threads_per_worker)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = threads
    os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", threads)
    options = {k: v for k, v in gunicorn_options(config).items() if v is not None}

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(message)s")
            return create_app(config)

    log.info(
        "serving %s on %s:%d with %d worker(s) x %d thread(s)",
        config.model_dir,
        config.host,
        config.port,
        config.workers,
        config.threads_per_worker,
    )
    Server().run()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="segmentation-trainer serve",
        description="Serve a trained model over HTTP (the SageMaker inference contract: /ping, /invocations, "
        "/execution-parameters). Defaults come from the SageMaker environment variables.",
    )
    parser.add_argument("--model-dir", type=Path, help="model directory (default: $SAGEMAKER_BASE_DIR/model)")
    parser.add_argument("--host", default=None, help="address to bind (default 0.0.0.0)")
    parser.add_argument(
        "--port", type=int, default=None, help="port (default $SAGEMAKER_BIND_TO_PORT or 8080)"
    )
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per vCPU)")
    parser.add_argument(
        "--threads-per-worker",
        type=int,
        default=None,
        help="math threads per worker (default: vCPUs / workers)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(message)s")
    try:
        config = ServeConfig.from_env(
            model_dir=args.model_dir,
            host=args.host,
            port=args.port,
            workers=args.workers,
            threads_per_worker=args.threads_per_worker,
        )
        run(config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # run the importable module, not this __main__ copy: the worker class gunicorn imports by name must share
    # the app's GATE
    from segmentation_trainer.serve import main as _main

    raise SystemExit(_main())
