"""The training job as the SageMaker training toolkit reads it (``sagemaker_training.environment``).

``train`` in the image reads the contract through the toolkit, as SageMaker's framework containers do: the
hyperparameters (each value JSON-decoded when it can be, the ``sagemaker_*`` ones split off), the channels
(``inputdataconfig.json``), the hosts and the current host (``resourceconfig.json``), the GPUs, and the model and
output paths; and the toolkit runs a user's script (:mod:`segmentation_trainer.script_mode`). The project keeps its
own typed checks on top (:mod:`segmentation_trainer.hyperparameters`, :func:`contract.check_channels`).

How the toolkit finds the paths (sagemaker_training/environment.py, 5.1.4): at *import*, from
``SAGEMAKER_BASE_DIR`` (default ``/opt/ml``) into module constants (``base_dir``, ``model_dir``, ``code_dir``,
``output_dir``, ``input_config_dir``, ...); if neither ``/opt/ml`` nor the variable exists it makes a whole tree
under ``~/sagemaker_local/jobs/<time>/opt/ml``, and it always creates ``<base>/code``. So
:func:`environment_module` sets ``SAGEMAKER_BASE_DIR`` to the job's base directory *before* the import (the
``~/sagemaker_local`` fallback never happens) and reloads the module when it was loaded for another base (tests,
``train --base-dir``). :mod:`segmentation_trainer.contract` keeps the same path definitions for light importers
(the launcher) that must not need the toolkit.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from segmentation_trainer.contract import (
    ContractError,
    TrainingPaths,
    read_hyperparameters,
    read_input_data_config,
    read_resource_config,
)

PROGRAM_HP = "sagemaker_program"  # the SDK's name for the user's script
PROGRAM_ENV = "SAGEMAKER_PROGRAM"  # the same, set as an environment variable (a BYO image's default)
SUBMIT_DIR_HP = "sagemaker_submit_directory"  # the code: an s3:// tarball, a local directory or tarball
SUBMIT_DIR_ENV = "SAGEMAKER_SUBMIT_DIRECTORY"
CODE_CHANNEL = "code"  # SageMaker can deliver the code as this channel (/opt/ml/input/data/code)
CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # SageMaker's ChannelName (and no leading dot)


class _Given(dict):
    """An empty mapping that counts as given: Environment() reads the file again for an empty (falsy) one."""

    def __bool__(self) -> bool:
        return True


def environment_module(paths: TrainingPaths) -> ModuleType:
    """``sagemaker_training.environment`` with its paths under ``paths.base`` (sets SAGEMAKER_BASE_DIR)."""
    base = str(paths.base)
    name = "sagemaker_training.environment"
    module = sys.modules.get(name)
    if module is not None and module.base_dir == base:
        return module
    previous = os.environ.get("SAGEMAKER_BASE_DIR")
    os.environ["SAGEMAKER_BASE_DIR"] = base  # read by the module's import-time code only
    try:
        return importlib.import_module(name) if module is None else importlib.reload(module)
    finally:  # the process's environment as it was (in a job it was this base already, or unset = /opt/ml)
        if previous is None:
            del os.environ["SAGEMAKER_BASE_DIR"]
        else:
            os.environ["SAGEMAKER_BASE_DIR"] = previous


@dataclass(frozen=True)
class Job:
    """What a training job was given, read by the toolkit (``env`` is its ``Environment``)."""

    paths: TrainingPaths
    hyperparameters: dict[str, str]  # the user's, as strings (the built-in's parser types them)
    sagemaker_hyperparameters: dict[str, Any]  # sagemaker_program, sagemaker_submit_directory, ...
    input_data_config: dict[str, Any]
    channel_dirs: dict[str, Path]
    current_host: str
    hosts: tuple[str, ...]
    num_gpus: int
    model_dir: Path
    output_dir: Path
    output_data_dir: Path
    program: str | None  # the user's script, when one is named (else the built-in algorithm runs)
    submit_directory: str | None
    env: Any


def _as_string(value: Any) -> str:
    """Hyperparameter values are text in SageMaker; a hand-written file may hold numbers or booleans."""
    return value if isinstance(value, str) else json.dumps(value)


def read_job(paths: TrainingPaths, environ: dict[str, str] | None = None) -> Job:
    """The job under ``paths`` through ``sagemaker_training.environment.Environment``.

    The config files are read by the project's readers first (their messages for invalid JSON; defaults for a
    hand-made local tree without resourceconfig.json / inputdataconfig.json: one host ``algo-1``, the channel
    folders present) and handed to the toolkit, which splits and decodes them as in SageMaker's own containers.
    """
    environ = os.environ if environ is None else environ
    env_module = environment_module(paths)
    if paths.resource_config_file.is_file():
        read_resource_config(paths)  # the project's message for a broken file
        resource_config = json.loads(paths.resource_config_file.read_text())
        if not isinstance(resource_config, dict) or "hosts" not in resource_config:
            raise ContractError("resourceconfig.json must hold an object with current_host and hosts")
        resource_config.setdefault("current_host", resource_config["hosts"][0])
    else:
        resource_config = {"current_host": "algo-1", "hosts": ["algo-1"]}
    if paths.input_data_config_file.is_file():
        input_data_config = read_input_data_config(paths)
    else:
        data = paths.data_dir
        present = sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
        input_data_config = {name: {"TrainingInputMode": "File"} for name in present}
    hyperparameters = read_hyperparameters(paths)  # the project's message for a file that is not an object
    env = env_module.Environment(
        resource_config=resource_config,
        input_data_config=input_data_config or _Given(),
        hyperparameters=None,  # the toolkit reads the file itself: values JSON-decoded for the user's script
    )
    sm_hps = _sagemaker_hps(hyperparameters)
    program = env.user_entry_point or None  # SAGEMAKER_PROGRAM, else the sagemaker_program hyperparameter
    submit = env.module_dir if env.module_dir != env_module.code_dir else None  # the hyperparameter
    submit = submit or environ.get(SUBMIT_DIR_ENV) or None
    return Job(
        paths=paths,
        # the built-in's parser gets the file's own text for the names the toolkit keeps (sagemaker_* split off)
        hyperparameters={k: _as_string(hyperparameters.get(k, v)) for k, v in env.hyperparameters.items()},
        sagemaker_hyperparameters=sm_hps,
        input_data_config=dict(env.input_data_config),
        channel_dirs={name: Path(d) for name, d in env.channel_input_dirs.items()},
        current_host=str(env.current_host),
        hosts=tuple(str(h) for h in env.hosts),
        num_gpus=int(env.num_gpus),
        model_dir=Path(env.model_dir),
        output_dir=Path(env.output_dir),
        output_data_dir=Path(env.output_data_dir),
        program=None if program is None else str(program),
        submit_directory=None if submit is None else str(submit),
        env=env,
    )


def _sagemaker_hps(raw: dict[str, Any]) -> dict[str, Any]:
    """The ``sagemaker_*`` hyperparameters, JSON-decoded like the toolkit does (the SDK encodes them)."""
    out = {}
    for key, value in raw.items():
        if key.startswith("sagemaker_"):
            try:
                out[key] = json.loads(value) if isinstance(value, str) else value
            except ValueError:
                out[key] = value
    return out
