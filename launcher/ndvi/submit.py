"""I/O edge for SageMaker: submit a plan's jobs (idempotently), describe them, check the instance quota."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from launcher.aws import error_code, error_message, short
from launcher.errors import ArgumentError, SubmitError
from launcher.ndvi.plan import JobPlan, Plan, ProductJob, ProductRound, Submission, check_instance_type
from launcher.ndvi.requests import processing_request, product_request, same_job, validate_requests
from launcher.secrets import EnvOptions

_EXISTS = re.compile(r"(already exists|must be unique|in use)", re.IGNORECASE)


def merge_submission(
    plan: Plan,
    options: EnvOptions,
    image: str | None = None,
    role: str | None = None,
    instance_type: str | None = None,
    volume_gb: int | None = None,
    max_runtime: int | None = None,
    worker_args: Sequence[str] = (),
) -> Submission:
    """The submission settings: the plan's (recorded by an earlier submit), overridden by the options given. Secret
    values given on the command line (`options.given`) are not part of it: they serve one invocation only."""
    previous = plan.submission
    if image is None and previous is None:
        raise ArgumentError("--image is required (the processing image URI)")
    if role is None and previous is None:
        raise ArgumentError("--role is required (the IAM role ARN the jobs run as)")
    if instance_type is not None:
        check_instance_type(instance_type)
    base = previous or Submission(image=image, role=role, instance_type=plan.instance_type)
    environment = {k: v for k, v in base.environment.items() if k not in options.from_caller}
    environment.update(options.plain)
    from_caller = [n for n in base.env_from_caller if n not in options.plain]
    from_caller += [n for n in options.from_caller if n not in from_caller]
    return Submission(
        image=image or base.image,
        role=role or base.role,
        instance_type=instance_type or base.instance_type,
        volume_gb=volume_gb if volume_gb is not None else base.volume_gb,
        max_runtime_seconds=max_runtime if max_runtime is not None else base.max_runtime_seconds,
        environment=environment,
        worker_args=tuple(worker_args) if worker_args else base.worker_args,
        env_from_caller=tuple(from_caller),
    )


@dataclass(frozen=True)
class SubmitResult:
    name: str
    action: str  # "created" | "exists"
    arn: str | None = None


def build_requests(
    plan: Plan, jobs: Sequence[JobPlan], submission: Submission, secrets: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    requests = [processing_request(plan, job, submission, secrets) for job in jobs]
    validate_requests(requests)
    return requests


def build_product_requests(
    plan: Plan,
    round_: ProductRound,
    jobs: Sequence[ProductJob],
    submission: Submission,
    secrets: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    requests = [product_request(plan, round_, job, submission, secrets) for job in jobs]
    validate_requests(requests)
    return requests


def describe(sm: Any, name: str) -> dict[str, Any] | None:
    """DescribeProcessingJob, or None when no such job exists."""
    try:
        return sm.describe_processing_job(ProcessingJobName=name)
    except Exception as exc:
        code = error_code(exc)
        if code in {"ValidationException", "ResourceNotFound"} and (
            "could not find" in error_message(exc).lower() or "not found" in error_message(exc).lower()
        ):
            return None
        raise


def submit_requests(
    sm: Any, requests: Sequence[Mapping[str, Any]], on_done: Callable[[SubmitResult], None] | None = None
) -> list[SubmitResult]:
    """Create each job unless it exists already (resubmitting a plan is idempotent).

    Throttling is retried by the client (adaptive mode, rate limited). If a create was accepted but its answer
    lost and the retry then meets "already exists", the job is described and counted as submitted when it is
    the same job (same manifest and output), so no job is lost or doubled.
    """
    results: list[SubmitResult] = []
    for request in requests:
        name = request["ProcessingJobName"]
        existing = describe(sm, name)
        if existing is not None:
            if not same_job(existing, request):
                raise SubmitError(
                    f"a Processing job named {name} already exists with other inputs/outputs: job names must be "
                    "unique per account and region, so plan again with another --run-id"
                )
            result = SubmitResult(name, "exists", existing.get("ProcessingJobArn"))
        else:
            try:
                response = sm.create_processing_job(**request)
                result = SubmitResult(name, "created", response.get("ProcessingJobArn"))
            except Exception as exc:
                if error_code(exc) in {"ValidationException", "ResourceInUse"} and _EXISTS.search(
                    error_message(exc)
                ):
                    existing = describe(sm, name)
                    if existing is None or not same_job(existing, request):
                        raise
                    result = SubmitResult(name, "exists", existing.get("ProcessingJobArn"))
                else:
                    raise
        results.append(result)
        if on_done:
            on_done(result)
    return results


def describe_jobs(sm: Any, names: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    return {name: describe(sm, name) for name in names}


# -------------------------------------------------------------------------------------------------- quotas


@dataclass(frozen=True)
class QuotaCheck:
    name: str
    limit: float
    needed: int

    @property
    def ok(self) -> bool:
        return self.needed <= self.limit


def quota_checks(quotas: Sequence[Mapping[str, Any]], instance_type: str, needed: int) -> list[QuotaCheck]:
    """Pure: the Service Quotas entries that bound this plan (per-type processing usage and the total across
    processing jobs), with the instances the plan needs at once."""
    per_type = f"{instance_type} for processing job usage".lower()
    checks: list[QuotaCheck] = []
    for q in quotas:
        name = str(q.get("QuotaName", ""))
        lname = name.lower()
        if lname == per_type or ("across all processing jobs" in lname and "instance" in lname):
            try:
                limit = float(q["Value"])
            except (KeyError, TypeError, ValueError):
                continue
            checks.append(QuotaCheck(name=name, limit=limit, needed=needed))
    return checks


def read_quotas(sq: Any) -> list[dict[str, Any]]:
    """The account's applied SageMaker quotas (falls back to the defaults when none were applied)."""
    quotas: list[dict[str, Any]] = []
    paginator = sq.get_paginator("list_service_quotas")
    for page in paginator.paginate(ServiceCode="sagemaker"):
        quotas.extend(page.get("Quotas", []))
    if not quotas:
        paginator = sq.get_paginator("list_aws_default_service_quotas")
        for page in paginator.paginate(ServiceCode="sagemaker"):
            quotas.extend(page.get("Quotas", []))
    return quotas


def preflight(
    sq: Any, plan: Plan, jobs: Sequence[JobPlan], instance_type: str
) -> tuple[list[QuotaCheck], str | None]:
    """Quota checks for running `jobs` at once. Returns (checks, None) or ([], why the quota could not be read)."""
    needed = sum(j.instance_count for j in jobs)
    try:
        quotas = read_quotas(sq)
    except Exception as exc:
        return (
            [],
            f"could not read the Service Quotas ({error_code(exc) or type(exc).__name__}: {short(error_message(exc))})",
        )
    checks = quota_checks(quotas, instance_type, needed)
    if not checks:
        return [], f"no processing quota for {instance_type} found in Service Quotas"
    return checks, None
