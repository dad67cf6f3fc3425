"""SageMaker SDK 2.x local mode, shared by both workflows (`launcher local --sdk-local`, `train --local`,
`deploy --local`): the one `LocalSession` builder, the scratch folder that holds every host file local mode writes,
and the containers its docker compose leaves behind, removed when the scratch folder is.

Local mode runs `docker compose up` for each job or endpoint, with the compose file in a folder under
``local.container_root``; compose labels its containers with that folder, which is how this module finds the
containers one run started and no others. The selection is pure (`containers_under`); the docker calls are thin.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

from launcher import aws

COMPOSE_WORKING_DIR_LABEL = (
    "com.docker.compose.project.working_dir"  # set by docker compose on its containers
)
STOP_WAIT_S = 20.0  # after the SDK stopped compose: how long its containers may take to exit before removal

TELEMETRY_OPT_OUT = {
    "SchemaVersion": "1.0",
    "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
}


@contextlib.contextmanager
def local_mode_scratch() -> Iterator[str]:
    """A folder for all SageMaker local mode writes on the host (downloaded channels and models, the compose file,
    the containers' /opt/ml trees), removed afterwards: set as ``local.container_root``. Without it local mode leaves
    its S3 downloads in the system temp folder (the size of the data or model, every run)."""
    root = tempfile.mkdtemp(prefix="earthmon-local-mode-")
    try:
        yield root
    finally:
        # The SDK returns when it has signalled docker compose, and compose leaves an interrupted `up`'s containers
        # behind (stopped, or still stopping: an endpoint's would hold port 8080): wait for them, then remove them.
        remove_containers(compose_containers(root))
        shutil.rmtree(root, ignore_errors=True)  # files a container wrote as another user may stay


def local_session(
    container_root: str | None = None,
) -> Any:  # pragma: no cover - needs the sagemaker SDK + Docker
    """The one SageMaker SDK `LocalSession` of the launcher (both workflows): the launcher's boto3 session, the S3
    endpoint of the standard variables if any, telemetry off, local code, local mode's host files under
    ``container_root`` (see `local_mode_scratch`)."""
    from sagemaker.local import LocalSession

    kwargs: dict[str, Any] = {"boto_session": aws.session(), "sagemaker_config": TELEMETRY_OPT_OUT}
    endpoint = aws.s3_endpoint_url()
    if endpoint:
        kwargs["s3_endpoint_url"] = endpoint
    sess = LocalSession(**kwargs)
    sess.config = {
        "local": {"local_code": True, **({"container_root": container_root} if container_root else {})}
    }
    return sess


def containers_under(rows: Iterable[tuple[str, str]], root: str) -> list[str]:
    """The container ids among ``(id, compose working dir)`` rows whose compose project lives under ``root`` (the
    launcher's local mode scratch folder): the containers this run of local mode started, nobody else's."""
    prefix = os.path.join(os.path.realpath(root), "")
    return [cid for cid, wd in rows if wd and os.path.join(os.path.realpath(wd), "").startswith(prefix)]


def compose_containers(root: str) -> list[str]:  # pragma: no cover - Docker (container tests)
    """Containers, running or stopped, of the compose projects under ``root`` (none when Docker cannot be asked:
    local mode then failed before starting any)."""
    try:
        listed = subprocess.run(["docker", "ps", "-aq", "--filter", "label=" + COMPOSE_WORKING_DIR_LABEL],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        ids = listed.stdout.split()
        if not ids:
            return []
        fmt = '{{.Id}} {{index .Config.Labels "' + COMPOSE_WORKING_DIR_LABEL + '"}}'
        inspected = subprocess.run(["docker", "inspect", "--format", fmt, *ids], capture_output=True, text=True,
                                   timeout=60)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [tuple(line.split(" ", 1)) for line in inspected.stdout.splitlines() if " " in line]
    return containers_under(rows, root)  # type: ignore[arg-type]


def remove_containers(ids: list[str], wait_s: float = STOP_WAIT_S) -> None:  # pragma: no cover - Docker
    """Give the stopping containers ``wait_s`` to exit, then remove them (running or not): docker compose leaves
    an interrupted ``up``'s containers behind, and one that did not stop would keep holding the port."""
    deadline = time.monotonic() + wait_s
    while ids and time.monotonic() < deadline:
        running = subprocess.run(["docker", "ps", "-q", "--no-trunc", *[f"--filter=id={i}" for i in ids]],
                                 capture_output=True, text=True, timeout=60).stdout.split()  # fmt: skip
        if not running:
            break
        time.sleep(0.5)
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, text=True, timeout=120)
