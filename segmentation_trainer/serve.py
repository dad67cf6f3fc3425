"""The inference server of the training image: ``docker run IMAGE serve`` (hosting and batch transform).

- ``GET /ping``: 200 once this worker's model is loaded, 503 while it loads, 500 if loading failed (the
  reason in the body and the log).
- ``POST /invocations``: one image in (``image/jpeg``, ``image/png``, ``image/tiff``, ``application/x-npy``),
  the prediction out by ``Accept`` (see :mod:`segmentation_trainer.codecs`). Errors: 415 unsupported
  Content-Type, 406 unsupported Accept, 413 body or image too large, 400 corrupt image or wrong band count,
  503 model not loaded or every inference slot busy, 504 the request cannot finish within its deadline;
  each with a JSON body ``{"error": "..."}`` saying what to do.
- ``GET /execution-parameters``: batch transform settings (``MaxConcurrentTransforms`` = workers,
  ``BatchStrategy``, ``MaxPayloadInMB``), honouring ``SAGEMAKER_MAX_PAYLOAD_IN_MB`` and
  ``SAGEMAKER_BATCH_STRATEGY``.

Production server: gunicorn, pre-forked workers (one per vCPU by default, ``SAGEMAKER_MODEL_SERVER_WORKERS``
overrides), each with its own copy of the model and ``cpus / workers`` math threads, one inference at a
time per worker (inference is CPU-bound) while a second thread answers ``/ping``; busy workers let idle ones
accept new connections first (:class:`BalancedThreadWorker`). SIGTERM stops accepting and lets in-flight
requests finish within 25 s (SageMaker sends SIGKILL 30 s after SIGTERM). The master never imports MXNet:
workers load it after the fork.

Staying healthy under hostile or mistaken input (docs/security/endpoint-serving.md):

- a request deadline (``EARTHMON_REQUEST_DEADLINE_S``, below SageMaker's 60 s invocation timeout): an image whose
  window count times the fastest measured time per window exceeds what is left of it is refused before
  the prediction starts, a running prediction checks it between window batches; both answer 504 and free the
  inference slot. ``SAGEMAKER_MODEL_SERVER_TIMEOUT`` + 10 s is the last resort: a worker whose inference
  still runs then (a single forward pass ignoring the deadline) is restarted;
- admission: each worker runs one inference and lets ``EARTHMON_QUEUE_PER_WORKER`` wait (for at most the
  deadline); more are answered 503 at once, so ``/ping`` always finds a free thread (within 2 s under load);
- the front (``EARTHMON_SERVE_FRONT``): ``nginx`` (the image's default, through ``auto`` when an ``nginx``
  binary is on PATH) listens on the port, reads whole request bodies itself (header and body read timeouts,
  ``client_max_body_size`` = the payload limit) and passes complete requests to gunicorn over a private unix
  socket, so slow or stalled clients hold no worker thread. ``none`` (``auto`` without nginx, e.g. on a
  laptop) is gunicorn alone on the port, where a slow client holds a thread for as long as it trickles.

Configuration comes from the environment SageMaker sets (read once, in :meth:`ServeConfig.from_env`):

=================================  =========================================================  =========
``SAGEMAKER_BIND_TO_PORT``         port to listen on                                          8080
``SAGEMAKER_BASE_DIR``             root of the contract paths; the model is in ``model/``     /opt/ml
``SAGEMAKER_MODEL_SERVER_WORKERS`` worker processes                                           vCPUs
``SAGEMAKER_MODEL_SERVER_TIMEOUT`` hard limit: an inference still running 10 s past it restarts  60
                                   its worker (nginx waits 20 s past it for an answer)
``EARTHMON_REQUEST_DEADLINE_S``    a request's deadline: 504 (refused early or stopped between  min(50, timeout)
                                   window batches), at most SAGEMAKER_MODEL_SERVER_TIMEOUT
``EARTHMON_QUEUE_PER_WORKER``      invocations waiting per worker beside the running one       2
                                   (more: 503 at once)
``EARTHMON_SERVE_FRONT``           ``nginx``, ``none`` or ``auto`` (nginx when on PATH)        auto
``EARTHMON_CLIENT_TIMEOUT_S``      nginx: max seconds between reads of a client's headers or   10
                                   body, or writes of the answer
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
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segmentation_trainer import codecs
from segmentation_trainer.predict import Deadline, DeadlineExceeded, PredictionConfig, Predictor, class_mask

log = logging.getLogger("segmentation_trainer.serve")

BATCH_STRATEGIES = ("SINGLE_RECORD", "MULTI_RECORD")
FRONTS = ("auto", "nginx", "none")
GRACEFUL_TIMEOUT_S = 25  # SageMaker sends SIGKILL 30 s after SIGTERM
SAGEMAKER_INVOCATION_TIMEOUT_S = 60  # what SageMaker waits for an /invocations answer
DEFAULT_DEADLINE_S = 50.0  # leaves 10 s of SageMaker's 60 for the body transfer and the answer
HARD_LIMIT_MARGIN_S = (
    10  # a worker whose inference runs this long past SAGEMAKER_MODEL_SERVER_TIMEOUT restarts
)
PROXY_MARGIN_S = 20  # nginx waits this long past SAGEMAKER_MODEL_SERVER_TIMEOUT (after the hard limit)


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
    deadline_s: float = DEFAULT_DEADLINE_S
    queue_per_worker: int = 2
    front: str = "none"
    client_timeout_s: float = 10.0
    unix_socket: str | None = None  # set by the nginx front: gunicorn listens there instead of host:port
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
            problems.append(f"SAGEMAKER_MODEL_SERVER_TIMEOUT must be >= 1 s, got {self.timeout_s}")
        if not 0 < self.deadline_s <= max(1, self.timeout_s):
            problems.append(
                f"EARTHMON_REQUEST_DEADLINE_S must be > 0 and at most SAGEMAKER_MODEL_SERVER_TIMEOUT "
                f"({self.timeout_s} s), got {self.deadline_s:g}"
            )
        if self.queue_per_worker < 0:
            problems.append(f"EARTHMON_QUEUE_PER_WORKER must be >= 0, got {self.queue_per_worker}")
        if self.front not in FRONTS:
            problems.append(f"EARTHMON_SERVE_FRONT must be one of {', '.join(FRONTS)}, got {self.front!r}")
        if self.client_timeout_s <= 0:
            problems.append(f"EARTHMON_CLIENT_TIMEOUT_S must be > 0, got {self.client_timeout_s:g}")
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
        timeout_s = overrides.get("timeout_s") or get("SAGEMAKER_MODEL_SERVER_TIMEOUT", int, 60)
        values: dict[str, Any] = {
            "model_dir": TrainingPaths.resolve(base_dir(dict(env))).model_dir,
            "port": get("SAGEMAKER_BIND_TO_PORT", int, 8080),
            "workers": workers,
            "timeout_s": timeout_s,
            "deadline_s": get(
                "EARTHMON_REQUEST_DEADLINE_S", float, min(DEFAULT_DEADLINE_S, float(timeout_s))
            ),
            "queue_per_worker": get("EARTHMON_QUEUE_PER_WORKER", int, 2),
            "front": get("EARTHMON_SERVE_FRONT", lambda s: s.lower(), "auto"),
            "client_timeout_s": get("EARTHMON_CLIENT_TIMEOUT_S", float, 10.0),
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
    # the fastest time per window measured (at load and on every prediction): the cost estimate of a request
    seconds_per_window: float | None = None

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


def load_model_dir(model_dir: Path, window_batch: int = 4) -> LoadedModel:
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
    # a full batch of windows, twice (the first builds the graph for that shape): the speed the cost estimate of
    # requests starts from
    batch = np.zeros((max(1, window_batch), int(metadata["bands"]), int(height), int(width)), np.float32)
    forward(batch)
    started = time.perf_counter()
    forward(batch)
    model = LoadedModel(forward, metadata)
    model.observe(len(batch), time.perf_counter() - started)
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


# ----------------------------------------------------------------------------------------------- inference
def infer(
    body: bytes,
    content_type: str | None,
    accept: str | None,
    model: LoadedModel,
    config: ServeConfig,
    deadline: Deadline | None = None,
):
    """One request, pure apart from the network: (body bytes, response media type).

    With a ``deadline``, an image whose estimated cost exceeds what is left of it is refused before the
    prediction starts, and the prediction stops between window batches once it passes (:class:`DeadlineExceeded`).
    """
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
    windows = predictor.window_count(*image.array.shape[1:])
    if deadline is not None:
        estimate = model.estimate_s(windows)
        if estimate is not None and estimate > deadline.remaining():
            raise DeadlineExceeded(
                f"this {image.array.shape[2]} x {image.array.shape[1]} image needs {windows} windows, about "
                f"{estimate:.0f} s at the fastest speed measured, more than the {max(0.0, deadline.remaining()):.1f} s "
                "left of the request deadline",
                0,
                windows,
            )
    started = time.perf_counter()
    probabilities = predictor.probabilities(image.array, deadline=deadline)
    model.observe(windows, time.perf_counter() - started)
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
    """Admission and serialisation of inferences within a worker process (the math already uses the worker's
    cores): at most ``limit`` invocations are admitted (one runs, the others wait for the slot, each until its
    deadline), the rest are refused at once so threads stay free for /ping. It also tells the worker's accept
    loop whether it is busy (idle workers take new connections first) and the watchdog since when the running
    inference runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._in_flight = 0
        self.running_since: float | None = None

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def admit(self, limit: int) -> bool:
        """Count one more invocation in this worker, unless ``limit`` are already in."""
        with self._count_lock:
            if self._in_flight >= limit:
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._count_lock:
            self._in_flight -= 1

    def acquire(self, timeout: float) -> bool:
        """The inference slot, waiting at most ``timeout`` seconds."""
        if not self._lock.acquire(timeout=max(0.0, timeout)):
            return False
        self.running_since = time.monotonic()
        return True

    def release(self) -> None:
        self.running_since = None
        self._lock.release()

    def __enter__(self) -> InferenceGate:  # admitted and holding the slot, without limits (scripts, tests)
        with self._count_lock:
            self._in_flight += 1
        self._lock.acquire()
        self.running_since = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.leave()


