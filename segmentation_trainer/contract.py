"""The SageMaker training contract: paths, config files, channels, failure file, checkpoints, metric lines,
hyperparameter choices, the ignore label.

Every path hangs off one base directory, resolved lazily: ``SAGEMAKER_BASE_DIR`` (default ``/opt/ml``), so a
test or a local run relocates all of them at once. Nothing else in the package reads ``/opt/ml`` or the
environment for these paths. The launcher builds its training requests from this module too (channel names,
``MetricDefinitions``, the checkpoint path), so it stays importable without MXNet or numpy (standard library only).
"""

from __future__ import annotations

import json
import os
import re
import string
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BASE_DIR = "/opt/ml"
FAILURE_LIMIT = 1024  # SageMaker shows the first 1024 characters as FailureReason

CHANNELS = (
    "train",
    "validation",
    "train_annotation",
    "validation_annotation",
    "label_map",
    "model",
    "pretrained",
)
# The built-in algorithm's four channels (docs/domain.md section 5); the others are used when present.
REQUIRED_CHANNELS = CHANNELS[:4]
OPTIONAL_CHANNELS = CHANNELS[4:]

IGNORE_LABEL = 255  # label value of pixels that count for no class (the built-in's convention)

# Hyperparameter choices (validated by segmentation_trainer.hyperparameters, offered by the launcher).
ALGORITHMS = ("fcn", "psp", "deeplab")
BACKBONES = ("resnet-50", "resnet-101", "tiny")
OPTIMIZERS = ("sgd", "adam", "adagrad", "nag", "rmsprop")
LR_SCHEDULERS = ("poly", "cosine", "step")

# ----------------------------------------------------------------------------------------------- metric lines
# The built-in algorithm's log lines, byte for byte, e.g.
#   #quality_metric. host: algo-1, epoch: 0, train loss: 1.4757 .
#   #throughput_metric. host: algo-1, epoch: 0, train throughput: 55.04 samples/sec.
# The trainer writes them with these formats and the MetricDefinitions' regexes are built from the same formats.
QUALITY_LINE = "#quality_metric. host: {host}, epoch: {epoch}, {name}: {value:.4f} ."
THROUGHPUT_LINE = "#throughput_metric. host: {host}, epoch: {epoch}, {name}: {value:.2f} samples/sec."
# SageMaker metric name -> (line format, the name in the line)
METRICS: dict[str, tuple[str, str]] = {
    "train:loss": (QUALITY_LINE, "train loss"),
    "validation:pixel_accuracy": (QUALITY_LINE, "validation pixel_accuracy"),
    "validation:mIOU": (QUALITY_LINE, "validation mIOU"),
    "train:throughput": (THROUGHPUT_LINE, "train throughput"),
}
OBJECTIVES = ("validation:mIOU", "validation:pixel_accuracy")  # what a tuning job may maximise
_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_FIELD_PATTERNS = {"host": r"\S+", "epoch": r"\d+"}


def metric_line(metric: str, host: str, epoch: int, value: float) -> str:
    """The log line of one metric (``metric``: a key of METRICS, e.g. ``validation:mIOU``)."""
    fmt, name = METRICS[metric]
    return fmt.format(host=host, epoch=epoch, name=name, value=value)


def _escape(text: str) -> str:
    """Regex metacharacters escaped, spaces and '#' kept as they are (readable in the job's description)."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", text)


def metric_regex(metric: str) -> str:
    """The MetricDefinitions regex of one metric, built from its line format: the literal text escaped, host and
    epoch matched loosely, the value as the one group (any float notation)."""
    fmt, name = METRICS[metric]
    parts = []
    for literal, field_name, _spec, _conv in string.Formatter().parse(fmt):
        parts.append(_escape(literal))
        if field_name == "name":
            parts.append(_escape(name))
        elif field_name == "value":
            parts.append(_NUMBER)
        elif field_name is not None:
            parts.append(_FIELD_PATTERNS[field_name])
    return "".join(parts)


METRIC_DEFINITIONS: tuple[dict[str, str], ...] = tuple(
    {"Name": metric, "Regex": metric_regex(metric)} for metric in METRICS
)


class ContractError(ValueError):
    """The job's configuration or inputs do not follow the contract; the message says what to fix."""


#: The paths inside the container (where SageMaker puts them; the launcher's requests name them).
CONTAINER_BASE = DEFAULT_BASE_DIR


def base_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("SAGEMAKER_BASE_DIR") or DEFAULT_BASE_DIR)


@dataclass(frozen=True)
class TrainingPaths:
    base: Path

    @classmethod
    def resolve(cls, base: str | Path | None = None) -> TrainingPaths:
        return cls(Path(base) if base is not None else base_dir())

    @property
    def config_dir(self) -> Path:
        return self.base / "input" / "config"

    @property
    def hyperparameters_file(self) -> Path:
        return self.config_dir / "hyperparameters.json"

    @property
    def input_data_config_file(self) -> Path:
        return self.config_dir / "inputdataconfig.json"

    @property
    def resource_config_file(self) -> Path:
        return self.config_dir / "resourceconfig.json"

    @property
    def data_dir(self) -> Path:
        return self.base / "input" / "data"

    def channel(self, name: str) -> Path:
        return self.data_dir / name

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @property
    def checkpoint_dir(self) -> Path:
        return self.base / "checkpoints"


