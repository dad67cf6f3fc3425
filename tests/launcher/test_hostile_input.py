"""Issue 9, the launcher: hostile and mistaken input.

Hostile item ids through `plan` and `local` (nothing written outside the run and instance trees), secrets given
with --env (never in plan.json, the docker argv, logs or dry-run output), a sweep of bad input over every command
(exit 2 for usage errors, 1 otherwise, never a traceback), the typed plan loader, and hypothesis fuzzing of it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from earthmon_testing.launcher import free_port, synthetic_items
from launcher.cli import cli
from launcher.ndvi.plan import Plan, PlanError, make_plan
from launcher.ndvi.store import load_plan

BUCKET = "earthmon-test"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/earthmon-processing:1"
ROLE = "arn:aws:iam::123456789012:role/earthmon"
SECRET = "hunter2-s3cr3t-value"
HOSTILE_IDS = [
    "../../../../escaped",
    "../escaped",
    "/tmp/escaped-absolute",
    "a/../../escaped",
    "..",
    ".hidden",
    "ok\n",
    "nul\x00byte",
    "x" * 300,
    "",
    "spaces are bad",
]


def _run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def _items_file(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _hostile_items() -> list[dict[str, Any]]:
    base = synthetic_items(len(HOSTILE_IDS), seed=3, in_bucket=False)
    out = []
    for item, bad in zip(base, HOSTILE_IDS, strict=True):
        item = copy.deepcopy(item)
        item["id"] = bad
        out.append(item)
    return out


_REAL_POPEN = (
    subprocess.Popen
)  # launcher.ndvi.local_run.subprocess is the module: patching Popen patches it everywhere


class FakePopen:
    """Stands in for subprocess.Popen in launcher.ndvi.local_run: records argv and env, runs a no-op process."""

    calls: list[tuple[list[str], dict[str, str] | None]] = []

    def __new__(cls, argv, stdout=None, stderr=None, env=None):  # noqa: ANN001
        cls.calls.append((list(argv), dict(env) if env is not None else None))
        return _REAL_POPEN([sys.executable, "-c", "pass"], stdout=stdout, stderr=stderr)


# ------------------------------------------------------------------------------------------ hostile item ids


def test_hostile_ids_are_left_out_at_plan_time_and_nothing_escapes(aws, tmp_path: Path, monkeypatch) -> None:
    from launcher.aws import client

    box = tmp_path / "a" / "b" / "c" / "d"  # deep enough that ../../../../ would still land inside tmp_path
    box.mkdir(parents=True)
    good = synthetic_items(3, in_bucket=False)  # API-only items: copied under the run's prefix, keys from ids
    items = _items_file(box / "items.jsonl", [*good, *_hostile_items()])
    run = box / "run"
    before = _files(tmp_path)
    r = _run("plan", "--items", str(items), "--jobs", "2", "--instances-per-job", "2",
             "--s3-prefix", f"s3://{BUCKET}/ndvi", "--run-id", "hostile", "--out", str(run))  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output.count("left out: unsafe item id") + r.output.count("left out: item has no 'id'") == len(
        HOSTILE_IDS
    )
    assert f"{len(HOSTILE_IDS)} item(s) left out" in r.output
    plan = load_plan(run)
    assert sorted(plan.scenes()) == sorted(i["id"] for i in good)
    text = (run / "plan.json").read_text() + "".join(p.read_text() for p in (run / "manifests").iterdir())
    assert "escaped" not in text and ".hidden" not in text
    keys = [o["Key"] for o in client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert not any("escaped" in k or ".hidden" in k or ".." in k for k in keys), keys

    # a manifest tampered with in S3: its hostile key is refused by `local`, nothing is staged outside the tree
    manifest = json.loads((run / "manifests" / "r0-000.json").read_text())
    manifest.append("../../../../../../escaped-from-manifest.json")
    client("s3").put_object(
        Bucket=BUCKET, Key="ndvi/hostile/manifests/r0-000.json", Body=json.dumps(manifest)
    )
    client("s3").put_object(Bucket=BUCKET, Key="escaped-from-manifest.json", Body=b"{}")
    FakePopen.calls = []
    monkeypatch.setattr("launcher.ndvi.local_run.subprocess.Popen", FakePopen)
    r = _run("local", "--plan", str(run), "--no-docker", "--instances", "1")
    assert r.exit_code == 1, r.output
    assert "leads outside" in r.output and "Traceback" not in r.output
    r = _run("local", "--plan", str(run), "--no-docker", "--instances", "2", "--job", "hostile-r0-001")
    assert r.exit_code == 0, r.output
    created = _files(tmp_path) - before
    outside = [f for f in created if not f.startswith(str(run.relative_to(tmp_path)))]
    assert outside == [], outside
    assert not any("escaped" in f for f in created)


def test_a_hostile_plan_file_cannot_lead_local_outside_its_trees(aws, tmp_path: Path) -> None:
    run = tmp_path / "box" / "run"
    plan, _, _ = make_plan(synthetic_items(2), run_id="r", created="t", s3_prefix=f"s3://{BUCKET}/p", jobs=1,
                           instances_per_job=1)  # fmt: skip
    data = plan.to_dict()
    data["jobs"][0]["name"] = "../../../escaped"
    run.mkdir(parents=True)
    (run / "plan.json").write_text(json.dumps(data))
    r = _run("local", "--plan", str(run), "--no-docker")
    assert r.exit_code == 1 and "plan.jobs[0].name" in r.output, r.output
    assert _files(tmp_path) == {"box", "box/run", "box/run/plan.json"}


# ------------------------------------------------------------------------------------------------- secrets


@pytest.fixture
def planned(aws, tmp_path: Path) -> Path:
    items = _items_file(tmp_path / "items.jsonl", synthetic_items(4, in_bucket=False))  # copied to moto
    run = tmp_path / "run"
    r = _run("plan", "--items", str(items), "--jobs", "2", "--instances-per-job", "2",
             "--s3-prefix", f"s3://{BUCKET}/ndvi", "--run-id", "sec", "--out", str(run))  # fmt: skip
    assert r.exit_code == 0, r.output
    return run


def test_secrets_never_reach_plan_json_or_dry_run_output(aws, planned: Path, monkeypatch) -> None:
    monkeypatch.delenv("API_TOKEN", raising=False)
    args = ["submit", "--plan", str(planned), "--image", IMAGE, "--role", ROLE, "--skip-preflight"]
    r = _run(*args, "--dry-run", "--env", f"API_TOKEN={SECRET}", "--env", "GDAL_NUM_THREADS=2")
    assert r.exit_code == 0, r.output
    assert SECRET not in r.output
    requests = json.loads(r.stdout[r.stdout.index("[") :])
    assert requests[0]["Environment"] == {"GDAL_NUM_THREADS": "2", "API_TOKEN": "<redacted>"}

    r = _run(*args, "--env", f"API_TOKEN={SECRET}", "--env", "GDAL_NUM_THREADS=2")
    assert r.exit_code == 0, r.output
    assert SECRET not in r.output and "plan.json keeps only the names" in r.output
    stored = (planned / "plan.json").read_text()
    assert SECRET not in stored
    submission = json.loads(stored)["submission"]
    assert submission["environment"] == {"GDAL_NUM_THREADS": "2"}
    assert submission["env_from_caller"] == ["API_TOKEN"]
    creates = aws.sent("sagemaker", "CreateProcessingJob")
    assert len(creates) == 2  # SageMaker itself needs the value: it goes in the request, nowhere else
    assert all(c.body["Environment"] == {"GDAL_NUM_THREADS": "2", "API_TOKEN": SECRET} for c in creates)

    # resume reads the secret from the caller's environment; without it, a usage error says so
    r = _run("resume", "--plan", str(planned), "--force")
    assert r.exit_code == 2 and "export API_TOKEN" in r.output, r.output
    r = _run("resume", "--plan", str(planned), "--dry-run", "--force")  # a dry run only warns
    assert r.exit_code == 0 and "API_TOKEN is not set" in r.output, r.output
    monkeypatch.setenv("API_TOKEN", SECRET)
    r = _run("resume", "--plan", str(planned), "--dry-run", "--force")
    assert r.exit_code == 0, r.output
    assert SECRET not in r.output and '"API_TOKEN": "<redacted>"' in r.output
    # AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN are secrets too, whatever the value
    r = _run(*args, "--dry-run", "--env", "AWS_SECRET_ACCESS_KEY=abc", "--env", "AWS_SESSION_TOKEN=def")
    assert r.exit_code == 0 and '"abc"' not in r.output and '"def"' not in r.output, r.output


def test_local_passes_secrets_by_name_never_on_the_command_line(aws, planned: Path, monkeypatch) -> None:
    from launcher.ndvi.local_run import docker_argv

    argv = docker_argv("img", "/t", {"API_TOKEN": SECRET, "A": "1"}, [])
    assert SECRET not in " ".join(argv) and "1" not in argv
    assert argv[argv.index("API_TOKEN") - 1] == "-e" and argv[argv.index("A") - 1] == "-e"

    FakePopen.calls = []
    monkeypatch.setattr("launcher.ndvi.local_run.subprocess.Popen", FakePopen)
    monkeypatch.setattr("launcher.ndvi.local_run.docker_problem", lambda: None)
    monkeypatch.setenv("DB_PASSWORD", SECRET)
    r = _run("local", "--plan", str(planned), "--instances", "1", "--env", "DB_PASSWORD", "--env",
             f"API_TOKEN={SECRET}", "--env", "GDAL_NUM_THREADS=1")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert SECRET not in r.output
    assert len(FakePopen.calls) == 2  # one instance per job, both docker
    for argv, env in FakePopen.calls:
        assert argv[:2] == ["docker", "run"]
        assert not any(SECRET in a for a in argv), argv  # what `ps` shows
        for name in ("DB_PASSWORD", "API_TOKEN", "GDAL_NUM_THREADS"):
            assert argv[argv.index(name) - 1] == "-e"
        assert env is not None and env["DB_PASSWORD"] == SECRET and env["API_TOKEN"] == SECRET
        assert env["GDAL_NUM_THREADS"] == "1"
    for path in (planned / "local").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    assert SECRET not in (planned / "plan.json").read_text()


# --------------------------------------------------------------------------------------------------- sweep


def _plan_variant(run: Path, name: str, edit) -> str:  # noqa: ANN001
    data = json.loads((run / "plan.json").read_text())
    edit(data)
    path = run.parent / f"{name}.json"
    path.write_text(json.dumps(data))
    return str(path)


def _set(path: list, value: Any):  # noqa: ANN202
    def edit(data: dict) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _raster(path: Path) -> Path:
    import numpy as np
    import rasterio

    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="float32") as dst:
        dst.write(np.ones((1, 8, 8), np.float32))
    return path


def test_bad_input_sweep_over_every_command(aws, planned: Path, tmp_path: Path, monkeypatch) -> None:
    """Every command and subcommand of `launcher --help`, fed bad input: the exit code (2 for usage errors), one
    line saying what is wrong, and never a traceback or an 'unexpected error'."""
    P = str(planned / "plan.json")  # noqa: N806
    out = str(tmp_path / "o.jsonl")
    notjson = tmp_path / "not.json"
    notjson.write_text("{not json")
    listjson = tmp_path / "list.json"
    listjson.write_text("[1, 2]")
    two = tmp_path / "two.geojson"
    two.write_text(json.dumps({"type": "FeatureCollection", "features": [{}, {}]}))
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 64)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    noitems = tmp_path / "noitems.json"
    noitems.write_text('{"a": 1}')
    hostile = _items_file(tmp_path / "hostile.jsonl", _hostile_items())
    api_only = _items_file(tmp_path / "api.jsonl", synthetic_items(3, in_bucket=False))
    good = _items_file(tmp_path / "good.jsonl", synthetic_items(3))
    plan_args = ["--s3-prefix", f"s3://{BUCKET}/x", "--no-upload"]
    port = free_port()
    estimate_str = _plan_variant(planned, "estimate-str", _set(["estimate"], "cheap"))
    not_s3 = _plan_variant(planned, "not-s3", _set(["output_prefix"], "/tmp/out"))
    count_str = _plan_variant(planned, "count-str", _set(["jobs", 0, "instance_count"], "3"))
    per_job_str = _plan_variant(planned, "per-job-str", _set(["instances_per_job"], "three"))
    jobs_obj = _plan_variant(planned, "jobs-obj", _set(["jobs"], {"a": 1}))
    top_list = tmp_path / "top-list.json"
    top_list.write_text("[]")
    nodir = str(tmp_path / "missing")
    empty_path = tmp_path / "empty-path"
    empty_path.mkdir()
    raster = str(_raster(tmp_path / "in.tif"))
    code = tmp_path / "code"
    code.mkdir()
    (code / "fit.py").write_text("pass\n")
    script = ["--image", IMAGE, "--role", ROLE, "--output", f"s3://{BUCKET}/runs/", "--dry-run"]
    sub = ["--image", IMAGE, "--role", ROLE]
    train = ["--image", IMAGE, "--role", ROLE, "--channels", "s3://b/sn6/", "--dry-run"]
    cases: list[tuple[list[str], int, str]] = [
        # search
        (["search"], 2, "--out"),
        (["search", "--out", out], 2, "give an area"),
        (["search", "--bbox", "1,2,3", "--out", out], 2, "four numbers"),
        (["search", "--bbox=a,b,c,d", "--out", out], 2, "four numbers"),
        (["search", "--bbox=0,50,10,40", "--out", out], 2, "S <= N"),
        (["search", "--bbox=0,40,10,50", "--datetime", "2023-13-01/2023-12-07", "--out", out], 2, "2023-13-01"),
        (["search", "--bbox=0,40,10,50", "--datetime", "last week", "--out", out], 2, "START/END"),
        (["search", "--bbox=0,40,10,50", "--datetime", "2023-12-07/2023-12-01", "--out", out], 2, "after the end"),
        (["search", "--bbox=0,40,10,50", "--datetime", "../..", "--out", out], 2, "no range"),
        (["search", "--bbox=0,40,10,50", "--datetime", "2023-12-01/2023-12-02/2023-12-03", "--out", out], 2, "START/END"),
        (["search", "--bbox=0,40,10,50", "--max-cloud", "150", "--out", out], 2, "0..100"),
        (["search", "--bbox=0,40,10,50", "--max-cloud", "nan", "--out", out], 2, "0..100"),
        (["search", "--bbox=0,40,10,50", "--page-size", "0", "--out", out], 2, "page size"),
        (["search", "--bbox=0,40,10,50", "--max-items", "0", "--out", out], 2, "--max-items"),
        (["search", "--bbox=0,40,10,50", "--max-pages", "0", "--out", out], 2, "--max-pages"),
        (["search", "--bbox=0,40,10,50", "--max-pages", "x", "--out", out], 2, "--max-pages"),
        (["search", "--intersects", str(notjson), "--out", out], 2, ""),
        (["search", "--intersects", str(listjson), "--out", out], 2, "GeoJSON object"),
        (["search", "--intersects", str(two), "--out", out], 2, "2 features"),
        (["search", "--intersects", str(binary), "--out", out], 2, "GeoJSON"),
        (["search", "--intersects", nodir, "--out", out], 2, "does not exist"),
        (["search", "--bbox=0,40,10,50", "--out", f"{nodir}/x.jsonl"], 2, "does not exist"),
        (["search", "--bbox=0,40,10,50", "--stac-url", "not-a-url", "--out", out], 2, "http(s)://"),
        (["search", "--bbox=0,40,10,50", "--stac-url", f"http://127.0.0.1:{port}", "--out", out], 1, "STAC search"),
        (["search", "--bbox=0,40,10,50", "--source", "sagemaker-geospatial", "--out", out], 2, "closed time range"),
        (["search", "--bbox=0,40,10,50", "--dedupe", "best", "--out", out], 2, "best"),
        # plan
        (["plan"], 2, "--items"),
        (["plan", "--items", nodir, *plan_args, "--out", nodir], 2, "does not exist"),
        (["plan", "--items", str(empty), *plan_args, "--out", nodir], 1, "no items"),
        (["plan", "--items", str(binary), *plan_args, "--out", nodir], 1, "UTF-8"),
        (["plan", "--items", str(noitems), *plan_args, "--out", nodir], 1, "no STAC item"),
        (["plan", "--items", str(notjson), *plan_args, "--out", nodir], 1, "malformed JSON"),
        (["plan", "--items", str(hostile), *plan_args, "--out", nodir], 1, "no items to plan"),
        (["plan", "--items", str(good), "--jobs", "0", *plan_args, "--out", nodir], 2, "--jobs"),
        (["plan", "--items", str(good), "--jobs", "x", *plan_args, "--out", nodir], 2, "--jobs"),
        (["plan", "--items", str(good), "--instances-per-job", "101", *plan_args, "--out", nodir], 2, "1..100"),
        (["plan", "--items", str(good), "--s3-prefix", "bucket/p", "--no-upload", "--out", nodir], 2, "s3://"),
        (["plan", "--items", str(good), "--s3-prefix", "s3://", "--no-upload", "--out", nodir], 2, "s3://"),
        (["plan", "--items", str(good), "--run-id", "bad id!", *plan_args, "--out", nodir], 2, "run id"),
        (["plan", "--items", str(good), "--run-id", "../x", *plan_args, "--out", nodir], 2, "run id"),
        (["plan", "--items", str(good), "--instance-type", "m5.xlarge", *plan_args, "--out", nodir], 2,
         "did you mean ml.m5.xlarge"),
        (["plan", "--items", str(good), "--instance-type", "ml.p5.48xlarge", *plan_args, "--out", nodir], 2,
         "--price-per-hour"),
        (["plan", "--items", str(good), "--price-per-hour", "-1", *plan_args, "--out", nodir], 2, "--price-per-hour"),
        (["plan", "--items", str(good), "--seconds-per-scene", "0", *plan_args, "--out", nodir], 2, "seconds"),
        (["plan", "--items", str(good), "--seconds-per-scene", "1e308", *plan_args, "--out", nodir], 2, "one day"),
        (["plan", "--items", str(good), "--seconds-per-scene", "nan", *plan_args, "--out", nodir], 2, "one day"),
        (["plan", "--items", str(api_only), "--no-copy-items", *plan_args, "--out", nodir], 2, "--no-copy-items"),
        (["plan", "--items", str(good), *plan_args, "--out", str(good)], 2, "is a file"),
        # upload
        (["upload"], 2, "--plan"),
        (["upload", "--plan", nodir], 1, "no plan at"),
        (["upload", "--plan", str(notjson)], 1, "not valid JSON"),
        (["upload", "--plan", str(empty_path)], 1, "no plan at"),
        # submit
        (["submit", "--plan", P, "--role", ROLE], 2, "--image is required"),
        (["submit", "--plan", P, "--image", IMAGE], 2, "--role is required"),
        (["submit", "--plan", P, "--image", IMAGE, "--role", "nope", "--dry-run"], 2, "RoleArn"),
        (["submit", "--plan", P, *sub, "--instance-type", "m5.xlarge", "--dry-run"], 2, "ml.m5.xlarge"),
        (["submit", "--plan", P, *sub, "--volume-gb", "0", "--dry-run"], 2, "VolumeSizeInGB"),
        (["submit", "--plan", P, *sub, "--max-runtime", "-5", "--dry-run"], 2, "MaxRuntimeInSeconds"),
        (["submit", "--plan", P, *sub, "--env", "=x", "--dry-run"], 2, "--env"),
        (["submit", "--plan", P, *sub, "--env", "1BAD=x", "--dry-run"], 2, "--env"),
        (["submit", "--plan", P, *sub, "--worker-arg", "", "--dry-run"], 2, "container argument"),
        (["submit", "--plan", P, *sub, "--round", "7", "--dry-run"], 2, "round 7"),
        (["submit", "--plan", nodir, *sub], 1, "no plan at"),
        (["submit", "--plan", per_job_str, *sub, "--dry-run"], 1, "plan.instances_per_job: expected an integer"),
        # status
        (["status"], 2, "--plan"),
        (["status", "--plan", nodir], 1, "no plan at"),
        (["status", "--plan", str(binary)], 1, "not a text file"),
        (["status", "--plan", str(top_list)], 1, "expected an object"),
        (["status", "--plan", not_s3], 1, "plan.output_prefix: expected an s3://"),
        (["status", "--plan", estimate_str], 1, "plan.estimate: expected an object"),
        (["status", "--plan", per_job_str], 1, "plan.instances_per_job: expected an integer"),
        (["status", "--plan", jobs_obj], 1, "plan.jobs: expected a list"),
        # watch
        (["watch", "--plan", P, "--interval", "0"], 2, "--interval"),
        (["watch", "--plan", P, "--interval", "-1"], 2, "--interval"),
        (["watch", "--plan", P, "--interval", "soon"], 2, "--interval"),
        (["watch", "--plan", P, "--timeout", "-1"], 2, "--timeout"),
        (["watch", "--plan", not_s3], 1, "plan.output_prefix"),
        # resume
        (["resume", "--plan", count_str, "--dry-run"], 1, "plan.jobs[0].instance_count: expected an integer"),
        (["resume", "--plan", P, "--jobs", "0", "--dry-run"], 2, "--jobs"),
        (["resume", "--plan", P, *sub, "--instance-type", "m5.xlarge", "--dry-run"], 2, "ml.m5.xlarge"),
        (["resume", "--plan", P, "--dry-run"], 2, "--image is required"),
        # local
        (["local", "--plan", P, "--instances", "0", "--no-docker"], 2, "--instances"),
        (["local", "--plan", P, "--instances", "101", "--no-docker"], 2, "--instances"),
        (["local", "--plan", P, "--parallel", "0", "--no-docker"], 2, "--parallel"),
        (["local", "--plan", P, "--job", "nope", "--no-docker"], 2, "no such job"),
        (["local", "--plan", P, "--round", "9", "--no-docker"], 2, "no jobs selected"),
        (["local", "--plan", P, "--volume", "nocolon"], 2, "--volume"),
        (["local", "--plan", P, "--env", "bad name=1", "--no-docker"], 2, "--env"),
        (["local", "--plan", P, "--env", "UNSET_SECRET_TOKEN", "--no-docker"], 2, "export UNSET_SECRET_TOKEN"),
        (["local", "--plan", estimate_str, "--no-docker"], 1, "plan.estimate"),
        # composite / mosaic (stage 2)
        (["composite", "--plan", P], 2, "--method"),
        (["composite", "--plan", P, "--method", "mode"], 2, "mode"),
        (["composite", "--plan", P, "--method", "max", "--period", "last week"], 2, "START/END"),
        (["composite", "--plan", P, "--method", "max", "--period", "2023-12-07/2023-12-01"], 2, "ends before"),
        (["composite", "--plan", P, "--method", "max", "--jobs", "0"], 2, "--jobs"),
        (["composite", "--plan", P, "--method", "max", "--memory-mb", "1"], 2, "--memory-mb"),
        (["composite", "--plan", P, "--method", "max", "--volume-gb", "0"], 2, "--volume-gb"),
        (["composite", "--plan", P, "--method", "max", "--no-docker"], 2, "--local"),
        (["composite", "--plan", P, "--method", "max", "--dry-run"], 2, "--image is required"),
        (["composite", "--plan", P, "--method", "max", *sub, "--dry-run"], 1, "have no output yet"),
        (["composite", "--plan", P, "--method", "max", *sub, "--partial", "--dry-run"], 1, "no per-scene outputs"),
        (["composite", "--plan", P, "--method", "max", "--local", "--no-docker", "--env", "bad name=1"], 2, "--env"),
        (["composite", "--plan", nodir, "--method", "max"], 1, "no plan at"),
        (["composite", "--plan", jobs_obj, "--method", "max"], 1, "plan.jobs: expected a list"),
        (["mosaic", "--plan", P, "--resolution", "0"], 2, "--resolution"),
        (["mosaic", "--plan", P, "--resolution", "x"], 2, "--resolution"),
        (["mosaic", "--plan", P, "--bbox", "1,2,3"], 2, "--bbox"),
        (["mosaic", "--plan", P, "--source", "tiles"], 2, "tiles"),
        (["mosaic", "--plan", P, "--max-runtime", "0"], 2, "--max-runtime"),
        (["mosaic", "--plan", P, *sub, "--source", "composites", "--partial", "--dry-run"], 2, "no composite round"),
        (["mosaic", "--plan", P, *sub, "--dry-run"], 1, "have no output yet"),
        (["mosaic", "--plan", estimate_str], 1, "plan.estimate"),
        # train / tune / deploy / predict
        (["train"], 2, "Missing option"),
        (["train", *train, "--hp", "noequals"], 2, "key=value"),
        (["train", "--image", IMAGE, "--role", "nope", "--channels", "s3://b/sn6/", "--dry-run"], 2, "--role"),
        (["train", "--image", IMAGE, "--role", ROLE, "--channels", "notS3", "--dry-run"], 2, "s3://"),
        (["train", *train, "--name", "bad name!"], 2, "name"),
        (["train", *train, "--instance-count", "zero"], 2, "--instance-count"),
        (["train", *script, "--entry-point", nodir], 2, "no such file"),
        (["train", *script, "--entry-point", "../fit.py", "--source-dir", str(code)], 2, "'..' path segment"),
        (["train", *script, "--entry-point", "/etc/passwd", "--source-dir", str(code)], 2, "outside --source-dir"),
        (["train", *script, "--entry-point", "-x.py", "--source-dir", str(code)], 2, "starts with '-'"),
        (["train", *script, "--entry-point", str(code / "fit.py"), "--metric", "x=("], 2, "--metric"),
        (["train", *script, "--entry-point", str(code / "fit.py"), "--metric", "noequals"], 2, "NAME=REGEX"),
        (["train", *script, "--metric", "x=(1)"], 2, "go with --entry-point"),
        (["train", "--image", IMAGE, "--role", ROLE, "--entry-point", str(code / "fit.py"), "--dry-run"], 2,
         "--output"),
        (["tune", *train, "--range", "learning_rate=a:b"], 2, "numbers"),
        (["tune", *train, "--max-jobs", "2", "--max-parallel", "5"], 2, "max parallel"),
        (["deploy", "--name", "e", "--image", IMAGE, "--role", ROLE], 2, "exactly one of"),
        (["deploy", "--name", "e", "--image", IMAGE, "--role", ROLE, "--model-data", "x", "--dry-run"], 2,
         "--model-data"),
        (["deploy", "--name", "e", "--image", IMAGE, "--role", ROLE, "--model-data", "s3://b/model.tar.gz",
          "--env", "UNKNOWN=1", "--dry-run"], 2, "unknown serving setting"),
        (["deploy", "--name", "e", "--image", IMAGE, "--role", ROLE, "--model-data", "s3://b/model.tar.gz",
          "--instance-count", "0", "--dry-run"], 2, "instance count"),
        (["predict", nodir, "--out", out, "--url", "http://x"], 2, "does not exist"),
        (["predict", str(good), "--out", out], 2, "exactly one of"),
        (["predict", str(binary), "--out", out, "--url", f"http://127.0.0.1:{port}"], 1, ""),
        *[(["predict", raster, "--out", out, "--url", f"http://127.0.0.1:{port}", *bad], 2, needle)
          for bad, needle in (
              (["--max-payload-mb", "nan"], "--max-payload-mb"), (["--max-payload-mb", "inf"], "--max-payload-mb"),
              (["--max-payload-mb", "0"], "--max-payload-mb"), (["--max-payload-mb", "-1"], "--max-payload-mb"),
              (["--max-payload-mb", "x"], "--max-payload-mb"), (["--max-payload-mb", "1e-9"], "--max-payload-mb"),
              (["--margin", "-5"], "--margin"), (["--concurrency", "0"], "--concurrency"),
              (["--concurrency", "-1"], "--concurrency"))],
        (["nosuchcommand"], 2, "No such command"),
    ]  # fmt: skip
    covered = {args[0] for args, _, _ in cases}
    assert set(cli.commands) <= covered, f"commands without bad-input cases: {set(cli.commands) - covered}"
    problems = []
    for args, code, needle in cases:
        r = CliRunner().invoke(cli, args)
        text = r.output
        ok = (
            r.exit_code == code
            and (r.exception is None or isinstance(r.exception, SystemExit))
            and "Traceback" not in text
            and "unexpected error" not in text
            and needle in text
            and "Error" in text
        )
        if not ok:
            problems.append(
                f"{args}: exit {r.exit_code} (want {code}), {r.exception!r}, output: {text[-400:]!r}"
            )
    assert not problems, "\n".join(problems)


def test_local_without_a_docker_engine_says_why_and_keeps_the_last_status(
    aws, planned, tmp_path, monkeypatch
):
    status = planned / "local" / "sec-r0-000" / "local-status.json"
    status.parent.mkdir(parents=True)
    status.write_text('{"job": "sec-r0-000", "status": "Completed", "instances": []}')
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    r = _run("local", "--plan", str(planned))
    assert r.exit_code == 1, r.output
    assert "no Docker engine" in r.output and "--no-docker" in r.output and "Traceback" not in r.output
    assert json.loads(status.read_text())["status"] == "Completed"
    assert sorted(p.name for p in status.parent.iterdir()) == ["local-status.json"]


def test_local_reports_the_reason_from_the_log_when_the_instance_wrote_none(
    aws, planned, monkeypatch
) -> None:
    def failing(argv, stdout=None, stderr=None, env=None):  # noqa: ANN001
        code = "import sys; print('docker: Cannot connect to the Docker daemon at unix:///x.sock.'); sys.exit(125)"
        return _REAL_POPEN([sys.executable, "-c", code], stdout=stdout, stderr=stderr)

    monkeypatch.setattr("launcher.ndvi.local_run.subprocess.Popen", failing)
    monkeypatch.setattr("launcher.ndvi.local_run.docker_problem", lambda: None)
    r = _run("local", "--plan", str(planned), "--instances", "1")
    assert r.exit_code == 1
    assert "exited 125" in r.output and "Cannot connect to the Docker daemon" in r.output, r.output
    job = planned / "local" / "sec-r0-000"
    assert json.loads((job / "local-status.json").read_text())["status"] == "Failed"
    r = _run("local", "--plan", str(planned), "--instances", "1", "--job", "sec-r0-000")
    assert (job / "local-status.previous.json").is_file()  # the earlier run's status is kept


# ------------------------------------------------------------------------------------ misleading messages


def test_plan_without_credentials_writes_nothing_and_mentions_no_upload(
    aws, tmp_path: Path, monkeypatch
) -> None:
    from launcher.aws import reset_session

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    reset_session()
    items = _items_file(tmp_path / "items.jsonl", synthetic_items(3, in_bucket=False))
    run = tmp_path / "run"
    r = _run("plan", "--items", str(items), "--s3-prefix", f"s3://{BUCKET}/x", "--out", str(run))
    assert r.exit_code == 1
    assert "no AWS credentials" in r.output and "--no-upload" in r.output and "launcher upload" in r.output
    assert not run.exists()


def test_plan_no_upload_then_upload(aws, tmp_path: Path) -> None:
    from launcher.aws import client

    items = _items_file(tmp_path / "items.jsonl", synthetic_items(3, in_bucket=False))
    run = tmp_path / "run"
    r = _run("plan", "--items", str(items), "--s3-prefix", f"s3://{BUCKET}/x", "--run-id", "later",
             "--jobs", "2", "--out", str(run), "--no-upload")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "JSONs written under" not in r.output and "to be written under" in r.output
    assert "launcher upload --plan" in r.output
    assert aws.sent("s3") == []
    r = _run("status", "--plan", str(run))
    assert "launcher submit --plan" in r.output and "launcher resume" not in r.output, r.output
    r = _run("upload", "--plan", str(run))
    assert r.exit_code == 0, r.output
    keys = sorted(
        o["Key"] for o in client("s3").list_objects_v2(Bucket=BUCKET, Prefix="x/later/")["Contents"]
    )
    assert len([k for k in keys if "/items/" in k]) == 3 and len([k for k in keys if "/manifests/" in k]) == 2
    assert "x/later/plan.json" in keys


def test_copied_items_come_in_batches_retried_and_counted(aws, tmp_path: Path) -> None:
    """40 items from no bucket, 2 jobs x 3 instances: 6 batch objects (JSON Lines), 2 manifests, plan.json; a
    503 SlowDown on one upload is retried; every item lands once, as written."""
    from launcher.aws import client

    items = synthetic_items(40, in_bucket=False)
    path = _items_file(tmp_path / "items.jsonl", items)
    state = {"n": 0}

    def slow_down(_body: Any) -> tuple[int, dict[str, Any]] | None:
        state["n"] += 1
        return (
            (503, {"__type": "SlowDown", "message": "Please reduce your request rate."})
            if state["n"] == 3
            else None
        )

    aws.answer("s3", "PutObject", slow_down)
    r = _run("plan", "--items", str(path), "--s3-prefix", f"s3://{BUCKET}/x", "--run-id", "batched",
             "--jobs", "2", "--instances-per-job", "3", "--out", str(tmp_path / "run"))  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "copied in 6 batch(es)" in r.output
    assert len(aws.injected("PutObject")) == 1 and len(aws.sent("s3", "PutObject")) == 6 + 2 + 1
    s3 = client("s3")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="x/batched/items/")["Contents"])
    assert keys == [f"x/batched/items/r0-{j:03d}-{k:04d}.jsonl" for j in range(2) for k in range(3)]
    landed = [
        json.loads(line)
        for key in keys
        for line in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode().splitlines()
    ]
    assert sorted(landed, key=lambda i: i["id"]) == sorted(items, key=lambda i: i["id"])


def test_upload_refuses_a_batch_that_lost_an_item(aws, tmp_path: Path) -> None:
    path = _items_file(tmp_path / "items.jsonl", synthetic_items(6, in_bucket=False))
    run = tmp_path / "run"
    r = _run("plan", "--items", str(path), "--s3-prefix", f"s3://{BUCKET}/x", "--run-id", "cut", "--jobs", "1",
             "--instances-per-job", "2", "--out", str(run), "--no-upload")  # fmt: skip
    assert r.exit_code == 0, r.output
    batch = run / "items" / "r0-000-0001.jsonl"
    lines = batch.read_text().splitlines()
    batch.write_text(lines[0] + "\n")  # one item of the batch gone
    lost = json.loads(lines[1])["id"]
    r = _run("upload", "--plan", str(run))
    assert r.exit_code == 1 and f"lacks item {lost}" in r.output and "Traceback" not in r.output
    assert aws.sent("s3", "PutObject") == []  # checked before anything is written


@pytest.mark.parametrize(
    "body", [b"\xff\xfe not text", b'{"id": "x"', b"[1, 2]\n", b'{"type": "Feature", "id": "other"}\n']
)
def test_resume_refuses_a_tampered_batch(aws, tmp_path: Path, body: bytes) -> None:
    from launcher.aws import client

    path = _items_file(tmp_path / "items.jsonl", synthetic_items(4, in_bucket=False))
    run = tmp_path / "run"
    r = _run("plan", "--items", str(path), "--s3-prefix", f"s3://{BUCKET}/x", "--run-id", "tamper", "--jobs", "1",
             "--instances-per-job", "1", "--out", str(run))  # fmt: skip
    assert r.exit_code == 0, r.output
    client("s3").put_object(Bucket=BUCKET, Key="x/tamper/items/r0-000-0000.jsonl", Body=body)
    r = _run("resume", "--plan", str(run), "--no-submit")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "r0-000-0000.jsonl" in r.output and "plan the run again" in r.output
    assert len(r.output.strip().splitlines()) <= 3, r.output
    assert load_plan(run).rounds == [0]  # nothing planned, nothing uploaded
    manifests = client("s3").list_objects_v2(Bucket=BUCKET, Prefix="x/tamper/manifests/")["Contents"]
    assert [o["Key"] for o in manifests] == ["x/tamper/manifests/r0-000.json"]


def test_plan_reads_what_the_worker_reads(aws, tmp_path: Path) -> None:
    items = synthetic_items(4)
    collection = tmp_path / "items.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    single = tmp_path / "one.json"
    single.write_text(json.dumps(items[0]))
    for path, n in ((collection, 4), (single, 1)):
        out = tmp_path / f"run-{path.stem}"
        r = _run(
            "plan", "--items", str(path), "--s3-prefix", f"s3://{BUCKET}/x", "--out", str(out), "--no-upload"
        )
        assert r.exit_code == 0, r.output
        assert load_plan(out).scene_count == n


def test_no_region_hint_names_what_botocore_reads() -> None:
    from botocore.exceptions import NoRegionError

    from launcher.cli.console import aws_hint as _aws_hint

    hint = _aws_hint(NoRegionError())
    assert "export AWS_DEFAULT_REGION=" in hint and "does not read AWS_REGION" in hint


# -------------------------------------------------------------------------------------- the typed plan loader


def _valid_plan_dict() -> dict[str, Any]:
    from launcher.ndvi.plan import Submission

    plan, _, _ = make_plan(synthetic_items(5), run_id="run-1", created="2023-12-08T00:00:00+00:00",
                           s3_prefix="s3://b/p", jobs=2, instances_per_job=2)  # fmt: skip
    import dataclasses

    plan = dataclasses.replace(
        plan,
        submission=Submission(image=IMAGE, role=ROLE, environment={"A": "1"}, env_from_caller=("API_TOKEN",)),
    )
    return json.loads(json.dumps(plan.to_dict()))


TYPE_CASES = [
    (["instances_per_job"], "three", "plan.instances_per_job: expected an integer"),
    (["instances_per_job"], True, "plan.instances_per_job: expected an integer"),
    (["instances_per_job"], 0, "plan.instances_per_job: must be within 1..100"),
    (["jobs", 0, "instance_count"], "3", "plan.jobs[0].instance_count: expected an integer"),
    (["jobs", 0, "instance_count"], 3.5, "plan.jobs[0].instance_count: expected an integer"),
    (["jobs"], {"a": 1}, "plan.jobs: expected a list"),
    (["jobs"], [], "plan.jobs: a plan has at least one job"),
    (["estimate"], "cheap", "plan.estimate: expected an object"),
    (["estimate", "cost_usd"], "12", "plan.estimate.cost_usd: expected a finite number"),
    (["estimate", "cost_usd"], float("nan"), "plan.estimate.cost_usd: expected a finite number"),
    (["estimate", "cost_usd"], -1, "plan.estimate.cost_usd: must be within"),
    (["output_prefix"], "/tmp/out", "plan.output_prefix: expected an s3://"),
    (["s3_prefix"], 5, "plan.s3_prefix: expected a string"),
    (["run_id"], "run-1\n", "plan.run_id"),
    (["jobs", 0, "scenes", 0, "item_id"], "../../x", "plan.jobs[0].scenes[0].item_id: unsafe item id"),
    (["jobs", 0, "scenes", 0, "uri"], "https://x/y.json", "plan.jobs[0].scenes[0].uri"),
    (["jobs", 0, "scenes", 0, "tile"], 7, "plan.jobs[0].scenes[0].tile: expected a string"),
    (["jobs", 0, "name"], "../../x", "plan.jobs[0].name"),
    (["jobs", 0, "name"], "other-r0-000", "plan.jobs[0].name"),
    (["jobs", 0, "round"], -1, "plan.jobs[0].round: must be within"),
    (["jobs", 0, "scene_count"], "x", "scene_count 'x' does not match"),
    (["jobs", 0, "manifest_uri"], None, "plan.jobs[0].manifest_uri: expected a string, got null"),
    (["submission", "image"], 1, "plan.submission.image: expected a string"),
    (["submission", "worker_args"], "--x", "plan.submission.worker_args: expected a list"),
    (["submission", "environment"], {"API_TOKEN": "x"}, "look(s) like secrets"),
    (["submission", "environment", "A"], 1, "plan.submission.environment.A: expected a string"),
    (["submission", "env_from_caller"], ["bad name"], "not an environment variable name"),
    (["submission", "volume_gb"], "30", "plan.submission.volume_gb: expected an integer"),
    (["submission", "extra"], 1, "plan.submission: unknown key(s) extra"),
    (["version"], "1", "plan version '1' is not supported"),
    (["dedupe"], ["x"], "plan.dedupe: expected a string"),
]


@pytest.mark.parametrize(("path", "value", "message"), TYPE_CASES, ids=[m for _, _, m in TYPE_CASES])
def test_plan_loader_type_checks_values(path: list, value: Any, message: str) -> None:
    data = _valid_plan_dict()
    assert Plan.from_dict(copy.deepcopy(data)).to_dict() == data  # the valid plan round-trips
    _set(path, value)(data)
    with pytest.raises(PlanError) as info:
        Plan.from_dict(data)
    assert message in str(info.value)


def test_load_plan_names_the_file(tmp_path: Path) -> None:
    data = _valid_plan_dict()
    data["jobs"][1]["instance_count"] = "3"
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=r"plan.json: plan.jobs\[1\].instance_count: expected an integer"):
        load_plan(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fuzz_loader_any_json_raises_only_plan_errors(data: Any) -> None:
    with contextlib.suppress(PlanError):  # any other exception fails the test
        Plan.from_dict(data)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


VALID = _valid_plan_dict()
VALID_PATHS = _paths(VALID)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(VALID_PATHS), json_values | st.just(None)), min_size=1, max_size=3),
       st.booleans())  # fmt: skip
def test_fuzz_loader_mutated_plans(mutations: list, delete: bool) -> None:
    data = copy.deepcopy(VALID)
    for path, value in mutations:
        target = data
        try:
            for key in path[:-1]:
                target = target[key]
            if delete and isinstance(target, dict):
                target.pop(path[-1], None)
            else:
                target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation changed the shape
    try:
        plan = Plan.from_dict(data)
    except PlanError:
        return
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan  # what loads, saves and loads again


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzz_load_plan_any_file_raises_only_plan_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    with contextlib.suppress(PlanError):
        load_plan(path)


def test_deeply_nested_plan_file(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(PlanError):
        load_plan(path)
    os.remove(path)


def _copied_run(tmp_path: Path, items: list[dict[str, Any]], run_id: str, *extra: str) -> Path:
    path = _items_file(tmp_path / f"{run_id}.jsonl", items)
    run = tmp_path / run_id
    r = _run("plan", "--items", str(path), "--s3-prefix", f"s3://{BUCKET}/x", "--run-id", run_id, "--jobs", "1",
             "--instances-per-job", "1", "--out", str(run), *extra)  # fmt: skip
    assert r.exit_code == 0, r.output
    return run


def _batch(s3: Any, uri: str) -> list[dict[str, Any]]:
    body = s3.get_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/"))["Body"].read()
    return [json.loads(line) for line in body.split(b"\n") if line]


def test_resume_reads_items_with_line_separators_and_the_latest_fix(aws, tmp_path: Path) -> None:
    """Characters JSON allows unescaped (U+2028, U+2029, U+0085) survive a batch and its resume; a fix written into
    the latest round's batch is what the next round gets (not the first round's copy)."""
    from launcher.aws import client

    items = synthetic_items(3, in_bucket=False)
    items[0]["properties"]["title"] = "line\u2028separator\u2029paragraph\x85next"
    run = _copied_run(tmp_path, items, "seps", "--no-upload")
    assert _run("upload", "--plan", str(run)).exit_code == 0
    s3 = client("s3")
    first = load_plan(run).jobs[0].scenes[0].uri
    raw = s3.get_object(Bucket=BUCKET, Key=first.removeprefix(f"s3://{BUCKET}/"))["Body"].read()
    assert raw.count(b"\n") == 3 and b"\\u2028" in raw  # one line per item, separators escaped
    assert _batch(s3, first) == items
    r = _run("resume", "--plan", str(run), "--no-submit")  # nothing done: every scene again, from the batch
    assert r.exit_code == 0, r.output
    round1 = load_plan(run).jobs_of_round(1)[0].scenes[0].uri
    assert _batch(s3, round1) == items
    fixed = json.loads(json.dumps(items))
    fixed[1]["assets"]["red"]["href"] = "https://example.com/fixed/B04.tif"
    s3.put_object(Bucket=BUCKET, Key=round1.removeprefix(f"s3://{BUCKET}/"),
                  Body="".join(json.dumps(i) + "\n" for i in fixed).encode())  # fmt: skip
    r = _run("resume", "--plan", str(run), "--no-submit")
    assert r.exit_code == 0, r.output
    round2 = load_plan(run).jobs_of_round(2)[0].scenes[0].uri
    assert _batch(s3, round2) == fixed
    r = _run(
        "upload", "--plan", str(run)
    )  # planned with --no-upload: the resume rounds' batches are in DIR/items too
    assert r.exit_code == 0, r.output
    assert _batch(s3, round2) == fixed


def test_a_plan_made_before_batches_resumes_and_uploads_as_it_was(aws, tmp_path: Path) -> None:
    """Plans before batches list items/<id>.json, the same object in every round: resume reads them, upload
    writes each once as one item JSON (not as JSON Lines of repeated items)."""
    from launcher.aws import client
    from launcher.ndvi.store import save_items

    items = synthetic_items(2, in_bucket=False)
    run = _copied_run(tmp_path, items, "old", "--no-upload")
    data = json.loads((run / "plan.json").read_text())
    for job in data["jobs"]:
        for scene in job["scenes"]:
            scene["uri"] = f"s3://{BUCKET}/x/old/items/{scene['item_id']}.json"
    second = json.loads(json.dumps(data["jobs"][0]))
    second.update(round=1, name="old-r1-000", manifest_uri=f"s3://{BUCKET}/x/old/manifests/r1-000.json")
    data["jobs"].append(second)
    (run / "plan.json").write_text(json.dumps(data))
    for f in (run / "items").iterdir():
        f.unlink()
    save_items({f"s3://{BUCKET}/x/old/items/{i['id']}.json": [i] for i in items}, run)
    (run / "manifests" / "r1-000.json").write_text((run / "manifests" / "r0-000.json").read_text())
    r = _run("upload", "--plan", str(run))
    assert r.exit_code == 0, r.output
    s3 = client("s3")
    for item in items:
        body = s3.get_object(Bucket=BUCKET, Key=f"x/old/items/{item['id']}.json")["Body"].read()
        assert json.loads(body) == item  # one JSON document, as the worker reads a .json file
    r = _run("resume", "--plan", str(run), "--no-submit")
    assert r.exit_code == 0, r.output
    assert sorted(i["id"] for i in _batch(s3, load_plan(run).jobs_of_round(2)[0].scenes[0].uri)) == sorted(
        i["id"] for i in items
    )


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (None, "is gone"),
        (b'{"type":"Feature","id":"X"}\n' * 2, "twice"),
        (b'{"id": "\\ud800"}\n', "not an item JSON"),
        (b'{"id": "a", "x": NaN}\n', "NaN and Infinity are not JSON"),
        (b"x" * (33 * 2**20), "larger than 32 MB"),
    ],
)
def test_resume_names_a_batch_it_cannot_use(aws, tmp_path: Path, body: bytes | None, says: str) -> None:
    from launcher.aws import client

    items = synthetic_items(2, in_bucket=False)
    run = _copied_run(tmp_path, items, "named")
    key = "x/named/items/r0-000-0000.jsonl"
    s3 = client("s3")
    if body is None:
        s3.delete_object(Bucket=BUCKET, Key=key)
    else:
        s3.put_object(Bucket=BUCKET, Key=key, Body=body.replace(b'"X"', json.dumps(items[0]["id"]).encode()))
    r = _run("resume", "--plan", str(run), "--no-submit")
    assert r.exit_code == 1 and "Traceback" not in r.output and "unexpected error" not in r.output, r.output
    assert key in r.output and says in r.output, r.output
    assert load_plan(run).rounds == [0]


def test_search_output_is_strict_json_the_planner_reads(tmp_path: Path) -> None:
    """An API answer with NaN (which `json.dumps` writes as it is) is written as null, so `plan` reads the file."""
    from launcher.ndvi.search import write_jsonl

    items = synthetic_items(2, in_bucket=False)
    items[0]["properties"]["eo:cloud_cover"] = float("nan")
    path = tmp_path / "items.jsonl"
    assert write_jsonl(items, str(path)) == 2
    lines = path.read_text().splitlines()
    assert json.loads(lines[0], parse_constant=pytest.fail)["properties"]["eo:cloud_cover"] is None
    r = _run("plan", "--items", str(path), "--s3-prefix", f"s3://{BUCKET}/x", "--out", str(tmp_path / "run"),
             "--no-upload")  # fmt: skip
    assert r.exit_code == 0, r.output
