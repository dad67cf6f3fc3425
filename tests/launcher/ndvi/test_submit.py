"""Requests (pure, checked against the API limits) and `launcher submit` on moto, asserting on the wire."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from earthmon_testing.launcher import synthetic_items
from launcher.aws import RateLimiter
from launcher.cli import cli
from launcher.ndvi.plan import Submission, make_plan
from launcher.ndvi.requests import (
    RequestError,
    processing_request,
    request_errors,
    validate_requests,
)
from launcher.ndvi.store import load_plan, save_plan
from launcher.ndvi.submit import quota_checks

ROLE = "arn:aws:iam::123456789012:role/earthmon-processing"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/earthmon-processing:1.0"


def _plan(n: int = 40, jobs: int = 4, instances: int = 5, run_id: str = "dec-2023"):
    plan, manifests, _ = make_plan(
        synthetic_items(n), run_id=run_id, created="t", s3_prefix="s3://earthmon-test/ndvi", jobs=jobs,
        instances_per_job=instances,
    )  # fmt: skip
    return plan, manifests


# --------------------------------------------------------------------------------------------- requests


def test_request_matches_the_processing_contract() -> None:
    plan, _ = _plan()
    job = plan.jobs[1]
    req = processing_request(
        plan, job, Submission(image=IMAGE, role=ROLE, environment={"GDAL_NUM_THREADS": "2"})
    )
    assert request_errors(req) == []
    assert req["ProcessingJobName"] == "dec-2023-r0-001"
    assert req["ProcessingResources"]["ClusterConfig"] == {
        "InstanceCount": 5,
        "InstanceType": "ml.m5.xlarge",
        "VolumeSizeInGB": 30,
    }
    s3_in = req["ProcessingInputs"][0]["S3Input"]
    assert s3_in == {
        "S3Uri": "s3://earthmon-test/ndvi/dec-2023/manifests/r0-001.json",
        "LocalPath": "/opt/ml/processing/input",
        "S3DataType": "ManifestFile",
        "S3InputMode": "File",
        "S3DataDistributionType": "ShardedByS3Key",
    }
    out = req["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]
    assert out == {
        "S3Uri": "s3://earthmon-test/ndvi/dec-2023/output/dec-2023-r0-001/",
        "LocalPath": "/opt/ml/processing/output",
        "S3UploadMode": "Continuous",
    }
    assert req["AppSpecification"]["ContainerArguments"] == [
        "--input", "/opt/ml/processing/input", "--output", "/opt/ml/processing/output", "--on-error", "continue",
    ]  # fmt: skip
    assert (
        "ContainerEntrypoint" not in req["AppSpecification"]
    )  # the image's ENTRYPOINT runs, arguments appended
    assert {"Key": "earthmon:run-id", "Value": "dec-2023"} in req["Tags"]
    assert req["Environment"] == {"GDAL_NUM_THREADS": "2"}


def test_requests_are_checked_against_api_limits() -> None:
    plan, _ = _plan()
    good = processing_request(plan, plan.jobs[0], Submission(image=IMAGE, role=ROLE))
    cases = {
        "ProcessingJobName": ("x" * 64, "ProcessingJobName"),
        "RoleArn": ("my-role", "RoleArn"),
    }
    for key, (value, needle) in cases.items():
        assert any(needle in e for e in request_errors({**good, key: value}))
    bad = json.loads(json.dumps(good))
    bad["ProcessingResources"]["ClusterConfig"]["InstanceCount"] = 101
    bad["ProcessingResources"]["ClusterConfig"]["VolumeSizeInGB"] = 0
    bad["StoppingCondition"]["MaxRuntimeInSeconds"] = 777601
    bad["Environment"] = {f"K{i}": "v" for i in range(101)} | {"1BAD": "v"}
    bad["ProcessingInputs"][0]["S3Input"]["LocalPath"] = "/data/input"
    bad["AppSpecification"]["ContainerArguments"] = ["x" * 257]
    errors = "\n".join(request_errors(bad))
    for needle in ("InstanceCount", "VolumeSizeInGB", "MaxRuntimeInSeconds", "100 Environment", "1BAD", "LocalPath",
                   "container argument"):  # fmt: skip
        assert needle in errors, needle
    with pytest.raises(RequestError, match="used twice"):
        validate_requests([good, good])


def test_name_value_options_are_parsed_once():
    """One helper for every NAME=VALUE option (--hp, --channel, --tag, deploy's --env)."""
    import click

    from launcher.cli.console import pairs

    with pytest.raises(click.UsageError, match="--tag 'NOVALUE' is not NAME=VALUE"):
        pairs(("NOVALUE",), "--tag")
    assert pairs(("A=1", "B=x=y"), "--tag") == {"A": "1", "B": "x=y"}


def test_rate_limiter_spaces_requests() -> None:
    clock = {"t": 0.0}
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock["t"] += s

    limiter = RateLimiter(rate=2.0, burst=2, clock=lambda: clock["t"], sleep=sleep)
    waits = [limiter.acquire() for _ in range(6)]
    assert waits[:2] == [0.0, 0.0]  # the burst
    assert waits[2:] == pytest.approx([0.5, 0.5, 0.5, 0.5])  # then 2 per second
    assert clock["t"] == pytest.approx(2.0)


def test_quota_checks_pick_the_processing_quotas() -> None:
    quotas = [
        {"QuotaName": "ml.m5.xlarge for processing job usage", "Value": 4.0},
        {"QuotaName": "ml.m5.xlarge for training job usage", "Value": 100.0},
        {"QuotaName": "Number of instances across all processing jobs", "Value": 1000.0},
    ]
    checks = quota_checks(quotas, "ml.m5.xlarge", 500)
    assert [(c.name, c.ok) for c in checks] == [
        ("ml.m5.xlarge for processing job usage", False),
        ("Number of instances across all processing jobs", True),
    ]


# ----------------------------------------------------------------------------------------- submit on moto


def _write(tmp_path: Path, plan) -> Path:
    return save_plan(plan, tmp_path / "run")


def _submit(plan_path: Path, *extra: str):
    return CliRunner().invoke(
        cli,
        ["submit", "--plan", str(plan_path), "--image", IMAGE, "--role", ROLE, "--skip-preflight", *extra],
    )


def test_submit_dry_run_prints_requests_and_sends_nothing(aws, tmp_path: Path) -> None:
    plan, _ = _plan()
    path = _write(tmp_path, plan)
    result = _submit(path, "--dry-run", "--env", "GDAL_NUM_THREADS=ALL_CPUS")
    assert result.exit_code == 0, result.output
    requests = json.loads(result.stdout)
    assert [r["ProcessingJobName"] for r in requests] == [j.name for j in plan.jobs]
    assert requests[0]["Environment"] == {"GDAL_NUM_THREADS": "ALL_CPUS"}
    assert aws.calls == []
    assert load_plan(path).submission is None  # a dry run records nothing


def test_submit_creates_each_job_once_and_is_idempotent(aws, tmp_path: Path) -> None:
    plan, _ = _plan()
    path = _write(tmp_path, plan)
    result = _submit(path, "--volume-gb", "50")
    assert result.exit_code == 0, result.output
    assert "submitted 4 job(s); 0 already existed" in result.output
    creates = aws.sent("sagemaker", "CreateProcessingJob")
    assert [c.body["ProcessingJobName"] for c in creates] == [j.name for j in plan.jobs]
    for call, job in zip(creates, plan.jobs, strict=True):
        assert call.body == processing_request(plan, job, dataclasses.replace(_submission(), volume_gb=50))
    saved = load_plan(path).submission
    assert saved is not None and saved.volume_gb == 50 and saved.image == IMAGE
    # resubmitting the same plan creates nothing
    aws.calls.clear()
    result = _submit(path)
    assert result.exit_code == 0, result.output
    assert "submitted 0 job(s); 4 already existed" in result.output
    assert aws.sent("sagemaker", "CreateProcessingJob") == []
    assert len(aws.sent("sagemaker", "DescribeProcessingJob")) == 4


def _submission() -> Submission:
    return Submission(image=IMAGE, role=ROLE)


def test_throttling_never_loses_or_doubles_a_job(
    aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan, _ = _plan(n=60, jobs=6)
    path = _write(tmp_path, plan)
    monkeypatch.setenv("EARTHMON_AWS_MAX_RPS", "20")  # the client-side limiter is on the path too
    aws.throttle("CreateProcessingJob", times=3, every=2)  # every other create is throttled, 3 times
    result = _submit(path)
    assert result.exit_code == 0, result.output
    throttled = aws.injected("CreateProcessingJob")
    assert len(throttled) == 3
    landed = [c.body["ProcessingJobName"] for c in aws.sent("sagemaker", "CreateProcessingJob")]
    assert sorted(landed) == sorted(j.name for j in plan.jobs)  # every job exactly once
    assert len(landed) == len(set(landed))


def test_lost_create_response_is_not_a_duplicate(aws, tmp_path: Path) -> None:
    """The create reached SageMaker but its answer was lost: the retry meets 'already exists' (as AWS answers),
    and the launcher recognises its own job instead of failing or creating it again."""
    plan, _ = _plan(n=10, jobs=2)
    path = _write(tmp_path, plan)
    from launcher.aws import client

    first = plan.jobs[0]
    sm = client("sagemaker")
    sm.create_processing_job(**processing_request(plan, first, _submission()))  # it exists already ...
    seen = {"describe": 0}

    def describe_misses_once(body):  # ... but the first describe did not see it yet (eventual consistency)
        if body["ProcessingJobName"] == first.name and seen["describe"] == 0:
            seen["describe"] += 1
            return 400, {
                "__type": "ValidationException",
                "message": f"Could not find processing job '{first.name}'",
            }
        return None

    def create_exists(body):
        if body["ProcessingJobName"] == first.name:
            return 400, {
                "__type": "ResourceInUse",
                "message": f"Job name must be unique: {first.name} already exists",
            }
        return None

    aws.answer("sagemaker", "DescribeProcessingJob", describe_misses_once)
    aws.answer("sagemaker", "CreateProcessingJob", create_exists)
    aws.calls.clear()
    result = _submit(path)
    assert result.exit_code == 0, result.output
    assert "submitted 1 job(s); 1 already existed" in result.output
    assert [c.body["ProcessingJobName"] for c in aws.sent("sagemaker", "CreateProcessingJob")] == [
        plan.jobs[1].name
    ]


def test_submit_refuses_a_foreign_job_with_the_same_name(aws, tmp_path: Path) -> None:
    plan, _ = _plan(n=10, jobs=2)
    path = _write(tmp_path, plan)
    from launcher.aws import client

    other, _ = _plan(n=12, jobs=2, run_id="dec-2023")
    foreign = processing_request(other, other.jobs[0], _submission())
    foreign["ProcessingInputs"][0]["S3Input"]["S3Uri"] = "s3://someone-else/manifest.json"
    client("sagemaker").create_processing_job(**foreign)
    result = _submit(path)
    assert result.exit_code == 1
    assert "already exists with other inputs" in result.output and "--run-id" in result.output


def test_submit_validates_before_sending_anything(aws, tmp_path: Path) -> None:
    plan, _ = _plan()
    path = _write(tmp_path, plan)
    result = CliRunner().invoke(
        cli,
        ["submit", "--plan", str(path), "--image", IMAGE, "--role", "not-an-arn", "--max-runtime", "999999"],
    )
    assert result.exit_code == 2  # a usage error: the options make invalid requests
    assert "RoleArn" in result.output and "MaxRuntimeInSeconds" in result.output
    assert aws.calls == []
    result = CliRunner().invoke(cli, ["submit", "--plan", str(path), "--role", ROLE])
    assert result.exit_code == 2 and "--image is required" in result.output


def test_preflight_warns_when_the_quota_is_too_low(aws, tmp_path: Path) -> None:
    plan, _ = _plan(n=100, jobs=5, instances=20)
    path = _write(tmp_path, plan)
    quotas = {
        "Quotas": [
            {"QuotaName": "ml.m5.xlarge for processing job usage", "Value": 4.0, "QuotaCode": "L-1"},
            {"QuotaName": "ml.m5.xlarge for endpoint usage", "Value": 20.0, "QuotaCode": "L-2"},
        ]
    }
    aws.answer("service-quotas", "ListServiceQuotas", lambda body: (200, quotas))
    result = CliRunner().invoke(cli, ["submit", "--plan", str(path), "--image", IMAGE, "--role", ROLE])
    assert result.exit_code == 0, result.output
    assert aws.injected("ListServiceQuotas")[0].body == {"ServiceCode": "sagemaker"}
    assert "runs 100 instances at once" in result.output and "is 4" in result.output
    assert len(aws.sent("sagemaker", "CreateProcessingJob")) == 5  # a warning, not a refusal


def test_preflight_without_quota_access_says_so(aws, tmp_path: Path) -> None:
    plan, _ = _plan(n=10, jobs=1)
    path = _write(tmp_path, plan)
    aws.answer(
        "service-quotas",
        "ListServiceQuotas",
        lambda body: (400, {"__type": "AccessDeniedException", "message": "not allowed"}),
    )
    result = CliRunner().invoke(cli, ["submit", "--plan", str(path), "--image", IMAGE, "--role", ROLE])
    assert result.exit_code == 0, result.output
    assert "quota preflight skipped" in result.output and "AccessDeniedException" in result.output


def test_clients_retry_adaptively_and_follow_endpoint_variables(aws, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import launcher.aws as launcher_aws

    sm = launcher_aws.client("sagemaker")
    # botocore's max_attempts counts retries: 10 retries = 11 attempts in all
    assert sm.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 11}
    assert sm.meta.endpoint_url == os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", "http://127.0.0.1:9")  # per-service override wins
    monkeypatch.setenv("EARTHMON_AWS_MAX_ATTEMPTS", "3")
    launcher_aws.reset_session()
    sm = launcher_aws.client("sagemaker")
    assert sm.meta.endpoint_url == "http://127.0.0.1:9"
    assert sm.meta.config.retries["total_max_attempts"] == 4
    assert launcher_aws.client("s3").meta.endpoint_url == os.environ["AWS_ENDPOINT_URL"]


def test_an_interrupted_submission_resumes_with_the_recorded_settings(aws, tmp_path: Path) -> None:
    plan, _ = _plan(n=30, jobs=3)
    path = _write(tmp_path, plan)
    third = plan.jobs[2].name
    aws.answer(
        "sagemaker",
        "CreateProcessingJob",
        lambda body: (
            (400, {"__type": "ResourceLimitExceeded", "message": "account-level service limit"})
            if body["ProcessingJobName"] == third
            else None
        ),
    )
    result = _submit(path)
    assert result.exit_code == 1
    assert "ResourceLimitExceeded" in result.output and "Traceback" not in result.output
    assert load_plan(path).submission == _submission()  # recorded before sending
    aws._inject.clear()
    aws.calls.clear()
    again = CliRunner().invoke(cli, ["submit", "--plan", str(path), "--skip-preflight"])  # no --image/--role
    assert again.exit_code == 0, again.output
    assert "submitted 1 job(s); 2 already existed" in again.output
    assert [c.body["ProcessingJobName"] for c in aws.sent("sagemaker", "CreateProcessingJob")] == [third]


def test_error_pages_shrink_to_one_line() -> None:
    from launcher.ndvi.submit import short

    page = "<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n<h1>Internal Server Error</h1>"
    assert short(page) == "500 Internal Server Error Internal Server Error"
    assert len(short("x" * 500)) == 200