def missing_contract(paths: TrainingPaths) -> str | None:
    """Why ``paths`` is not a training job's directory (checked before anything is written), or None."""
    if not paths.base.is_dir():
        return (
            f"the base directory {paths.base} does not exist: inside SageMaker it is /opt/ml; outside, pass "
            "--base-dir (or SAGEMAKER_BASE_DIR) naming a directory with input/config/hyperparameters.json"
        )
    if not paths.hyperparameters_file.is_file():
        return (
            f"no hyperparameters.json in {paths.config_dir} (SageMaker always writes one): write "
            f'{paths.hyperparameters_file} (e.g. {{"num_classes": "2", "num_training_samples": "100"}}) or '
            "point --base-dir / SAGEMAKER_BASE_DIR at the job's directory"
        )
    return None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ContractError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ContractError(f"{what} is not valid JSON ({path}): {exc}") from None


def read_hyperparameters(paths: TrainingPaths) -> dict[str, Any]:
    """The raw hyperparameters (string values); an absent file means none were given."""
    if not paths.hyperparameters_file.is_file():
        return {}
    raw = _read_json(paths.hyperparameters_file, "hyperparameters.json")
    if not isinstance(raw, dict):
        raise ContractError("hyperparameters.json must hold a JSON object")
    return raw


@dataclass(frozen=True)
class ResourceConfig:
    current_host: str = "algo-1"
    hosts: tuple[str, ...] = ("algo-1",)


def read_resource_config(paths: TrainingPaths) -> ResourceConfig:
    if not paths.resource_config_file.is_file():
        return ResourceConfig()
    raw = _read_json(paths.resource_config_file, "resourceconfig.json")
    host = str(raw.get("current_host", "algo-1"))
    hosts = tuple(str(h) for h in raw.get("hosts", [host])) or (host,)
    return ResourceConfig(host, hosts)


def read_input_data_config(paths: TrainingPaths) -> dict[str, Any]:
    if not paths.input_data_config_file.is_file():
        return {}
    raw = _read_json(paths.input_data_config_file, "inputdataconfig.json")
    return raw if isinstance(raw, dict) else {}


def check_channels(paths: TrainingPaths, data_config: dict[str, Any]) -> list[str]:
    """Present channels; raises for unknown channel names and for Pipe mode (this image reads files)."""
    problems = []
    for name, cfg in data_config.items():
        if name not in CHANNELS:
            problems.append(f"unknown channel {name!r} (expected some of: {', '.join(CHANNELS)})")
        if isinstance(cfg, dict) and str(cfg.get("TrainingInputMode", "File")).lower() not in (
            "file",
            "fastfile",
        ):
            problems.append(
                f"channel {name!r}: input mode {cfg.get('TrainingInputMode')} is not supported, use File"
            )
    if problems:
        raise ContractError("; ".join(problems))
    present = [c for c in CHANNELS if paths.channel(c).is_dir()]
    return present


def write_failure(paths: TrainingPaths, message: str) -> None:
    """Write the failure reason (SageMaker keeps the first 1024 characters)."""
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    text = message.strip() or "training failed"
    if len(text) > FAILURE_LIMIT:
        text = text[: FAILURE_LIMIT - 3] + "..."
    paths.failure_file.write_text(text)


def extract_model_channel(channel: Path, dest: Path) -> Path:
    """A ``model`` channel holds model.tar.gz (or an extracted model directory): return the directory."""
    tars = sorted(channel.glob("*.tar.gz"))
    if not tars:
        return channel
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tars[0]) as tar:
        check_archive_budget(tar.getmembers(), tars[0].name)
        tar.extractall(
            dest, filter="data"
        )  # "data": no absolute paths, no ../, no links leaving dest, no devices
    return dest


#: The most a model channel's archive may unpack to (a DeepLabV3-ResNet101 model.tar.gz unpacks to ~0.5 GB).
MODEL_ARCHIVE_MAX_BYTES = 8 * 2**30
MODEL_ARCHIVE_MAX_MEMBERS = 10_000


def check_archive_budget(members: list[tarfile.TarInfo], name: str) -> None:
    """Refuse an archive whose members would unpack to more than the budget, before anything is written."""
    if len(members) > MODEL_ARCHIVE_MAX_MEMBERS:
        raise ContractError(
            f"{name} holds {len(members)} entries (at most {MODEL_ARCHIVE_MAX_MEMBERS}): "
            "the model channel expects the model.tar.gz of a training job"
        )
    total = sum(m.size for m in members if m.isfile())
    if total > MODEL_ARCHIVE_MAX_BYTES:
        raise ContractError(
            f"{name} unpacks to {total / 2**30:.1f} GiB (at most {MODEL_ARCHIVE_MAX_BYTES / 2**30:.0f} GiB): "
            "the model channel expects the model.tar.gz of a training job"
        )
