"""SageMaker SDK 2.x local mode for the model workflow (``--local``): needs Docker and docker compose.

Local mode runs the same image with the same contract on this machine: ``train --local`` runs the training job
in a container (channels may be ``s3://`` or ``file://``; model.tar.gz lands in ``--output``), ``deploy --local``
starts the image's ``serve`` on localhost:8080 until Ctrl-C / SIGTERM, and ``predict --local`` calls it.

The keyword arguments are built by pure functions (tested); the functions that start containers are thin.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Mapping
from typing import Any

from launcher.model.requests import TrainingSpec
from launcher.model.source import Script
from launcher.sdk_local import local_mode_scratch, local_session
from segmentation_trainer.contract import METRIC_DEFINITIONS

LOCAL_PORT = 8080


def estimator_arguments(spec: TrainingSpec, name: str, script: Script | None = None) -> dict[str, Any]:
    """Keyword arguments of ``sagemaker.estimator.Estimator`` and ``fit`` for a local training job; with a
    ``script`` (``train --entry-point --local``), the SDK's own ``entry_point`` and ``source_dir``: it packs the
    folder and sets ``sagemaker_program`` / ``sagemaker_submit_directory`` itself (local code, no upload)."""
    metrics = METRIC_DEFINITIONS if spec.metric_definitions is None else spec.metric_definitions
    estimator: dict[str, Any] = {
        "image_uri": spec.image,
        "role": spec.role,
        "instance_count": 1,  # local mode runs one container per instance on one machine
        "instance_type": "local",
        "hyperparameters": {k: str(v) for k, v in spec.hyperparameters.items()},
        "output_path": spec.output_path,
        "metric_definitions": [dict(m) for m in metrics],
        "base_job_name": name,
        "volume_size": spec.volume_gb,
        "max_run": spec.max_runtime_s,
    }
    if script is not None:
        estimator.update(entry_point=script.program, source_dir=str(script.source_dir))
    return {
        "estimator": estimator,
        "fit": {"inputs": dict(spec.channels), "job_name": name, "wait": True, "logs": "All"},
    }


def model_arguments(image: str, model_data: str, role: str, environment: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments of ``sagemaker.model.Model`` and ``deploy`` for a local endpoint."""
    return {
        "model": {"image_uri": image, "model_data": model_data, "role": role, "env": dict(environment)},
        "deploy": {"initial_instance_count": 1, "instance_type": "local"},
    }


def train_local(
    spec: TrainingSpec, name: str, script: Script | None = None
) -> Any:  # pragma: no cover - Docker
    from sagemaker.estimator import Estimator

    args = estimator_arguments(spec, name, script)
    with local_mode_scratch() as scratch:
        estimator = Estimator(sagemaker_session=local_session(scratch), **args["estimator"])
        estimator.fit(**args["fit"])
        return estimator.model_data


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def deploy_local(
    image: str,
    model_data: str,
    role: str,
    environment: Mapping[str, str],
    stop: threading.Event | None = None,
) -> None:  # pragma: no cover - exercised by the container tests
    """Serve the model on localhost:8080 until Ctrl-C or SIGTERM (or ``stop`` is set), then stop the container.

    Refuses to start when the port is taken: local mode would otherwise report the other server's /ping as
    this endpoint's health."""
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor

    if port_in_use(LOCAL_PORT):
        raise RuntimeError(
            f"port {LOCAL_PORT} is already in use (another `launcher deploy --local` or `serve`?): stop it first "
            "(docker ps; docker rm -f CONTAINER)"
        )
    stop = stop or threading.Event()
    previous = {}
    # set explicitly: a shell's background job starts with SIGINT ignored
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        with local_mode_scratch() as scratch:  # the downloaded model.tar.gz and its extraction live here
            args = model_arguments(image, model_data, role, environment)
            # predictor_cls: without one, Model.deploy returns None and there is nothing to delete the endpoint with
            model = Model(sagemaker_session=local_session(scratch), predictor_cls=Predictor, **args["model"])
            predictor = model.deploy(**args["deploy"])
            try:
                stop.wait()
            finally:
                # the SDK stops compose; leaving the scratch context waits for the container to exit, then removes it
                predictor.delete_endpoint()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
