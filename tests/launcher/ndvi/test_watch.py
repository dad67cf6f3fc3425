"""Status, watch and resume: the pure progress/diff, and the commands on moto with outputs and reports in S3."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from click.testing import CliRunner

from earthmon_testing.launcher import synthetic_items
from launcher.cli import cli
from launcher.ndvi.plan import Submission, make_plan
from launcher.ndvi.requests import processing_request
from launcher.ndvi.store import load_plan, save_plan
from launcher.ndvi.watch import done_item_ids, failures_from_reports, missing_scenes, progress

ROLE = "arn:aws:iam::123456789012:role/earthmon-processing"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/earthmon-processing:1.0"
UTC = dt.UTC


def _plan(n=20, jobs=4, instances=3):
    plan, manifests, _ = make_plan(
        synthetic_items(n), run_id="wk", created="t", s3_prefix="s3://earthmon-test/ndvi", jobs=jobs,
        instances_per_job=instances,
    )  # fmt: skip
    return plan, manifests


def test_done_needs_the_stac_item_and_the_tif() -> None:
    keys = [
        "ndvi/wk/output/wk-r0-000/A_ndvi.tif",
        "ndvi/wk/output/wk-r0-000/A_ndvi.json",
        "ndvi/wk/output/wk-r0-001/B_ndvi.tif",  # the item (written last) is missing: not done
        "ndvi/wk/output/wk-r0-001/C_ndvi.json",  # no tif: not done
        "ndvi/wk/output/wk-r0-001/_reports/algo-1.json",
    ]
    assert done_item_ids(keys) == {"A"}


def test_progress_cost_and_resume_diff() -> None:
    plan, _ = _plan()
    ids = list(plan.scenes())
    done = set(ids[:15])
    t0 = dt.datetime(2023, 12, 8, 10, 0, tzinfo=UTC)
    descriptions = {
        plan.jobs[0].name: {
            "ProcessingJobStatus": "Completed",
            "ProcessingStartTime": t0,
            "ProcessingEndTime": t0 + dt.timedelta(minutes=30),
        },
        plan.jobs[1].name: {
            "ProcessingJobStatus": "Failed",
            "ProcessingStartTime": t0,
            "ProcessingEndTime": t0 + dt.timedelta(minutes=10),
            "FailureReason": "AlgorithmError: see job logs",
            "ExitMessage": "1 of 5 scenes failed",
        },
        plan.jobs[2].name: {"ProcessingJobStatus": "InProgress", "ProcessingStartTime": t0},
        plan.jobs[3].name: None,
    }
    reports = {
        (plan.jobs[1].name, "algo-2"): {
            "scenes": [
                {"item_id": ids[16], "source": "x.json", "status": "failed", "error": "HTTP 403 reading B04"},
                {
                    "item_id": ids[0],
                    "source": "y.json",
                    "status": "failed",
                    "error": "old failure, since redone",
                },
                {"item_id": ids[1], "source": "z.json", "status": "done", "error": None},
            ]
        }
    }
    now = t0 + dt.timedelta(minutes=60)
    prog = progress(plan, descriptions, done, reports, now=now)
    assert (prog.scenes, prog.done) == (20, 15)
    assert prog.by_status == {"Completed": 1, "Failed": 1, "InProgress": 1, "NotSubmitted": 1}
    assert not prog.finished
    # 3 instances each: 0.5 h + 1/6 h + 1 h (still running) = 5 instance-hours at $0.23
    assert prog.instance_hours == 5.0 and prog.cost_usd == round(5.0 * 0.23, 2)
    assert [f.item_id for f in prog.failures] == [ids[16]]
    assert prog.jobs[1].failure_reason.startswith("AlgorithmError")
    assert [s.item_id for s in missing_scenes(plan, done)] == ids[15:]
    assert failures_from_reports({}, done) == []


def _put(s3, key: str, body) -> None:
    s3.put_object(
        Bucket="earthmon-test",
        Key=key,
        Body=json.dumps(body).encode() if not isinstance(body, bytes) else body,
    )


def _setup_run(aws, tmp_path: Path, done_fraction: float = 0.75):
    """A submitted plan (on moto) with outputs for part of its scenes and a report with a failed scene."""
    from launcher.aws import client

    plan, manifests = _plan()
    plan = plan.__class__(**{**plan.__dict__, "submission": Submission(image=IMAGE, role=ROLE)})
    path = save_plan(plan, tmp_path / "run")
    s3 = client("s3")
    for uri, manifest in manifests.items():
        _put(s3, uri.removeprefix("s3://earthmon-test/"), manifest)
    sm = client("sagemaker")
    for job in plan.jobs:
        sm.create_processing_job(**processing_request(plan, job, plan.submission))
    ids = list(plan.scenes())
    n_done = int(len(ids) * done_fraction)
    out = "ndvi/wk/output/"
    for job in plan.jobs:
        for scene in job.scenes:
            if ids.index(scene.item_id) < n_done:
                _put(s3, f"{out}{job.name}/{scene.item_id}_ndvi.tif", b"II*\x00")
                _put(s3, f"{out}{job.name}/{scene.item_id}_ndvi.json", {"id": f"{scene.item_id}_ndvi"})
    failed_id = ids[-1]
    failed_job = next(j for j in plan.jobs if any(s.item_id == failed_id for s in j.scenes))
    report = {
        "host": "algo-1",
        "hosts": ["algo-1"],
        "summary": {"total": 1, "done": 0, "skipped": 0, "failed": 1},
        "scenes": [
            {"item_id": failed_id, "source": "x.json", "status": "failed", "seconds": 1.0, "bytes_read": 0,
             "valid_fraction": None, "error": "RasterioIOError: HTTP 403 for B04.tif", "output": None}
        ],
    }  # fmt: skip
    _put(s3, f"{out}{failed_job.name}/_reports/algo-1.json", report)
    aws.calls.clear()
    return plan, path, ids[n_done:], failed_id


def test_status_reports_scenes_jobs_and_failures(aws, tmp_path: Path) -> None:
    plan, path, missing, failed_id = _setup_run(aws, tmp_path)
    result = CliRunner().invoke(cli, ["status", "--plan", str(path), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert (status["scenes"], status["done"]) == (20, 15)
    assert status["jobs_by_status"] == {"Completed": 4}  # moto completes jobs at once
    assert [f["item_id"] for f in status["failed_scenes"]] == [failed_id]
    assert "HTTP 403" in status["failed_scenes"][0]["error"]
    described = [c.body["ProcessingJobName"] for c in aws.sent("sagemaker", "DescribeProcessingJob")]
    assert sorted(described) == sorted(j.name for j in plan.jobs)
    text = CliRunner().invoke(cli, ["status", "--plan", str(path)])
    assert "scenes done: 15/20 (75.0 %)" in text.output
    assert "1 failed scene(s)" in text.output and "launcher resume" in text.output


def test_status_shows_failure_reason_of_failed_jobs(aws, tmp_path: Path) -> None:
    plan, path, _, _ = _setup_run(aws, tmp_path)
    failed = plan.jobs[2].name

    def describe(body):
        if body["ProcessingJobName"] == failed:
            return 200, {
                "ProcessingJobName": failed,
                "ProcessingJobStatus": "Failed",
                "FailureReason": "AlgorithmError: See job logs for more information",
                "ExitMessage": "2 of 5 scenes failed: HTTP 403",
                "ProcessingStartTime": 1701993600,
                "ProcessingEndTime": 1701995400,
            }
        return None

    aws.answer("sagemaker", "DescribeProcessingJob", describe)
    result = CliRunner().invoke(cli, ["status", "--plan", str(path)])
    assert result.exit_code == 0, result.output
    assert "1 Failed" in result.output and failed in result.output
    assert "AlgorithmError" in result.output and "2 of 5 scenes failed" in result.output
    assert "cost so far: $0.35" in result.output  # 3 instances x 0.5 h x $0.23


def test_watch_ends_when_every_job_has_ended(aws, tmp_path: Path) -> None:
    _, path, _, _ = _setup_run(aws, tmp_path)
    result = CliRunner().invoke(cli, ["watch", "--plan", str(path), "--interval", "0.1"])
    assert result.exit_code == 1  # all jobs ended but 5 scenes have no output
    assert "scenes done: 15/20" in result.output


def test_resume_plans_and_submits_only_the_missing_scenes(aws, tmp_path: Path) -> None:
    plan, path, missing, _ = _setup_run(aws, tmp_path)
    dry = CliRunner().invoke(cli, ["resume", "--plan", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "15/20 scene(s) done, 5 missing" in dry.output
    assert aws.sent("sagemaker", "CreateProcessingJob") == [] and aws.sent("s3", "PutObject") == []
    result = CliRunner().invoke(cli, ["resume", "--plan", str(path), "--skip-preflight"])
    assert result.exit_code == 0, result.output
    assert "round 1: 5 scene(s) in 1 job(s)" in result.output
    creates = aws.sent("sagemaker", "CreateProcessingJob")
    assert [c.body["ProcessingJobName"] for c in creates] == ["wk-r1-000"]
    assert creates[0].body["AppSpecification"]["ImageUri"] == IMAGE  # the recorded submission is reused
    manifest = next(c.body for c in aws.sent("s3", "PutObject") if isinstance(c.body, list))
    prefix = manifest[0]["prefix"]
    assert sorted(prefix + k for k in manifest[1:]) == sorted(plan.scenes()[i].uri for i in missing)
    new_plan = load_plan(path)
    assert new_plan.rounds == [0, 1] and new_plan.jobs[-1].scene_count == 5
    # nothing missing any more once the new round's outputs exist
    from launcher.aws import client

    s3 = client("s3")
    for item_id in missing:
        _put(s3, f"ndvi/wk/output/wk-r1-000/{item_id}_ndvi.tif", b"II*\x00")
        _put(s3, f"ndvi/wk/output/wk-r1-000/{item_id}_ndvi.json", {})
    again = CliRunner().invoke(cli, ["resume", "--plan", str(path)])
    assert again.exit_code == 0 and "nothing to resume" in again.output


def test_resume_waits_for_running_jobs(aws, tmp_path: Path) -> None:
    _, path, _, _ = _setup_run(aws, tmp_path)
    aws.answer(
        "sagemaker", "DescribeProcessingJob", lambda body: (200, {"ProcessingJobStatus": "InProgress"})
    )
    result = CliRunner().invoke(cli, ["resume", "--plan", str(path)])
    assert result.exit_code == 1 and "still running" in result.output and "--force" in result.output
    assert aws.sent("sagemaker", "CreateProcessingJob") == []


def test_commands_explain_a_missing_or_broken_plan(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["status", "--plan", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "launcher plan" in r.output
    bad = tmp_path / "plan.json"
    plan, _ = _plan(n=3, jobs=1)
    data = plan.to_dict()
    data["jobs"][0]["instance_count_typo"] = 1
    bad.write_text(json.dumps(data))
    r = CliRunner().invoke(cli, ["submit", "--plan", str(bad), "--image", IMAGE, "--role", ROLE, "--dry-run"])
    assert r.exit_code == 1 and "instance_count_typo" in r.output


def test_resume_can_leave_out_scenes_that_failed(aws, tmp_path: Path) -> None:
    _, path, missing, failed_id = _setup_run(aws, tmp_path)
    result = CliRunner().invoke(cli, ["resume", "--plan", str(path), "--skip-failed", "--skip-preflight"])
    assert result.exit_code == 0, result.output
    assert f"leaving out 1 scene(s) that failed: {failed_id}" in result.output
    manifest = next(c.body for c in aws.sent("s3", "PutObject") if isinstance(c.body, list))
    listed = {k.rsplit("/", 1)[-1].removesuffix(".json") for k in manifest[1:]}
    assert listed == set(missing) - {failed_id} and len(listed) == 4