GATE = InferenceGate()  # one per worker process
BUSY_ACCEPT_DELAY_S = 0.05

try:  # the production worker class (gunicorn is in the image; the in-process app does not need it)
    from gunicorn.workers.gthread import ThreadWorker as _ThreadWorker
except ImportError:  # pragma: no cover
    _ThreadWorker = object


class BalancedThreadWorker(_ThreadWorker):  # type: ignore[misc, valid-type]
    """gunicorn's threaded worker, minus its greed: a worker busy with an inference waits a moment before
    accepting, so a new connection goes to an idle worker when there is one. Its other threads still
    answer /ping at once while an inference runs (SageMaker wants /ping within 2 s).

    A watchdog thread is the last resort behind the request deadline: gunicorn's own timeout never fires for
    a threaded worker whose main loop is alive, so when one inference has run longer than the gunicorn
    ``timeout`` (SAGEMAKER_MODEL_SERVER_TIMEOUT + 10 s), the worker exits and the master starts a fresh one."""

    def init_process(self):  # noqa: D102 - gunicorn's hook
        threading.Thread(target=self._watchdog, name="inference-watchdog", daemon=True).start()
        super().init_process()

    def _watchdog(self) -> None:
        limit = float(self.cfg.timeout)
        while True:
            time.sleep(min(1.0, limit / 4))
            since = GATE.running_since
            if since is not None and time.monotonic() - since > limit:
                self.log.error(
                    "worker %s: an inference has run %.0f s, past the hard limit of %.0f s "
                    "(SAGEMAKER_MODEL_SERVER_TIMEOUT + %d s): restarting the worker",
                    os.getpid(),
                    time.monotonic() - since,
                    limit,
                    HARD_LIMIT_MARGIN_S,
                )
                os._exit(1)  # not 3 or 4: gunicorn would stop the whole server on those

    def accept(self, listener):  # noqa: D102 - gunicorn's hook
        if GATE.busy:
            time.sleep(BUSY_ACCEPT_DELAY_S)  # an idle worker, if any, accepts first; EAGAIN is then ignored
        return super().accept(listener)


