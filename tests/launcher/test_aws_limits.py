"""The client-side rate limit applies to the control plane only: SageMaker (a few TPS per account) is limited,
S3 is not (at 4 requests/s, copying the 8,581 item JSONs of the reference run took 36 minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import launcher.aws as launcher_aws
from earthmon_testing.launcher import fixture_items


@pytest.fixture
def acquisitions(aws, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every pass through a client-side limiter (its rate), on the real clients talking to moto."""
    seen: list[float] = []
    original = launcher_aws.RateLimiter.acquire

    def counting(self) -> None:
        seen.append(self.rate)
        original(self)

    monkeypatch.setattr(launcher_aws.RateLimiter, "acquire", counting)
    monkeypatch.delenv("EARTHMON_AWS_MAX_RPS")  # the defaults, as a user has them
    return seen


def test_s3_requests_are_not_rate_limited(aws, acquisitions: list[float]) -> None:
    s3 = launcher_aws.client("s3")
    for k in range(12):
        s3.put_object(Bucket="earthmon-test", Key=f"items/{k}.json", Body=b"{}")
    assert len(aws.sent("s3", "PutObject")) == 12
    assert acquisitions == []


def test_sagemaker_requests_are_rate_limited_by_default(aws, acquisitions: list[float]) -> None:
    sm = launcher_aws.client("sagemaker")
    for _ in range(3):
        sm.list_processing_jobs(MaxResults=1)
    assert acquisitions == [launcher_aws.DEFAULT_MAX_RPS] * 3


def test_the_limit_can_be_changed_or_lifted(aws, acquisitions: list[float], monkeypatch) -> None:
    monkeypatch.setenv("EARTHMON_AWS_MAX_RPS", "20")
    launcher_aws.client("sagemaker").list_processing_jobs(MaxResults=1)
    monkeypatch.setenv("EARTHMON_AWS_MAX_RPS", "0")
    launcher_aws.client("sagemaker").list_processing_jobs(MaxResults=1)
    assert acquisitions == [20.0]


@pytest.mark.parametrize("name", ["EARTHMON_AWS_MAX_RPS", "EARTHMON_AWS_MAX_ATTEMPTS"])
@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", "1e999"])
def test_a_bad_limit_in_the_environment_is_a_usage_error(
    aws, monkeypatch, tmp_path: Path, name: str, value: str
) -> None:
    from click.testing import CliRunner

    from launcher.cli import cli

    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(i) + "\n" for i in fixture_items()))
    planned = CliRunner().invoke(
        cli, ["plan", "--items", str(items), "--jobs", "2", "--s3-prefix", "s3://earthmon-test/p", "--out",
              str(tmp_path / "run"), "--no-upload"],
    )  # fmt: skip
    assert planned.exit_code == 0, planned.output
    monkeypatch.setenv(name, value)
    result = CliRunner().invoke(
        cli, ["submit", "--plan", str(tmp_path / "run"), "--image", "1.dkr.ecr.us-east-1.amazonaws.com/x:1",
              "--role", "arn:aws:iam::123456789012:role/r"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"{name}=" in result.output and "fix or unset it" in result.output
    assert "Traceback" not in result.output


def test_a_bad_limit_is_reported_by_an_s3_only_command(aws, monkeypatch, tmp_path: Path) -> None:
    """`launcher plan` builds only an S3 client (not rate-limited): a bad EARTHMON_AWS_MAX_RPS is still reported."""
    from click.testing import CliRunner

    from launcher.cli import cli

    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(i) + "\n" for i in fixture_items()))
    monkeypatch.setenv("EARTHMON_AWS_MAX_RPS", "abc")
    result = CliRunner().invoke(
        cli, ["plan", "--items", str(items), "--jobs", "2", "--s3-prefix", "s3://earthmon-test/p", "--out",
              str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "EARTHMON_AWS_MAX_RPS='abc'" in result.output
    assert aws.sent("s3", "PutObject") == []
