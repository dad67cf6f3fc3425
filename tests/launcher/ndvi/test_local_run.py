"""`launcher local`: the pure pieces, and end to end with the real worker (as processes) on generated scenes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from earthmon_testing.launcher import require, synthetic_items
from launcher.cli import cli
from launcher.ndvi.local_run import (
    docker_argv,
    rebase_args,
    resource_config,
    sdk_local_arguments,
    split_keys,
    upload_outputs,
)
from launcher.ndvi.plan import make_plan
from launcher.ndvi.store import load_plan

# --------------------------------------------------------------------------------------------------- pure


def test_split_keys_like_sharded_by_s3_key() -> None:
    uris = [f"s3://b/p/{i:02d}.json" for i in range(7)]
    shares = split_keys(list(reversed(uris)), 3)
    assert shares == [uris[0:3], uris[3:5], uris[5:7]]
    assert split_keys(uris[:1], 3) == [uris[:1], [], []]  # an instance can get nothing


def test_worker_arguments_and_docker_command() -> None:
    args = [
        "--input",
        "/opt/ml/processing/input",
        "--output",
        "/opt/ml/processing/output",
        "--on-error",
        "continue",
    ]
    assert rebase_args(args, "/tmp/run/algo-1") == [
        "--input", "/tmp/run/algo-1/processing/input", "--output", "/tmp/run/algo-1/processing/output",
        "--on-error", "continue",
    ]  # fmt: skip
    argv = docker_argv("earthmon-processing:dev", "/tmp/run/algo-2", {"B": "2", "A": "1"}, args)
    assert argv[:5] == ["docker", "run", "--rm", "--network", "host"]
    assert "/tmp/run/algo-2/processing/input:/opt/ml/processing/input" in argv
    assert "/tmp/run/algo-2/config:/opt/ml/config" in argv
    assert argv[argv.index("earthmon-processing:dev") + 1 :] == args  # appended to the image's ENTRYPOINT
    # variables by name only (values go in the docker client's environment, never on its command line)
    assert argv.index("A") < argv.index("B") < argv.index("earthmon-processing:dev")
    assert argv[argv.index("A") - 1] == "-e" and "A=1" not in argv
    assert "--user" in docker_argv("img", "/t", {}, [], user="1000:1000")
    assert resource_config("algo-2", ["algo-1", "algo-2"]) == {
        "current_host": "algo-2",
        "hosts": ["algo-1", "algo-2"],
    }


def test_sdk_local_profile_is_the_supported_one() -> None:
    plan, _, _ = make_plan(
        synthetic_items(4), run_id="r", created="t", s3_prefix="s3://b/p", jobs=1, instances_per_job=2
    )
    spec = sdk_local_arguments(
        plan, plan.jobs[0], "s3://b/p/r/sdk-local/r-r0-000/", "img:dev", "arn:aws:iam::1:role/x"
    )
    assert spec["processor"]["instance_count"] == 1 and spec["processor"]["instance_type"] == "local"
    assert spec["inputs"][0]["s3_data_type"] == "S3Prefix"
    assert spec["inputs"][0]["s3_data_distribution_type"] == "FullyReplicated"
    assert spec["outputs"][0]["s3_upload_mode"] == "EndOfJob"
    assert spec["outputs"][0]["destination"] == "s3://b/p/r/output/r-r0-000/"


# --------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Small generated scenes (real COGs) whose item hrefs are absolute paths, so the items can travel via S3."""
    try:
        from ndvi_worker import synthetic
    except ImportError as exc:  # skipped locally, a failure in CI (EARTHMON_REQUIRE_ALL=1)
        require(False, f"the NDVI worker is not importable ({exc})")
        raise
    root = tmp_path_factory.mktemp("scenes")
    items = []
    for k, tile in enumerate(["31UFU", "31UGU", "32ULC", "32UMC"]):
        item_id = f"S2B_{tile}_20231204_0_L2A"
        scene = synthetic.write_scene(root / item_id, item_id=item_id, size=256, seed=k)
        item = json.loads(Path(scene.item_path).read_text())
        for asset in item["assets"].values():
            asset["href"] = str((Path(scene.item_path).parent / asset["href"]).resolve())
        items.append(item)
    broken = json.loads(json.dumps(items[3]))  # a scene whose red band is missing: it must fail alone
    broken["assets"]["red"]["href"] = str(root / "missing" / "B04.tif")
    items[3] = broken
    return items


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_local_runs_the_plan_like_sagemaker_then_resumes(aws, scenes, tmp_path: Path) -> None:
    from launcher.aws import client

    items_path = tmp_path / "items.jsonl"
    items_path.write_text("".join(json.dumps(i) + "\n" for i in scenes))
    run = tmp_path / "run"
    r = _run("plan", "--items", str(items_path), "--jobs", "2", "--instances-per-job", "2",
             "--s3-prefix", "s3://earthmon-test/ndvi", "--run-id", "e2e", "--out", str(run))  # fmt: skip
    assert r.exit_code == 0, r.output
    plan = load_plan(run)
    assert all(s.uri.startswith("s3://earthmon-test/ndvi/e2e/items/") for s in plan.scenes().values())

    r = _run("local", "--plan", str(run), "--no-docker", "--instances", "2", "--env", "GDAL_NUM_THREADS=1")
    assert r.exit_code == 1, r.output  # the job holding the broken scene fails, like on SageMaker
    assert "1/2 job(s) completed" in r.output

    s3 = client("s3")
    keys = {
        o["Key"] for o in s3.list_objects_v2(Bucket="earthmon-test", Prefix="ndvi/e2e/output/")["Contents"]
    }
    good = [i["id"] for i in scenes[:3]]
    bad = scenes[3]["id"]
    for item_id in good:
        job = next(j for j in plan.jobs if any(s.item_id == item_id for s in j.scenes))
        assert f"ndvi/e2e/output/{job.name}/{item_id}_ndvi.tif" in keys
        assert f"ndvi/e2e/output/{job.name}/{item_id}_ndvi.json" in keys
    assert not any(bad in k and k.endswith("_ndvi.json") for k in keys)
    # every simulated instance had its own tree, resourceconfig and share of the manifest
    for job in plan.jobs:
        reports = sorted(k for k in keys if k.startswith(f"ndvi/e2e/output/{job.name}/_reports/"))
        assert [k.rsplit("/", 1)[-1] for k in reports] == ["algo-1.json", "algo-2.json"]
        seen = []
        for key in reports:
            report = json.loads(s3.get_object(Bucket="earthmon-test", Key=key)["Body"].read())
            assert report["hosts"] == ["algo-1", "algo-2"] and report["summary"]["total"] == 1
            seen += [s["item_id"] for s in report["scenes"]]
        assert sorted(seen) == sorted(s.item_id for s in job.scenes)  # each scene on exactly one instance
        tree = run / "local" / job.name / "algo-2"
        assert json.loads((tree / "config" / "resourceconfig.json").read_text())["current_host"] == "algo-2"
        request = json.loads((tree / "config" / "processingjobconfig.json").read_text())
        assert request["ProcessingJobName"] == job.name
        assert request["ProcessingInputs"][0]["S3Input"]["S3DataDistributionType"] == "ShardedByS3Key"

    r = _run("status", "--plan", str(run), "--json")
    status = json.loads(r.stdout)
    assert (status["scenes"], status["done"]) == (4, 3)
    assert [f["item_id"] for f in status["failed_scenes"]] == [bad]
    bad_job = next(j.name for j in plan.jobs if any(s.item_id == bad for s in j.scenes))
    states = {j["name"]: j["status"] for j in status["jobs"]}
    assert states == {
        j.name: "Failed (local)" if j.name == bad_job else "Completed (local)" for j in plan.jobs
    }
    failed_job = next(j for j in status["jobs"] if j["name"] == bad_job)
    assert bad in failed_job["exit_message"]  # the worker's /opt/ml/output/message

    # fix the broken scene's item in its batch in the bucket, then resume: only it is planned and run again, from
    # a new batch the resume wrote from the one in the bucket
    fixed = json.loads(json.dumps(scenes[3]))
    fixed["assets"]["red"]["href"] = fixed["assets"]["nir"]["href"].replace("B08.tif", "B04.tif")
    batch_key = plan.scenes()[bad].uri.removeprefix("s3://earthmon-test/")
    lines = s3.get_object(Bucket="earthmon-test", Key=batch_key)["Body"].read().decode().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [bad]
    s3.put_object(Bucket="earthmon-test", Key=batch_key, Body=(json.dumps(fixed) + "\n").encode())
    r = _run("resume", "--plan", str(run), "--no-submit")
    assert r.exit_code == 0, r.output
    assert "3/4 scene(s) done, 1 missing" in r.output
    resumed = load_plan(run).jobs_of_round(1)[0].scenes
    assert [s.item_id for s in resumed] == [bad] and resumed[0].uri.endswith("/items/r1-000-0000.jsonl")
    new_batch = s3.get_object(Bucket="earthmon-test", Key=resumed[0].uri.removeprefix("s3://earthmon-test/"))
    assert json.loads(new_batch["Body"].read()) == fixed
    r = _run(
        "local", "--plan", str(run), "--round", "1", "--no-docker", "--instances", "2", "--parallel", "1"
    )
    assert r.exit_code == 0, r.output  # algo-2 gets no object (one scene, two instances): that is success
    empty = json.loads(
        s3.get_object(Bucket="earthmon-test", Key="ndvi/e2e/output/e2e-r1-000/_reports/algo-2.json")[
            "Body"
        ].read()
    )
    assert empty["summary"]["total"] == 0
    status = json.loads(_run("status", "--plan", str(run), "--json").stdout)
    assert (status["scenes"], status["done"]) == (4, 4) and status["failed_scenes"] == []
    assert "nothing to resume" in _run("resume", "--plan", str(run), "--no-submit").output


