"""Pure request builders of the model workflow: training, tuning and hosting requests as plain dicts.

No I/O: every function takes values and returns the request the launcher sends (and ``--dry-run`` prints),
so tests assert on exactly what reaches SageMaker.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.aws import check_name, check_role, is_s3_uri
from launcher.errors import RequestError
from segmentation_trainer.contract import (
    CONTAINER_BASE,
    METRIC_DEFINITIONS,
    OBJECTIVES,
    OPTIONAL_CHANNELS,
    REQUIRED_CHANNELS,
    TrainingPaths,
)
from segmentation_trainer.toolkit import CHANNEL_NAME

# The training image's contract (segmentation_trainer.contract, importable without MXNet): the channels (the
# built-in algorithm's four, docs/domain.md section 5, plus this image's optional ones), the MetricDefinitions built
# from the very formats the trainer writes its metric lines with, the tuning objectives, the checkpoint path.
CHECKPOINT_PATH = str(TrainingPaths(Path(CONTAINER_BASE)).checkpoint_dir)
CHANNEL_CONTENT_TYPES = {
    "jpg": {"train": "image/jpeg", "validation": "image/jpeg"},
    "geotiff": {"train": "image/tiff", "validation": "image/tiff"},
}
ANNOTATION_CONTENT_TYPE = "image/png"

TUNING_JOB_NAME_MAX = 32
ENDPOINT_NAME_MAX = 63


def job_name(prefix: str, now: float | None = None, max_length: int = 63) -> str:
    """``prefix-YYYYmmdd-HHMMSS``, shortened to ``max_length`` and valid for SageMaker names."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    base = re.sub(r"[^a-zA-Z0-9-]+", "-", prefix).strip("-") or "earthmon"
    base = base[: max(1, max_length - len(stamp) - 1)].rstrip("-")
    return check_name(f"{base}-{stamp}", max_length)