# ----------------------------------------------------------------------------------------------- HTTP app
def create_app(config: ServeConfig, loader: Callable[[], LoadedModel] | None = None):
    """The WSGI application (Flask). ``loader`` defaults to loading ``config.model_dir`` with MXNet."""
    from flask import Flask, Response, request

    holder = ModelHolder(loader or (lambda: load_model_dir(config.model_dir, config.window_batch))).start()
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

    limit = 1 + config.queue_per_worker

    @app.post("/invocations")
    def invocations() -> Response:
        started = time.perf_counter()
        deadline = Deadline(config.deadline_s)  # from the request's arrival: waiting for the slot counts
        admitted = False
        try:
            codecs.parse_content_type(request.headers.get("Content-Type"))
            codecs.negotiate_accept(request.headers.get("Accept"))
            length = request.content_length
            if length is not None and length > config.max_payload_bytes:
                raise codecs.PayloadTooLarge(
                    f"request body of {length} bytes exceeds {config.max_payload_mb:g} MB "
                    "(SAGEMAKER_MAX_PAYLOAD_IN_MB): split the image into tiles"
                )
            admitted = GATE.admit(limit)
            if not admitted:
                log.warning("invocation refused: %d already in this worker", limit)
                return error(
                    503,
                    f"server busy: this worker already has {limit} invocation(s) (1 running, "
                    f"{config.queue_per_worker} waiting, EARTHMON_QUEUE_PER_WORKER): retry later, send fewer "
                    "requests at once, or add instances",
                )
            body = request.stream.read(config.max_payload_bytes + 1)
            if (
                not holder.wait(min(config.model_wait_s, max(0.0, deadline.remaining())))
                or holder.model is None
            ):
                reason = holder.error or "model is still loading"
                return error(503, f"model not available: {reason}")
            if not GATE.acquire(deadline.remaining()):
                log.warning(
                    "invocation refused: no inference slot within the %g s deadline", config.deadline_s
                )
                return error(
                    503,
                    f"server busy: no inference slot became free within the {config.deadline_s:g} s request "
                    "deadline (EARTHMON_REQUEST_DEADLINE_S): retry later or send fewer requests at once",
                )
            try:
                payload, media = infer(
                    body,
                    request.headers.get("Content-Type"),
                    request.headers.get("Accept"),
                    holder.model,
                    config,
                    deadline,
                )
            finally:
                GATE.release()
        except DeadlineExceeded as exc:
            log.warning("invocation stopped at its deadline: %s", exc)
            return error(
                504,
                f"{exc}: the request deadline is {config.deadline_s:g} s (EARTHMON_REQUEST_DEADLINE_S); send "
                "smaller images or tiles (launcher predict tiles any image: lower its --max-payload-mb), or "
                f"raise EARTHMON_REQUEST_DEADLINE_S (at most SAGEMAKER_MODEL_SERVER_TIMEOUT, {config.timeout_s} s)",
            )
        except codecs.CodecError as exc:
            log.info("invocation rejected (%d): %s", exc.status, exc)
            return error(exc.status, str(exc))
        except Exception as exc:
            log.exception("invocation failed")
            return error(500, f"inference failed: {type(exc).__name__}: {exc}")
        finally:
            if admitted:
                GATE.leave()
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
    bind = f"unix:{config.unix_socket}" if config.unix_socket else f"{config.host}:{config.port}"
    return {
        "bind": bind,
        "workers": config.workers,
        # threads: one runs the inference (GATE: one at a time), EARTHMON_QUEUE_PER_WORKER wait for it, and two
        # more always answer /ping (and refuse invocations beyond the queue at once)
        "worker_class": "segmentation_trainer.serve.BalancedThreadWorker",
        "threads": 3 + config.queue_per_worker,
        # the watchdog's hard limit (gunicorn's heartbeat timeout never fires for a live threaded worker)
        "timeout": config.timeout_s + HARD_LIMIT_MARGIN_S,
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


def run_gunicorn(config: ServeConfig) -> None:
    """gunicorn in this process, on host:port or on ``config.unix_socket`` (blocks until SIGTERM/SIGINT)."""
    from gunicorn.app.base import BaseApplication

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
            # gunicorn >= 24 opens a control socket under $HOME otherwise (not writable by every user)
            if "control_socket_disable" in self.cfg.settings:
                self.cfg.set("control_socket_disable", True)

        def load(self):
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(message)s")
            return create_app(config)

    Server().run()


# ----------------------------------------------------------------------------------------------- nginx front
NGINX_CANDIDATES = ("/opt/earthmon/bin/nginx", "/usr/sbin/nginx")


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return next((c for c in NGINX_CANDIDATES if os.access(c, os.X_OK)), None)


def resolve_front(front: str) -> tuple[str, str | None]:
    """("nginx", path) or ("none", None); ``nginx`` without a binary fails with what to do."""
    binary = find_nginx() if front in ("auto", "nginx") else None
    if front == "nginx" and binary is None:
        raise FileNotFoundError(
            "EARTHMON_SERVE_FRONT=nginx but no nginx binary was found on PATH: install nginx "
            "(apt-get install nginx-light) or serve without it (--front none)"
        )
    return ("nginx", binary) if binary else ("none", None)


def _json_literal(message: str) -> str:
    """A JSON error body as an nginx string literal (single-quoted)."""
    return "'" + json.dumps({"error": message}).replace("\\", "\\\\").replace("'", "\\'") + "'"


def nginx_conf(config: ServeConfig, run_dir: Path, socket_path: str, as_root: bool | None = None) -> str:
    """The nginx configuration of the front: the port, body buffering and client timeouts, the payload limit,
    JSON errors; every path it writes (pid, temp files) under ``run_dir`` so any user can run it."""
    as_root = os.geteuid() == 0 if as_root is None else as_root
    host = config.host
    listen = f"[{host}]:{config.port}" if ":" in host else f"{host}:{config.port}"
    proxy_s = config.timeout_s + PROXY_MARGIN_S
    client_s = f"{config.client_timeout_s:g}s"
    too_large = _json_literal(
        f"request body exceeds {config.max_payload_mb:g} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB): split the image into "
        "tiles (launcher predict does)"
    )
    unavailable = _json_literal(
        "the model server is not answering (starting, restarting a worker or stopping): retry in a few seconds"
    )
    too_slow = _json_literal(
        f"no answer within {proxy_s} s (SAGEMAKER_MODEL_SERVER_TIMEOUT + {PROXY_MARGIN_S} s): send smaller "
        "images or tiles"
    )
    slow_client = _json_literal(
        f"the request was not received in time (more than {client_s} between reads, EARTHMON_CLIENT_TIMEOUT_S)"
    )
    user = "user nobody nogroup;  # workers, when started as root\n" if as_root else ""
    temp = "\n".join(
        f"    {kind}_temp_path {run_dir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# generated by segmentation_trainer.serve (EARTHMON_SERVE_FRONT=nginx); removed at exit
{user}worker_processes 1;
daemon off;
pid {run_dir / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;  # gunicorn logs every request
    server_tokens off;
    default_type application/octet-stream;
{temp}
    # slow or stalled clients: nginx, not a worker thread, waits for them, and only so long between reads
    client_header_timeout {client_s};
    client_body_timeout {client_s};
    send_timeout {client_s};
    reset_timedout_connection on;
    keepalive_timeout 60s;
    client_max_body_size {config.max_payload_bytes};
    client_body_buffer_size 1m;
    upstream gunicorn {{ server unix:{socket_path}; }}
    server {{
        listen {listen} default_server backlog=2048;
        location / {{
            proxy_pass http://gunicorn;
            proxy_request_buffering on;  # whole bodies first: gunicorn only sees complete requests
            proxy_buffering on;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 5s;
            proxy_send_timeout {proxy_s}s;
            proxy_read_timeout {proxy_s}s;  # after the request deadline and the worker's hard limit
            proxy_next_upstream off;  # never replay an invocation
            proxy_intercept_errors off;
        }}
        error_page 408 @slow_client;
        error_page 413 @too_large;
        error_page 502 503 @unavailable;
        error_page 504 @too_slow;
        location @slow_client {{ default_type application/json; return 408 {slow_client}; }}
        location @too_large {{ default_type application/json; return 413 {too_large}; }}
        location @unavailable {{ default_type application/json; return 503 {unavailable}; }}
        location @too_slow {{ default_type application/json; return 504 {too_slow}; }}
    }}
}}
"""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Children of the front get SIGKILL if the supervising process dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def run_with_nginx(config: ServeConfig, nginx: str, argv_overrides: list[str]) -> int:
    """nginx on the port, gunicorn on a private unix socket, both children of this process, which forwards
    SIGTERM/SIGINT (gunicorn drains its requests first, then nginx stops gracefully) and stops the other when
    one dies. Returns the exit status."""
    run_dir = Path(tempfile.mkdtemp(prefix="earthmon-serve-"))
    run_dir.chmod(0o711)  # nginx workers (nobody when started as root) reach the socket, list nothing
    socket_path = str(run_dir / "gunicorn.sock")
    conf = run_dir / "nginx.conf"
    conf.write_text(nginx_conf(config, run_dir, socket_path))
    check = subprocess.run([nginx, "-t", "-q", "-e", "stderr", "-p", str(run_dir), "-c", str(conf)],
                           capture_output=True, text=True)  # fmt: skip
    if check.returncode != 0:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise ValueError(f"nginx refused its configuration: {check.stderr.strip()[-500:]}")
    stopping: list[int] = []

    def on_signal(signum, _frame) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["gunicorn"] = subprocess.Popen(
            [sys.executable, "-m", "segmentation_trainer.serve", *argv_overrides, "--front", "none",
             "--unix-socket", socket_path],
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        started = time.monotonic()
        while not os.path.exists(socket_path):
            if procs["gunicorn"].poll() is not None or stopping or time.monotonic() - started > 60:
                break
            time.sleep(0.05)
        if os.path.exists(socket_path) and not stopping:
            procs["nginx"] = subprocess.Popen(
                [nginx, "-e", "stderr", "-p", str(run_dir), "-c", str(conf)],
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
            log.info(
                "nginx front on %s:%d (client timeout %g s, body limit %g MB, request deadline %g s) -> "
                "gunicorn on %s",
                config.host, config.port, config.client_timeout_s, config.max_payload_mb, config.deadline_s,
                socket_path,
            )  # fmt: skip
        while not stopping and all(p.poll() is None for p in procs.values()) and "nginx" in procs:
            time.sleep(0.1)
        gunicorn, front = procs["gunicorn"], procs.get("nginx")
        if stopping:
            gunicorn.send_signal(signal.SIGINT if stopping[0] == signal.SIGINT else signal.SIGTERM)
        elif front is not None and front.poll() is not None:
            log.error("nginx exited with status %s: stopping the server", front.returncode)
            if gunicorn.poll() is None:
                gunicorn.send_signal(signal.SIGTERM)
        try:
            status = gunicorn.wait(GRACEFUL_TIMEOUT_S + 5)
        except subprocess.TimeoutExpired:
            gunicorn.kill()
            status = gunicorn.wait()
        if front is not None and front.poll() is None:
            front.send_signal(signal.SIGQUIT)  # graceful: answers already being sent are finished
            try:
                front.wait(10)
            except subprocess.TimeoutExpired:
                front.kill()
                front.wait()
        if not stopping and status == 0:
            status = 1  # a child died on its own
        if front is None and not stopping:
            log.error("gunicorn did not start (status %s)", status)
        return 0 if stopping and status == 0 else (status or 1)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(run_dir, ignore_errors=True)


def run(config: ServeConfig, argv_overrides: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT (blocks); returns the exit status."""
    check_model_dir(config.model_dir)
    front, nginx = ("none", None) if config.unix_socket else resolve_front(config.front)
    log.info(
        "serving %s on %s with %d worker(s) x %d thread(s), front: %s%s",
        config.model_dir,
        f"unix:{config.unix_socket}" if config.unix_socket else f"{config.host}:{config.port}",
        config.workers,
        config.threads_per_worker,
        front,
        "" if front == "nginx" or config.unix_socket else " (no nginx: slow clients can hold worker threads)",
    )
    if front == "nginx":
        assert nginx is not None
        return run_with_nginx(config, nginx, argv_overrides or [])
    run_gunicorn(config)
    return 0


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
    parser.add_argument(
        "--front",
        choices=FRONTS,
        default=None,
        help="nginx in front of gunicorn (buffers bodies, times out slow clients), none (gunicorn alone on the "
        "port), or auto: nginx when an nginx binary is on PATH (default $EARTHMON_SERVE_FRONT or auto)",
    )
    parser.add_argument("--unix-socket", default=None, help=argparse.SUPPRESS)  # set by the nginx front
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
            front=args.front,
            unix_socket=args.unix_socket,
        )
        # what the gunicorn child of the nginx front gets (the environment carries everything else)
        overrides = ["--model-dir", str(config.model_dir), "--host", config.host, "--port", str(config.port),
                     "--workers", str(config.workers), "--threads-per-worker", str(config.threads_per_worker)]  # fmt: skip
        return run(config, overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # run the importable module, not this __main__ copy: the worker class gunicorn imports by name must share
    # the app's GATE
    from segmentation_trainer.serve import main as _main

    raise SystemExit(_main())