def test_one_instance_works_through_a_whole_batch(aws, scenes, tmp_path: Path) -> None:
    """One job, one instance: its share is one batch of every item (JSON Lines); the worker does each scene."""
    from launcher.aws import client

    items_path = tmp_path / "items.jsonl"
    items_path.write_text("".join(json.dumps(i) + "\n" for i in scenes))
    run = tmp_path / "run"
    r = _run("plan", "--items", str(items_path), "--jobs", "1", "--instances-per-job", "1",
             "--s3-prefix", "s3://earthmon-test/ndvi", "--run-id", "whole", "--out", str(run))  # fmt: skip
    assert r.exit_code == 0, r.output
    (job,) = load_plan(run).jobs
    assert {s.uri for s in job.scenes} == {"s3://earthmon-test/ndvi/whole/items/r0-000-0000.jsonl"}
    r = _run("local", "--plan", str(run), "--no-docker", "--env", "GDAL_NUM_THREADS=1")
    assert r.exit_code == 1, r.output  # the broken scene fails, the others are done
    keys = {
        o["Key"]
        for o in client("s3").list_objects_v2(Bucket="earthmon-test", Prefix="ndvi/whole/output/")["Contents"]
    }
    for item in scenes[:3]:
        assert f"ndvi/whole/output/{job.name}/{item['id']}_ndvi.tif" in keys
    report = json.loads(
        client("s3")
        .get_object(Bucket="earthmon-test", Key=f"ndvi/whole/output/{job.name}/_reports/algo-1.json")["Body"]
        .read()
    )
    assert report["summary"]["total"] == len(scenes) and report["summary"]["failed"] == 1


