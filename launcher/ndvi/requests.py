"""Pure: a plan's job -> the CreateProcessingJob request dict, checked against the API's limits before sending.

Limits (docs/domain.md section 3 and the SageMaker API reference): job name 1-63 characters matching
`[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}`; InstanceCount 1-100; VolumeSizeInGB 1-16384; MaxRuntimeInSeconds
1-777600; at most 10 inputs and 10 outputs; LocalPath under /opt/ml/processing/; Environment at most 100
entries (keys `[a-zA-Z_][a-zA-Z0-9_]*` up to 256 characters, values up to 256); ContainerArguments at most 100,
each up to 256 characters; at most 50 tags.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from launcher.aws import is_job_name, is_s3_uri, role_arn_problem
from launcher.errors import RequestError
from launcher.ndvi.plan import JobPlan, Plan, ProductJob, ProductRound, Submission
from ndvi_worker.contract import CONTAINER

# The processing image's layout (ndvi_worker.contract): where the job's inputs and outputs are mounted.
INPUT_PATH = str(CONTAINER.input_dir)
OUTPUT_PATH = str(CONTAINER.output_dir)
PROCESSING_DIR = str(CONTAINER.processing_dir)
DEFAULT_WORKER_ARGS = ("--input", INPUT_PATH, "--output", OUTPUT_PATH, "--on-error", "continue")
TAG_RUN_ID = "earthmon:run-id"
TAG_ROUND = "earthmon:round"
TAG_JOB_INDEX = "earthmon:job-index"
TAG_STAGE = "earthmon:stage"

ENV_KEY = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
INSTANCE_TYPE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")


def _processing_job(
    plan: Plan,
    job: JobPlan | ProductJob,
    submission: Submission,
    secrets: Mapping[str, str] | None,
    *,
    volume_gb: int,
    container_args: Sequence[str],
    input_name: str,
    distribution: str,
    output_name: str,
    tags: Mapping[str, str],
) -> dict[str, Any]:
    """The CreateProcessingJob request both stages send: the job's ManifestFile in, Continuous output to the job's
    own folder, the submission's image, role, instance type, run time and environment (with `secrets`, the values
    of `submission.env_from_caller`); tagged with the run id, then `tags`. Each stage gives only what differs."""
    request: dict[str, Any] = {
        "ProcessingJobName": job.name,
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": job.instance_count,
                "InstanceType": submission.instance_type,
                "VolumeSizeInGB": volume_gb,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": submission.max_runtime_seconds},
        "AppSpecification": {"ImageUri": submission.image, "ContainerArguments": list(container_args)},
        "ProcessingInputs": [
            {
                "InputName": input_name,
                "S3Input": {
                    "S3Uri": job.manifest_uri,
                    "LocalPath": INPUT_PATH,
                    "S3DataType": "ManifestFile",
                    "S3InputMode": "File",
                    "S3DataDistributionType": distribution,
                },
            }
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": output_name,
                    "S3Output": {
                        "S3Uri": plan.job_output_uri(job),
                        "LocalPath": OUTPUT_PATH,
                        "S3UploadMode": "Continuous",
                    },
                }
            ]
        },
        "RoleArn": submission.role,
        "Tags": [{"Key": key, "Value": value} for key, value in {TAG_RUN_ID: plan.run_id, **tags}.items()],
    }
    environment = {**submission.environment, **(secrets or {})}
    if environment:
        request["Environment"] = environment
    return request


def processing_request(
    plan: Plan, job: JobPlan, submission: Submission, secrets: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The CreateProcessingJob request for one job of the plan (stage 1, NDVI): its instances share the
    ManifestFile (ShardedByS3Key), the worker runs the submission's worker args (default: DEFAULT_WORKER_ARGS).
    `secrets`: the values of `submission.env_from_caller` (read from the caller's environment, never stored in the
    plan)."""
    return _processing_job(
        plan,
        job,
        submission,
        secrets,
        volume_gb=submission.volume_gb,
        container_args=submission.worker_args or DEFAULT_WORKER_ARGS,
        input_name="items",
        distribution="ShardedByS3Key",
        output_name="ndvi",
        tags={TAG_ROUND: str(job.round), TAG_JOB_INDEX: str(job.index)},
    )


def product_args(round_: ProductRound) -> list[str]:
    """A stage-2 job's ContainerArguments, appended to the image's ENTRYPOINT (`ndvi-worker`):
    `composite|mosaic --input /opt/ml/processing/input --output /opt/ml/processing/output <the round's options>`."""
    return [round_.kind, "--input", INPUT_PATH, "--output", OUTPUT_PATH, *round_.args]