def parse_hyperparameters(pairs: Iterable[str]) -> dict[str, str]:
    """``["epochs=10", "algorithm=deeplab"]`` -> string values (SageMaker passes every value as a string)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RequestError(f"hyperparameter {pair!r} is not key=value (e.g. --hp epochs=10)")
        if key in out:
            raise RequestError(f"hyperparameter {key!r} given twice")
        out[key] = value.strip()
    return out


def _s3_uri(uri: str, what: str) -> str:
    if not is_s3_uri(uri):
        raise RequestError(f"{what} must be an s3://bucket/prefix URI, got {uri!r}")
    return uri


def channels_under(prefix: str, present: Iterable[str] | None = None) -> dict[str, str]:
    """The channel URIs of a prepared data prefix: the four required ones, and the optional ones ``present``."""
    prefix = _s3_uri(prefix, "--channels").rstrip("/") + "/"
    present_set = set(present or ())
    names = list(REQUIRED_CHANNELS) + [c for c in OPTIONAL_CHANNELS if c in present_set]
    return {name: f"{prefix}{name}/" for name in names}


def input_data_config(channels: Mapping[str, str], data_format: str = "jpg") -> list[dict[str, Any]]:
    """InputDataConfig: one S3Prefix, FullyReplicated, File-mode channel per entry."""
    missing = [c for c in REQUIRED_CHANNELS if c not in channels]
    if missing:
        raise RequestError(
            f"missing channel(s) {', '.join(missing)}: the algorithm needs {REQUIRED_CHANNELS}"
        )
    if data_format not in CHANNEL_CONTENT_TYPES:
        raise RequestError(f"data format must be one of {sorted(CHANNEL_CONTENT_TYPES)}, got {data_format!r}")
    content_types = {
        **CHANNEL_CONTENT_TYPES[data_format],
        "train_annotation": ANNOTATION_CONTENT_TYPE,
        "validation_annotation": ANNOTATION_CONTENT_TYPE,
        "label_map": "application/json",
        "model": "application/x-sagemaker-model",
    }
    config = []
    for name, uri in channels.items():
        channel = _s3_channel(name, uri)
        if name in content_types:
            channel["ContentType"] = content_types[name]
        config.append(channel)
    return config


def _s3_channel(name: str, uri: str) -> dict[str, Any]:
    """One S3Prefix, FullyReplicated, File-mode, uncompressed channel (the URI checked)."""
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": _s3_uri(uri, f"channel {name}"),
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "InputMode": "File",
        "CompressionType": "None",
    }


@dataclass(frozen=True)
class TrainingSpec:
    """Everything a training job needs (the CLI builds it; the request builders read it)."""

    image: str
    role: str
    channels: Mapping[str, str]
    output_path: str
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    instance_type: str = "ml.g4dn.xlarge"
    instance_count: int = 1
    volume_gb: int = 50
    max_runtime_s: int = 24 * 3600
    spot: bool = False
    max_wait_s: int | None = None
    checkpoint_s3_uri: str | None = None
    data_format: str = "jpg"
    tags: Mapping[str, str] = field(default_factory=dict)
    # script mode (``train --entry-point``): the user's script owns the channels (any names) and the metrics
    script_mode: bool = False
    metric_definitions: tuple[Mapping[str, str], ...] | None = None  # None: the built-in model's

    def check(self) -> None:
        problems = []
        if not self.image:
            problems.append("--image is required (an ECR image URI)")
        if not 1 <= self.instance_count <= 100:
            problems.append(f"instance count must be 1-100, got {self.instance_count}")
        if not 1 <= self.volume_gb <= 16384:
            problems.append(f"volume must be 1-16384 GB, got {self.volume_gb}")
        if not 1 <= self.max_runtime_s <= 28 * 24 * 3600:
            problems.append(f"max runtime must be 1 s - 28 days, got {self.max_runtime_s}")
        if self.spot and self.max_wait_s is not None and self.max_wait_s < self.max_runtime_s:
            problems.append(f"max wait ({self.max_wait_s} s) must be >= max runtime ({self.max_runtime_s} s)")
        if problems:
            raise RequestError("; ".join(problems))


def script_input_data_config(channels: Mapping[str, str]) -> list[dict[str, Any]]:
    """InputDataConfig of a user's script: any channel names (SageMaker's pattern), no content types."""
    bad = [name for name in channels if not CHANNEL_NAME.fullmatch(name)]
    if bad:
        raise RequestError(
            f"channel name(s) {bad[:5]}: letters, digits, '.', '_', '-' (at most 64, no leading dot)"
        )
    return [_s3_channel(name, uri) for name, uri in channels.items()]


def _training_definition(spec: TrainingSpec, checkpoint_uri: str) -> dict[str, Any]:
    spec.check()
    stopping: dict[str, Any] = {"MaxRuntimeInSeconds": spec.max_runtime_s}
    if spec.spot:
        stopping["MaxWaitTimeInSeconds"] = spec.max_wait_s or spec.max_runtime_s * 2
    metrics = METRIC_DEFINITIONS if spec.metric_definitions is None else spec.metric_definitions
    algorithm: dict[str, Any] = {"TrainingImage": spec.image, "TrainingInputMode": "File"}
    if metrics:
        algorithm["MetricDefinitions"] = [dict(m) for m in metrics]
    channels = (
        script_input_data_config(spec.channels)
        if spec.script_mode
        else input_data_config(spec.channels, spec.data_format)
    )
    definition = {
        "AlgorithmSpecification": algorithm,
        "RoleArn": check_role(spec.role),
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": _s3_uri(spec.output_path, "--output")},
        "ResourceConfig": {
            "InstanceType": spec.instance_type,
            "InstanceCount": spec.instance_count,
            "VolumeSizeInGB": spec.volume_gb,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": bool(spec.spot),
        "CheckpointConfig": {
            "S3Uri": _s3_uri(checkpoint_uri, "--checkpoint"),
            "LocalPath": CHECKPOINT_PATH,
        },
    }
    if not channels:
        del definition["InputDataConfig"]  # a script may need no data; SageMaker takes no empty list
    return definition


def training_job_request(spec: TrainingSpec, name: str) -> dict[str, Any]:
    """CreateTrainingJob, with the metric definitions tuning and CloudWatch need and a checkpoint location
    (spot interruptions resume from it)."""
    check_name(name, 63, "training job name")
    checkpoint = spec.checkpoint_s3_uri or f"{spec.output_path.rstrip('/')}/{name}/checkpoints/"
    request = {
        "TrainingJobName": name,
        "HyperParameters": {k: str(v) for k, v in spec.hyperparameters.items()},
    }
    request.update(_training_definition(spec, checkpoint))
    if spec.tags:
        request["Tags"] = [{"Key": k, "Value": v} for k, v in spec.tags.items()]
    return request


# ----------------------------------------------------------------------------------------------- tuning
@dataclass(frozen=True)
class ParameterRange:
    name: str
    kind: str  # continuous | integer | categorical
    min_value: float | None = None
    max_value: float | None = None
    values: tuple[str, ...] = ()
    scaling: str = "Auto"  # Auto | Linear | Logarithmic | ReverseLogarithmic

    def as_request(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"Name": self.name, "Values": list(self.values)}
        fmt = (lambda v: str(int(v))) if self.kind == "integer" else (lambda v: repr(float(v)))
        return {
            "Name": self.name,
            "MinValue": fmt(self.min_value),
            "MaxValue": fmt(self.max_value),
            "ScalingType": self.scaling,
        }


# Like the built-in's recommended ranges (docs: "Tuning a Semantic Segmentation Model"); mini_batch_size is
# capped at 64 (the built-in says 1-128; batch norm is unstable at 1 and 128 crops do not fit one GPU).
DEFAULT_RANGES: tuple[ParameterRange, ...] = (
    ParameterRange("learning_rate", "continuous", 1e-4, 1e-1, scaling="Logarithmic"),
    ParameterRange("mini_batch_size", "integer", 4, 64, scaling="Linear"),
    ParameterRange("momentum", "continuous", 0.9, 0.999, scaling="Linear"),
    ParameterRange("optimizer", "categorical", values=("sgd", "adam", "nag", "rmsprop", "adagrad")),
    ParameterRange("weight_decay", "continuous", 1e-5, 1e-3, scaling="Logarithmic"),
)


def parse_range(text: str) -> ParameterRange:
    """``learning_rate=1e-4:1e-1[:log]``, ``mini_batch_size=4:32:int``, ``optimizer=sgd,adam``."""
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise RequestError(f"range {text!r} is not name=min:max[:log|int] or name=a,b,c")
    if ":" not in spec:
        return ParameterRange(
            name, "categorical", values=tuple(v.strip() for v in spec.split(",") if v.strip())
        )
    parts = spec.split(":")
    try:
        low, high = float(parts[0]), float(parts[1])
    except (ValueError, IndexError) as exc:
        raise RequestError(f"range {text!r}: min and max must be numbers") from exc
    flags = {p.strip().lower() for p in parts[2:]}
    unknown = flags - {"log", "int", "linear"}
    if unknown:
        raise RequestError(f"range {text!r}: unknown flag(s) {sorted(unknown)} (use log, int, linear)")
    if low >= high:
        raise RequestError(f"range {text!r}: min must be < max")
    if "log" in flags and low <= 0:
        raise RequestError(f"range {text!r}: a logarithmic range needs min > 0")
    kind = "integer" if "int" in flags else "continuous"
    return ParameterRange(name, kind, low, high, scaling="Logarithmic" if "log" in flags else "Linear")


def tuning_job_request(
    spec: TrainingSpec,
    name: str,
    ranges: Iterable[ParameterRange] = DEFAULT_RANGES,
    objective: str = "validation:mIOU",
    max_jobs: int = 10,
    max_parallel: int = 2,
    strategy: str = "Bayesian",
    early_stopping: bool = False,
) -> dict[str, Any]:
    """CreateHyperParameterTuningJob maximising ``objective``; tuned names are removed from the static ones."""
    check_name(name, TUNING_JOB_NAME_MAX, "tuning job name")
    if objective not in OBJECTIVES:
        raise RequestError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if not 1 <= max_parallel <= max_jobs:
        raise RequestError(f"need 1 <= max parallel jobs ({max_parallel}) <= max jobs ({max_jobs})")
    ranges = list(ranges)
    groups: dict[str, list[dict[str, Any]]] = {
        "ContinuousParameterRanges": [],
        "IntegerParameterRanges": [],
        "CategoricalParameterRanges": [],
    }
    key = {"continuous": "ContinuousParameterRanges", "integer": "IntegerParameterRanges"}
    for r in ranges:
        groups[key.get(r.kind, "CategoricalParameterRanges")].append(r.as_request())
    tuned = {r.name for r in ranges}
    checkpoint = spec.checkpoint_s3_uri or f"{spec.output_path.rstrip('/')}/{name}/checkpoints/"
    definition = _training_definition(spec, checkpoint)
    definition["StaticHyperParameters"] = {
        k: str(v) for k, v in spec.hyperparameters.items() if k not in tuned
    }
    request: dict[str, Any] = {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy,
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": objective},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": max_jobs, "MaxParallelTrainingJobs": max_parallel},
            "ParameterRanges": groups,
            "TrainingJobEarlyStoppingType": "Auto" if early_stopping else "Off",
        },
        "TrainingJobDefinition": definition,
    }
    if spec.tags:
        request["Tags"] = [{"Key": k, "Value": v} for k, v in spec.tags.items()]
    return request


def best_job_report(description: Mapping[str, Any]) -> dict[str, Any]:
    """The essentials of DescribeHyperParameterTuningJob: status, counts and the best training job."""
    best = description.get("BestTrainingJob") or {}
    metric = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    return {
        "tuning_job": description.get("HyperParameterTuningJobName"),
        "status": description.get("HyperParameterTuningJobStatus"),
        "training_jobs": description.get("TrainingJobStatusCounters", {}),
        "best_training_job": best.get("TrainingJobName"),
        "objective": metric.get("MetricName"),
        "objective_value": metric.get("Value"),
        "hyperparameters": best.get("TunedHyperParameters", {}),
    }


# ----------------------------------------------------------------------------------------------- hosting
SERVING_ENV_KEYS = (
    "SAGEMAKER_MODEL_SERVER_WORKERS",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT",
    "EARTHMON_WINDOW_OVERLAP",
    "EARTHMON_WINDOW_BATCH",
    "EARTHMON_MAX_PIXELS",
    "EARTHMON_MIN_BUILDING_PIXELS",
)


@dataclass(frozen=True)
class DeploySpec:
    name: str
    image: str
    model_data: str
    role: str
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    environment: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)


def deploy_requests(spec: DeploySpec) -> dict[str, dict[str, Any]]:
    """CreateModel, CreateEndpointConfig and CreateEndpoint, all named after ``spec.name``."""
    check_name(spec.name, ENDPOINT_NAME_MAX, "endpoint name")
    if not spec.model_data.startswith("s3://") or not spec.model_data.endswith(".tar.gz"):
        raise RequestError(
            f"--model-data must be the s3://.../model.tar.gz of a training job, got {spec.model_data!r}"
        )
    if not spec.instance_count >= 1:
        raise RequestError(f"instance count must be >= 1, got {spec.instance_count}")
    unknown = sorted(set(spec.environment) - set(SERVING_ENV_KEYS))
    if unknown:
        raise RequestError(f"unknown serving setting(s) {unknown}: known are {list(SERVING_ENV_KEYS)}")
    tags = [{"Key": k, "Value": v} for k, v in spec.tags.items()]
    model = {
        "ModelName": spec.name,
        "PrimaryContainer": {
            "Image": spec.image,
            "ModelDataUrl": spec.model_data,
            "Environment": {k: str(v) for k, v in spec.environment.items()},
        },
        "ExecutionRoleArn": check_role(spec.role),
    }
    config = {
        "EndpointConfigName": spec.name,
        "ProductionVariants": [
            {
                "VariantName": "AllTraffic",
                "ModelName": spec.name,
                "InitialInstanceCount": spec.instance_count,
                "InstanceType": spec.instance_type,
                "InitialVariantWeight": 1.0,
            }
        ],
    }
    endpoint = {"EndpointName": spec.name, "EndpointConfigName": spec.name}
    if tags:
        for request in (model, config, endpoint):
            request["Tags"] = tags
    return {"CreateModel": model, "CreateEndpointConfig": config, "CreateEndpoint": endpoint}