def test_local_explains_a_plan_that_was_never_uploaded(aws, tmp_path: Path) -> None:
    items_path = tmp_path / "items.jsonl"
    items_path.write_text("".join(json.dumps(i) + "\n" for i in synthetic_items(3)))
    run = tmp_path / "run"
    r = _run("plan", "--items", str(items_path), "--jobs", "1", "--s3-prefix", "s3://earthmon-test/x", "--out", str(run),
             "--no-upload")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = _run("local", "--plan", str(run), "--no-docker")
    assert r.exit_code == 1 and "not in S3" in r.output and "--no-upload" in r.output


def test_outputs_upload_continuously_without_repeats(aws, tmp_path: Path) -> None:
    import os

    from launcher.aws import client

    s3 = client("s3")
    out = tmp_path / "output"
    (out / "_reports").mkdir(parents=True)
    (out / ".ndvi-staging").mkdir()
    (out / "A_ndvi.tif").write_bytes(b"1")
    (out / "_reports" / "algo-1.json").write_text("{}")
    (out / ".ndvi-staging" / "half.tif").write_bytes(b"x")  # scratch: never uploaded
    seen: dict = {}
    uri = "s3://earthmon-test/o/job/"
    assert upload_outputs(s3, out, uri, seen) == 2
    assert upload_outputs(s3, out, uri, seen) == 0  # nothing new
    (out / "B_ndvi.tif").write_bytes(b"2")
    report = out / "_reports" / "algo-1.json"
    report.write_text('{"summary": {}}')
    os.utime(report, ns=(1, 1))  # a changed file goes up again
    assert upload_outputs(s3, out, uri, seen) == 2
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="earthmon-test", Prefix="o/")["Contents"])
    assert keys == ["o/job/A_ndvi.tif", "o/job/B_ndvi.tif", "o/job/_reports/algo-1.json"]
    assert len(aws.sent("s3", "PutObject")) == 4
