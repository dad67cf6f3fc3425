"""gunicorn (pre-forked workers), the front's choice, and the ``serve`` command (``main``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from segmentation_trainer.serving.app import create_app
from segmentation_trainer.serving.config import FRONTS, GRACEFUL_TIMEOUT_S, HARD_LIMIT_MARGIN_S, ServeConfig
from segmentation_trainer.serving.front import resolve_front, run_with_nginx

log = logging.getLogger("segmentation_trainer.serve")  # one logger for the whole server, as before the split


def gunicorn_options(config: ServeConfig) -> dict[str, Any]:
    bind = f"unix:{config.unix_socket}" if config.unix_socket else f"{config.host}:{config.port}"
    return {
        "bind": bind,
        "workers": config.workers,
        # threads: one runs the inference (GATE: one at a time), EARTHMON_QUEUE_PER_WORKER wait for it, and two
        # more always answer /ping (and refuse invocations beyond the queue at once)
        "worker_class": "segmentation_trainer.serving.worker.BalancedThreadWorker",
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
