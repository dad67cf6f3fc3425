"""The server's configuration: :class:`ServeConfig`, read once from the SageMaker serving environment."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BATCH_STRATEGIES = ("SINGLE_RECORD", "MULTI_RECORD")
FRONTS = ("auto", "nginx", "none")
ENGINES = ("auto", "mxnet", "onnx")  # segmentation_trainer.serving.engines
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
    engine: str = "auto"
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
        if self.engine not in ENGINES:
            problems.append(f"EARTHMON_SERVE_ENGINE must be one of {', '.join(ENGINES)}, got {self.engine!r}")
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
            "engine": get("EARTHMON_SERVE_ENGINE", lambda s: s.lower(), "auto"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "threads_per_worker" not in values:
            values["threads_per_worker"] = max(1, cpus // max(1, values["workers"]))
        values["model_dir"] = Path(values["model_dir"])
        return cls(**values)
