"""Script mode: a user's training script run by the SageMaker training toolkit, as SageMaker's framework
containers run one (``sagemaker_training.entry_point.run``).

A job names its script with the ``sagemaker_program`` hyperparameter (or ``SAGEMAKER_PROGRAM``), and its code with
``sagemaker_submit_directory`` (an ``s3://`` sourcedir.tar.gz, a local directory or tarball, ``file://...``), or
delivers the code as the ``code`` channel (``/opt/ml/input/data/code``: the directory, or the one ``.tar.gz`` in
it). The code is unpacked into ``<base>/code``; the script runs there with this image's Python (MXNet, GluonCV,
rasterio and segmentation_trainer importable), the ``SM_*`` variables (``SM_HPS``, ``SM_CHANNEL_<NAME>``,
``SM_MODEL_DIR``, ``SM_NUM_GPUS``, ...) and the hyperparameters as ``--name value`` arguments. Its exit status is
the job's; when it fails, the toolkit's account (exit code, error lines, command) goes to ``output/failure``.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from pathlib import Path

from segmentation_trainer.contract import ContractError, write_failure
from segmentation_trainer.toolkit import (
    CHANNEL_NAME,
    CODE_CHANNEL,
    PROGRAM_HP,
    SUBMIT_DIR_HP,
    Job,
    environment_module,
)

log = logging.getLogger(__name__)

_PROGRAM = re.compile(r"[A-Za-z0-9_+.-]+(/[A-Za-z0-9_+.-]+)*")


def check_program(name: str) -> str:
    """A script name is a plain relative path inside the code: no absolute path, no '..', no leading '-'."""
    problem = None
    if not name:
        problem = "is empty"
    elif name.startswith("/"):
        problem = "is an absolute path"
    elif name.startswith("-"):
        problem = "starts with '-' (it would be read as an option)"
    elif not _PROGRAM.fullmatch(name):
        problem = "has characters other than letters, digits, '.', '_', '+', '-' and '/' between names"
    elif any(part in (".", "..") for part in name.split("/")):
        problem = "has a '.' or '..' path segment (it must stay inside the code)"
    if problem:
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise ContractError(
            f"{PROGRAM_HP}={shown!r} {problem}: name the script by its path inside the submitted code, "
            "e.g. train.py or src/train.py"
        )
    return name


def check_script_channels(job: Job) -> list[str]:
    """The script owns its channels (any names, ``code`` included); the names must be plain folder names."""
    bad = [name for name in job.input_data_config if not CHANNEL_NAME.fullmatch(str(name))]
    if bad:
        raise ContractError(f"channel names must be plain folder names (letters, digits, . _ -): {bad[:5]}")
    return sorted(job.input_data_config)


def code_source(job: Job, code_dir: Path) -> str:
    """Where the code comes from, for the toolkit's download_and_extract (s3 URI, local directory or tarball)."""
    channel = job.paths.channel(CODE_CHANNEL)
    if channel.is_dir():
        entries = [p for p in channel.iterdir() if not p.name.startswith(".")]
        tars = [p for p in entries if p.is_file() and p.name.endswith((".tar.gz", ".tgz"))]
        return str(tars[0]) if len(entries) == 1 and tars else str(channel)
    submit = job.submit_directory
    if submit:
        if submit.startswith("s3://"):
            return submit
        local = submit.removeprefix("file://")
        if not Path(local).exists():
            raise ContractError(
                f"{SUBMIT_DIR_HP}={submit} does not exist in the container: give an s3:// URI of the "
                "sourcedir.tar.gz, or deliver the code as the 'code' channel"
            )
        return local
    if code_dir.is_dir() and any(code_dir.iterdir()):
        return str(code_dir)  # code already there (baked into a derived image)
    raise ContractError(
        f"{PROGRAM_HP}={job.program} names a script but no code was given: set {SUBMIT_DIR_HP} (s3://... "
        "sourcedir.tar.gz) or add a 'code' channel holding the script"
    )


def _forward_sigterm() -> None:
    """As PID 1 of a container (StopTrainingJob, spot), pass SIGTERM on to the script (our process group)."""
    if os.getpid() != os.getpgrp():
        return  # not a process group leader (a test, a shell): leave the signal alone
    passed = []

    def forward(signum, _frame) -> None:
        if not passed:
            passed.append(signum)
            log.warning("SIGTERM received: passing it on to the training script")
            os.killpg(os.getpgrp(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)


def run_user_script(job: Job) -> int:
    """Run ``job.program`` with the toolkit; returns the job's exit status (the script's)."""
    from sagemaker_training import entry_point, errors, files, process

    paths = job.paths
    try:
        assert job.program is not None
        program = check_program(job.program)
        process.validate_entry_point(program)  # the toolkit's own rule, the same one
        channels = check_script_channels(job)
        env_module = environment_module(paths)
        code_dir = Path(env_module.code_dir)
        source = code_source(job, code_dir)
        log.info("script mode: %s from %s, channels: %s", program, source, ", ".join(channels) or "none")
        try:
            files.download_and_extract(uri=source, path=str(code_dir))
        except (OSError, ValueError) as exc:  # ValueError: a tarball member the toolkit refuses
            raise ContractError(f"the code at {source} could not be unpacked: {exc}") from None
        if not (code_dir / program).is_file():
            found = sorted(f.relative_to(code_dir).as_posix() for f in code_dir.rglob("*") if f.is_file())
            found = found[:10]
            raise ContractError(
                f"{PROGRAM_HP}={program} is not in the submitted code ({source}); it holds: "
                f"{', '.join(found) or 'nothing'}"
            )
    except (ContractError, errors.ClientError) as exc:
        message = f"ClientError: {' '.join(str(exc).split())}"
        log.error("%s", message)
        write_failure(paths, message)
        return 2
    if len(job.hosts) == 1:
        # entry_point.run waits for every host's DNS name (up to 15 min); one host is this container
        os.environ.setdefault("SM_STUDIO_LOCAL_MODE", "True")
    _forward_sigterm()
    try:
        entry_point.run(
            uri=str(code_dir),
            user_entry_point=program,
            args=job.env.to_cmd_args(),
            env_vars=job.env.to_env_vars(),
            capture_error=True,
        )
    except errors.ExecuteUserScriptError as exc:
        status = _status(exc.return_code)
        log.error("the training script %s exited with status %d", program, status)
        write_failure(paths, str(exc))
        return status
    except errors.ClientError as exc:  # installing its requirements.txt / setup.py failed
        write_failure(paths, f"ClientError: {exc}")
        log.error("ClientError: %s", exc)
        return 2
    files.write_success_file()
    log.info("the training script %s finished", program)
    return 0


def _status(return_code: str) -> int:
    """The script's status as the job's: a signal -N becomes 128+N (as a shell reports it)."""
    try:
        code = int(return_code)
    except ValueError:
        return 1
    if code < 0:
        return 128 + (-code)
    return code if 0 < code < 256 else 1