def product_request(
    plan: Plan,
    round_: ProductRound,
    job: ProductJob,
    submission: Submission,
    secrets: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The CreateProcessingJob request of a stage-2 job: one instance, its ManifestFile FullyReplicated (all of it
    on that instance: the launcher grouped whole tiles into it), the job's own volume size. The stage-1 submission
    gives the image, role, instance type, run time and environment; its worker args do not apply."""
    return _processing_job(
        plan,
        job,
        submission,
        secrets,
        volume_gb=job.volume_gb,
        container_args=product_args(round_),
        input_name="ndvi" if round_.source == "scenes" else "composites",
        distribution="FullyReplicated",
        output_name="composites" if round_.kind == "composite" else "mosaic",
        tags={TAG_STAGE: round_.kind, TAG_ROUND: str(round_.round), TAG_JOB_INDEX: str(job.index)},
    )


def _check_range(errors: list[str], name: str, value: Any, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        errors.append(f"{name} must be an integer within {lo}..{hi}, got {value!r}")


def _check_s3(errors: list[str], name: str, uri: Any) -> None:
    if not is_s3_uri(uri, max_length=1024, allow_https=True):
        errors.append(f"{name} must be an s3:// URI of at most 1024 characters, got {uri!r}")


def request_errors(request: Mapping[str, Any]) -> list[str]:
    """Every reason the API would reject this CreateProcessingJob request (empty when it is valid)."""
    errors: list[str] = []
    name = request.get("ProcessingJobName", "")
    if not is_job_name(name):
        errors.append(
            f"ProcessingJobName {name!r} must be 1-63 letters, digits and hyphens, starting and ending with a "
            "letter or digit"
        )
    cluster = request.get("ProcessingResources", {}).get("ClusterConfig", {})
    _check_range(errors, "InstanceCount", cluster.get("InstanceCount"), 1, 100)
    _check_range(errors, "VolumeSizeInGB", cluster.get("VolumeSizeInGB"), 1, 16384)
    itype = cluster.get("InstanceType")
    if not isinstance(itype, str) or not INSTANCE_TYPE.match(itype):
        errors.append(f"InstanceType must look like ml.m5.xlarge, got {itype!r}")
    _check_range(
        errors,
        "MaxRuntimeInSeconds",
        request.get("StoppingCondition", {}).get("MaxRuntimeInSeconds"),
        1,
        777600,
    )
    app = request.get("AppSpecification", {})
    image = app.get("ImageUri")
    if not isinstance(image, str) or not image or len(image) > 255 or any(c.isspace() for c in image):
        errors.append(f"ImageUri must be 1-255 characters without spaces, got {image!r}")
    args = app.get("ContainerArguments", [])
    if len(args) > 100:
        errors.append(f"at most 100 ContainerArguments, got {len(args)}")
    for arg in args:
        if not isinstance(arg, str) or not 1 <= len(arg) <= 256:
            errors.append(f"each container argument must be 1-256 characters, got {arg!r}")
    role_problem = role_arn_problem(request.get("RoleArn"))
    if role_problem:
        errors.append(role_problem)
    env = request.get("Environment", {})
    if len(env) > 100:
        errors.append(f"at most 100 Environment entries, got {len(env)}")
    for key, value in env.items():
        if not ENV_KEY.match(key) or len(key) > 256:
            errors.append(
                f"environment variable name {key!r} must match [a-zA-Z_][a-zA-Z0-9_]* (at most 256)"
            )
        if not isinstance(value, str) or len(value) > 256:
            errors.append(f"environment variable {key} must be a string of at most 256 characters")
    inputs = request.get("ProcessingInputs", [])
    outputs = request.get("ProcessingOutputConfig", {}).get("Outputs", [])
    if len(inputs) > 10:
        errors.append(f"at most 10 ProcessingInputs, got {len(inputs)}")
    if len(outputs) > 10:
        errors.append(f"at most 10 outputs, got {len(outputs)}")
    for i, inp in enumerate(inputs):
        s3 = inp.get("S3Input", {})
        _check_s3(errors, f"ProcessingInputs[{i}].S3Uri", s3.get("S3Uri"))
        if not str(s3.get("LocalPath", "")).startswith(PROCESSING_DIR + "/"):
            errors.append(f"ProcessingInputs[{i}].LocalPath must be under {PROCESSING_DIR}/")
        if s3.get("S3DataType") not in {"ManifestFile", "S3Prefix"}:
            errors.append(f"ProcessingInputs[{i}].S3DataType must be ManifestFile or S3Prefix")
        if s3.get("S3DataDistributionType") not in {"ShardedByS3Key", "FullyReplicated"}:
            errors.append(
                f"ProcessingInputs[{i}].S3DataDistributionType must be ShardedByS3Key or FullyReplicated"
            )
    for i, out in enumerate(outputs):
        s3 = out.get("S3Output", {})
        _check_s3(errors, f"Outputs[{i}].S3Uri", s3.get("S3Uri"))
        if not str(s3.get("LocalPath", "")).startswith(PROCESSING_DIR + "/"):
            errors.append(f"Outputs[{i}].LocalPath must be under {PROCESSING_DIR}/")
        if s3.get("S3UploadMode") not in {"Continuous", "EndOfJob"}:
            errors.append(f"Outputs[{i}].S3UploadMode must be Continuous or EndOfJob")
    tags = request.get("Tags", [])
    if len(tags) > 50:
        errors.append(f"at most 50 tags, got {len(tags)}")
    return errors


def validate_requests(requests: Sequence[Mapping[str, Any]]) -> None:
    """Raise RequestError naming every invalid request and duplicate job name (nothing is sent then)."""
    problems: list[str] = []
    names: set[str] = set()
    for request in requests:
        name = request.get("ProcessingJobName", "?")
        if name in names:
            problems.append(f"{name}: job name used twice in one submission")
        names.add(name)
        problems.extend(f"{name}: {e}" for e in request_errors(request))
    if problems:
        raise RequestError("invalid CreateProcessingJob request(s):\n  " + "\n  ".join(problems))


def same_job(existing: Mapping[str, Any], request: Mapping[str, Any]) -> bool:
    """Whether a described job is the one this request would create (same manifest and output)."""

    def uris(d: Mapping[str, Any]) -> tuple:
        ins = tuple(i.get("S3Input", {}).get("S3Uri") for i in d.get("ProcessingInputs", []))
        outs = tuple(
            o.get("S3Output", {}).get("S3Uri") for o in d.get("ProcessingOutputConfig", {}).get("Outputs", [])
        )
        return ins, outs

    return uris(existing) == uris(request)
