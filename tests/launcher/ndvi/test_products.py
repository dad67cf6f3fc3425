"""Stage 2 (issue 12): `launcher composite` and `launcher mosaic`. The pure grouping and output scan, the typed
plan.json round, the requests sent to moto (manifests grouped by tile, container arguments, outputs), status,
watch and resume over the new rounds, and `--local --no-docker` end to end with the real worker."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from earthmon_testing.launcher import require, synthetic_items
from launcher.cli import cli
from launcher.ndvi.plan import Plan, PlanError, make_plan
from launcher.ndvi.products import group_tiles, plan_composites, scan_outputs, volume_for
from launcher.ndvi.store import load_plan

BUCKET = "earthmon-test"
ROLE = "arn:aws:iam::123456789012:role/earthmon-processing"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/earthmon-processing:1.0"
# dates per tile: uneven on purpose (grouping balances dates, not tiles)
DATES = {
    "31UFU": ["20231202", "20231204", "20231207"],
    "31UGU": ["20231203", "20231206"],
    "32ULC": ["20231205"],
    "32UMC": ["20231201"],
}


def _run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def _items() -> list[dict]:
    base = synthetic_items(1, in_bucket=False)[0]
    out = []
    for tile, dates in DATES.items():
        for date in dates:
            item = copy.deepcopy(base)
            item["id"] = f"S2B_{tile}_{date}_0_L2A"
            item["properties"]["grid:code"] = f"MGRS-{tile}"
            out.append(item)
    return out


def _tile(key: str) -> str:
    return key.rsplit("/", 1)[-1].split("_")[1]


# --------------------------------------------------------------------------------------------------- pure


def test_group_tiles_balances_dates_and_keeps_every_tile_once() -> None:
    sizes = {t: len(d) for t, d in DATES.items()}
    assert group_tiles(sizes, 2) == [["31UFU", "32UMC"], ["31UGU", "32ULC"]]  # 4 and 3 dates
    assert group_tiles(sizes, 10) == [["31UFU"], ["31UGU"], ["32ULC"], ["32UMC"]]  # never an empty job
    assert sorted(t for g in group_tiles(sizes, 3) for t in g) == sorted(sizes)
    assert volume_for(0) == 30 and volume_for(100 * 2**30) == 210 and volume_for(2**50) == 16384


def test_scan_needs_both_files_and_a_rewritten_scene_counts_once() -> None:
    plan, _, _ = make_plan(_items(), run_id="sc", created="t", s3_prefix=f"s3://{BUCKET}/p", jobs=2,
                           instances_per_job=1)  # fmt: skip
    a, b = "S2B_31UFU_20231202_0_L2A", "S2B_31UGU_20231203_0_L2A"
    objects = {
        f"p/sc/output/sc-r0-000/{a}_ndvi.tif": 10,
        f"p/sc/output/sc-r0-000/{a}_ndvi.json": 1,
        f"p/sc/output/sc-r0-001/{a}_ndvi.tif": 20,  # written again by a later job: that one is used
        f"p/sc/output/sc-r0-001/{a}_ndvi.json": 2,
        f"p/sc/output/sc-r0-001/{b}_ndvi.tif": 5,  # no item: not done
        "p/sc/output/sc-r0-001/_reports/algo-1.json": 1,
        f"p/sc/output/other-job/{b}_ndvi.json": 1,  # not a job of the plan
    }
    out = scan_outputs(plan, objects)
    assert list(out.scenes) == [a]
    assert out.scenes[a].tif_uri == f"s3://{BUCKET}/p/sc/output/sc-r0-001/{a}_ndvi.tif"
    assert out.scenes[a].size == 22


# ------------------------------------------------------------------------------------------- plan.json


def _plan_with_round() -> dict:
    plan, _, _ = make_plan(_items(), run_id="pj", created="t", s3_prefix=f"s3://{BUCKET}/p", jobs=2,
                           instances_per_job=1)  # fmt: skip
    objects = {}
    for job in plan.jobs:
        for s in job.scenes:
            objects[f"p/pj/output/{job.name}/{s.item_id}_ndvi.tif"] = 100
            objects[f"p/pj/output/{job.name}/{s.item_id}_ndvi.json"] = 10
    new_plan, _, _ = plan_composites(plan, scan_outputs(plan, objects), ["--method", "max"], 2, "t")
    return json.loads(json.dumps(new_plan.to_dict()))


def _edit(data: dict, path: list, value) -> None:  # noqa: ANN001
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


PRODUCT_CASES = [
    (["products", 0, "kind"], "tiles", "plan.products[0].kind: expected one of composite, mosaic"),
    (["products", 0, "source"], "composites", "composites are made from scenes"),
    (["products", 0, "round"], "0", "plan.products[0].round: expected an integer"),
    (["products", 0, "retry_of"], 0, "plan.products[0].retry_of: must name an earlier round"),
    (["products", 0, "args"], "--method max", "plan.products[0].args: expected a list"),
    (["products", 0, "args", 0], "", "not a container argument"),
    (["products", 0, "jobs"], [], "a round has at least one job"),
    (["products", 0, "extra"], 1, "plan.products[0]: unknown key(s) extra"),
    (["products", 0, "jobs", 0, "objects"], "3", "plan.products[0].jobs[0].objects: expected an integer"),
    (["products", 0, "jobs", 0, "volume_gb"], 0, "plan.products[0].jobs[0].volume_gb: must be within"),
    (["products", 0, "jobs", 0, "tiles", 0], "../x", "is not a tile name"),
    (["products", 0, "jobs", 0, "manifest_uri"], "/tmp/m.json", "manifest_uri: expected an s3://"),
    (["products", 0, "jobs", 0, "name"], "pj-r0-000", "plan.products[0].jobs[0].name: 'pj-r0-000' is not pj-c0-000"),
    (["products"], {"a": 1}, "plan.products: expected a list"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "message"), PRODUCT_CASES, ids=[m for _, _, m in PRODUCT_CASES])
def test_the_plan_loader_types_the_product_rounds(path: list, value, message: str) -> None:  # noqa: ANN001
    data = _plan_with_round()
    assert Plan.from_dict(copy.deepcopy(data)).to_dict() == data  # recorded and re-loaded unchanged
    _edit(data, path, value)
    with pytest.raises(PlanError) as info:
        Plan.from_dict(data)
    assert message in str(info.value)


def test_a_round_listed_twice_is_refused() -> None:
    data = _plan_with_round()
    data["products"].append(copy.deepcopy(data["products"][0]))
    with pytest.raises(PlanError, match="composite round 0 is listed twice"):
        Plan.from_dict(data)


# ------------------------------------------------------------------------------------------ moto: submit


@pytest.fixture
def stage1(aws, tmp_path: Path) -> Path:
    """A planned, submitted run whose per-scene outputs are in S3 (small stand-ins: names are what count here)."""
    from launcher.aws import client

    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(i) + "\n" for i in _items()))
    run = tmp_path / "run"
    r = _run("plan", "--items", str(items), "--jobs", "3", "--instances-per-job", "2",
             "--s3-prefix", f"s3://{BUCKET}/ndvi", "--run-id", "dec", "--out", str(run))  # fmt: skip
    assert r.exit_code == 0, r.output
    r = _run("submit", "--plan", str(run), "--image", IMAGE, "--role", ROLE, "--skip-preflight")
    assert r.exit_code == 0, r.output
    s3 = client("s3")
    for job in load_plan(run).jobs:
        for s in job.scenes:
            for suffix in ("_ndvi.tif", "_ndvi.json"):
                s3.put_object(
                    Bucket=BUCKET, Key=f"ndvi/dec/output/{job.name}/{s.item_id}{suffix}", Body=b"x" * 64
                )
    aws.calls.clear()
    return run


def _manifest(s3, uri: str) -> list[str]:  # noqa: ANN001
    bucket, key = uri[5:].split("/", 1)
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return [manifest[0]["prefix"] + k for k in manifest[1:]]


def test_composite_submits_one_instance_jobs_with_every_date_of_a_tile_in_one_manifest(
    aws, stage1: Path
) -> None:
    from launcher.aws import client

    args = ["composite", "--plan", str(stage1), "--method", "max", "--period", "2023-12-01/2023-12-07",
            "--jobs", "2", "--skip-preflight"]  # fmt: skip
    r = _run(*args, "--dry-run")
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout[r.stdout.index("[") :])
    assert [q["ProcessingJobName"] for q in shown] == ["dec-c0-000", "dec-c0-001"]
    assert aws.sent("sagemaker", "CreateProcessingJob") == [] and aws.sent("s3", "PutObject") == []
    assert "products" not in json.loads((stage1 / "plan.json").read_text())  # a dry run records nothing

    r = _run(*args)  # image and role: the plan's submission (stage 1)
    assert r.exit_code == 0, r.output
    creates = [c.body for c in aws.sent("sagemaker", "CreateProcessingJob")]
    assert [c["ProcessingJobName"] for c in creates] == ["dec-c0-000", "dec-c0-001"]
    s3 = client("s3")
    seen: dict[str, str] = {}
    for c in creates:
        assert c["AppSpecification"] == {
            "ImageUri": IMAGE,
            "ContainerArguments": ["composite", "--input", "/opt/ml/processing/input", "--output",
                                   "/opt/ml/processing/output", "--method", "max", "--period", "2023-12-01/2023-12-07"],
        }  # fmt: skip
        assert c["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 1
        assert c["ProcessingResources"]["ClusterConfig"]["VolumeSizeInGB"] == 30
        (inp,) = c["ProcessingInputs"]
        assert inp["S3Input"]["S3DataType"] == "ManifestFile"
        assert inp["S3Input"]["S3DataDistributionType"] == "FullyReplicated"
        assert inp["S3Input"]["LocalPath"] == "/opt/ml/processing/input"
        (out,) = c["ProcessingOutputConfig"]["Outputs"]
        assert out["S3Output"] == {
            "S3Uri": f"s3://{BUCKET}/ndvi/dec/output/{c['ProcessingJobName']}/",
            "LocalPath": "/opt/ml/processing/output",
            "S3UploadMode": "Continuous",
        }
        assert {"Key": "earthmon:stage", "Value": "composite"} in c["Tags"]
        uris = _manifest(s3, inp["S3Input"]["S3Uri"])
        for uri in uris:
            assert (
                seen.setdefault(_tile(uri), c["ProcessingJobName"]) == c["ProcessingJobName"]
            )  # tile in one job
        tiles = {_tile(u) for u in uris}
        want = {
            f"S2B_{t}_{d}_0_L2A{suf}" for t in tiles for d in DATES[t] for suf in ("_ndvi.tif", "_ndvi.json")
        }
        assert {u.rsplit("/", 1)[-1] for u in uris} == want  # every date of each tile, both files
    assert sorted(seen) == sorted(DATES)

    plan = load_plan(stage1)  # the round is recorded and re-loads through the typed loader
    (round_,) = plan.products
    assert (round_.kind, round_.round, round_.source, round_.args) == (
        "composite", 0, "scenes", ("--method", "max", "--period", "2023-12-01/2023-12-07"),
    )  # fmt: skip
    assert [list(j.tiles) for j in round_.jobs] == [["31UFU", "32UMC"], ["31UGU", "32ULC"]]
    assert (stage1 / "manifests" / "c0-000.json").is_file()


def test_stage_2_refuses_missing_scenes_unless_partial(aws, stage1: Path) -> None:
    from launcher.aws import client

    gone = "ndvi/dec/output/dec-r0-000/"
    s3 = client("s3")
    key = next(
        o["Key"]
        for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=gone)["Contents"]
        if o["Key"].endswith(".json")
    )
    s3.delete_object(Bucket=BUCKET, Key=key)
    r = _run("composite", "--plan", str(stage1), "--method", "median", "--dry-run")
    assert r.exit_code == 1 and "1 of 7 scene(s) have no output yet" in r.output and "--partial" in r.output
    r = _run("composite", "--plan", str(stage1), "--method", "median", "--dry-run", "--partial")
    assert r.exit_code == 0, r.output
    r = _run("mosaic", "--plan", str(stage1), "--dry-run")
    assert r.exit_code == 1 and "have no output yet" in r.output


def test_status_watch_resume_cover_composites_and_mosaic(aws, stage1: Path) -> None:
    from launcher.aws import client

    s3 = client("s3")
    r = _run("composite", "--plan", str(stage1), "--method", "mean", "--jobs", "2", "--skip-preflight")
    assert r.exit_code == 0, r.output
    # SDK local mode runs NDVI jobs only: a stage-2 job named there is refused in one line, not silently skipped
    r = _run("local", "--plan", str(stage1), "--sdk-local", "--job", "dec-c0-000", "--no-docker")
    assert r.exit_code == 2 and "--sdk-local runs NDVI jobs only" in r.output, r.output
    assert "launcher composite --local" in r.output and "Traceback" not in r.output
    # c0-000 wrote one of its two tiles, c0-001 both
    written = {"dec-c0-000": ["31UFU"], "dec-c0-001": ["31UGU", "32ULC"]}
    for job, tiles in written.items():
        for t in tiles:
            for ext in ("tif", "json"):
                s3.put_object(
                    Bucket=BUCKET,
                    Key=f"ndvi/dec/output/{job}/{t}_20231201_20231207_ndvi-mean.{ext}",
                    Body=b"c",
                )
    status = json.loads(_run("status", "--plan", str(stage1), "--json").stdout)
    assert status["done"] == status["scenes"] == 7
    assert status["products"]["missing"] == 1
    jobs = {j["name"]: (j["status"], j["done"], j["tiles"]) for j in status["products"]["jobs"]}
    assert jobs == {
        "dec-c0-000": ("Completed", 1, 2),
        "dec-c0-001": ("Completed", 2, 2),
    }  # moto: done at once
    r = _run("watch", "--plan", str(stage1), "--interval", "0.1")
    assert r.exit_code == 1 and "stage 2: 1 product(s) not written" in r.output, r.output

    aws.calls.clear()
    r = _run("resume", "--plan", str(stage1), "--skip-preflight")
    assert r.exit_code == 0, r.output
    assert "composite round 1 (retry of 0): 1 tile(s) in 1 job(s)" in r.output
    (create,) = [c.body for c in aws.sent("sagemaker", "CreateProcessingJob")]
    assert create["ProcessingJobName"] == "dec-c1-000"
    assert create["AppSpecification"]["ContainerArguments"][-2:] == ["--method", "mean"]  # the same options
    assert {_tile(u) for u in _manifest(s3, create["ProcessingInputs"][0]["S3Input"]["S3Uri"])} == {"32UMC"}
    plan = load_plan(stage1)
    assert [(r.kind, r.round, r.retry_of) for r in plan.products] == [
        ("composite", 0, None),
        ("composite", 1, 0),
    ]

    for ext in ("tif", "json"):
        s3.put_object(
            Bucket=BUCKET,
            Key=f"ndvi/dec/output/dec-c1-000/32UMC_20231201_20231201_ndvi-mean.{ext}",
            Body=b"c",
        )
    assert _run("status", "--plan", str(stage1), "--json").stdout.count('"missing": 0') == 1
    r = _run("resume", "--plan", str(stage1))
    assert "nothing to resume" in r.output, r.output

    # the mosaic over the composites (auto), with the retry's tile taken from its round
    aws.calls.clear()
    r = _run("mosaic", "--plan", str(stage1), "--resolution", "0.05", "--skip-preflight")
    assert r.exit_code == 0, r.output
    (create,) = [c.body for c in aws.sent("sagemaker", "CreateProcessingJob")]
    assert create["ProcessingJobName"] == "dec-m0-000"
    # the COGs are read in place (overviews only): the manifest lists the items, the worker gets their root
    assert create["AppSpecification"]["ContainerArguments"] == [
        "mosaic", "--input", "/opt/ml/processing/input", "--output", "/opt/ml/processing/output", "--resolution", "0.05",
        "--assets-root", f"s3://{BUCKET}/ndvi/dec/output/", "--inputs-href", "../",
    ]  # fmt: skip
    # collection.json and index.html link the inputs where they are: beside the mosaic's output prefix
    assert create["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] == (
        f"s3://{BUCKET}/ndvi/dec/output/dec-m0-000/"
    )
    assert create["ProcessingInputs"][0]["InputName"] == "composites"
    assert create["ProcessingInputs"][0]["S3Input"]["S3DataType"] == "ManifestFile"
    assert create["ProcessingResources"]["ClusterConfig"]["VolumeSizeInGB"] == 30  # not sized by the COGs
    manifest_uri = create["ProcessingInputs"][0]["S3Input"]["S3Uri"]
    bucket, key = manifest_uri[5:].split("/", 1)
    raw = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert raw[0] == {
        "prefix": f"s3://{BUCKET}/ndvi/dec/output/"
    }  # = --assets-root: the input folder mirrors it
    uris = _manifest(s3, manifest_uri)
    assert uris and all(u.endswith(".json") for u in uris), uris  # no .tif: nothing downloads a COG
    assert sorted(u.split("/output/", 1)[1] for u in uris) == [
        "dec-c0-000/31UFU_20231201_20231207_ndvi-mean.json",
        "dec-c0-001/31UGU_20231201_20231207_ndvi-mean.json",
        "dec-c0-001/32ULC_20231201_20231207_ndvi-mean.json",
        "dec-c1-000/32UMC_20231201_20231201_ndvi-mean.json",
    ]
    status = json.loads(_run("status", "--plan", str(stage1), "--json").stdout)
    assert status["products"]["missing"] == 1  # no mosaic file yet (moto's job wrote nothing)
    aws.calls.clear()
    r = _run("resume", "--plan", str(stage1), "--skip-preflight")
    assert r.exit_code == 0 and "mosaic round 1 (retry of 0)" in r.output, r.output
    (retry,) = [c.body for c in aws.sent("sagemaker", "CreateProcessingJob")]
    assert retry["ProcessingJobName"] == "dec-m1-000"
    args = retry["AppSpecification"]["ContainerArguments"]
    assert args.count("--assets-root") == 1 and args.count("--inputs-href") == 1
    assert args[-4:] == ["--assets-root", f"s3://{BUCKET}/ndvi/dec/output/", "--inputs-href", "../"]


def test_resume_submits_a_stage_2_round_never_submitted(aws, stage1: Path) -> None:
    """A round recorded but never sent (e.g. the submission was interrupted): resume sends its jobs, same names."""
    from launcher.aws import client
    from launcher.ndvi import store
    from launcher.ndvi.status import scan

    r = _run("composite", "--plan", str(stage1), "--method", "max", "--local", "--no-docker", "--dry-run")
    assert r.exit_code == 0, r.output
    assert load_plan(stage1).products == ()  # a dry run, local or not, records nothing
    plan = load_plan(stage1)
    new_plan, _, manifests = plan_composites(plan, scan(client("s3"), plan), ["--method", "max"], 3, "t")
    store.upload_manifests(client("s3"), new_plan, manifests)
    store.save_plan(new_plan, stage1 / "plan.json")
    aws.calls.clear()
    r = _run("resume", "--plan", str(stage1), "--skip-preflight")
    assert r.exit_code == 0 and "composite round 0: 3 job(s) never submitted" in r.output, r.output
    names = [c.body["ProcessingJobName"] for c in aws.sent("sagemaker", "CreateProcessingJob")]
    assert names == ["dec-c0-000", "dec-c0-001", "dec-c0-002"]
    assert len(load_plan(stage1).products) == 1  # no new round


# --------------------------------------------------------------------------------- end to end, real worker


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Two tiles x two dates of small generated Sentinel-2 scenes (real COGs; hrefs absolute)."""
    try:
        from ndvi_worker import synthetic
    except ImportError as exc:
        require(False, f"the NDVI worker is not importable ({exc})")
        raise
    root = tmp_path_factory.mktemp("stage2-scenes")
    items = []
    for k, (tile, origin) in enumerate([("31UFU", (600000.0, 5800020.0)), ("32ULC", (300000.0, 5800020.0))]):
        for d, date in enumerate(["20231202", "20231205"]):
            item_id = f"S2B_{tile}_{date}_0_L2A"
            scene = synthetic.write_scene(
                root / item_id, item_id=item_id, size=256, seed=2 * k + d, origin=origin,
                epsg=32631 if tile.startswith("31") else 32632,
            )  # fmt: skip
            item = json.loads(Path(scene.item_path).read_text())
            for asset in item["assets"].values():
                asset["href"] = str((Path(scene.item_path).parent / asset["href"]).resolve())
            items.append(item)
    return items


def test_local_no_docker_runs_stage_1_composites_and_the_mosaic(aws, scenes, tmp_path: Path) -> None:
    from launcher.aws import client

    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(i) + "\n" for i in scenes))
    run = tmp_path / "run"
    r = _run("plan", "--items", str(items), "--jobs", "2", "--instances-per-job", "2",
             "--s3-prefix", f"s3://{BUCKET}/e2e", "--run-id", "e2e", "--out", str(run))  # fmt: skip
    assert r.exit_code == 0, r.output
    env = {"GDAL_NUM_THREADS": "1"}
    r = _run("local", "--plan", str(run), "--no-docker", "--instances", "2", env=env)
    assert r.exit_code == 0, r.output

    r = _run("composite", "--plan", str(run), "--method", "max", "--jobs", "2", "--local", "--no-docker",
             "--env", "GDAL_NUM_THREADS=1")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "2/2 job(s) completed" in r.output
    s3 = client("s3")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="e2e/e2e/output/")["Contents"]}
    plan = load_plan(run)
    (round_,) = plan.products
    for job in round_.jobs:
        (tile,) = job.tiles
        stem = f"e2e/e2e/output/{job.name}/{tile}_20231202_20231205_ndvi-max"
        assert {f"{stem}.tif", f"{stem}.json", f"{stem}.png"} <= keys, sorted(keys)
        item = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{stem}.json")["Body"].read())
        assert sorted(item["properties"]["earthmon:source_items"]) == [
            f"S2B_{tile}_20231202_0_L2A_ndvi",
            f"S2B_{tile}_20231205_0_L2A_ndvi",
        ]  # fmt: skip  (the worker's output items: every date of the tile in one composite)
        tree = run / "local" / job.name / "algo-1"
        request = json.loads((tree / "config" / "processingjobconfig.json").read_text())
        assert request["AppSpecification"]["ContainerArguments"][:2] == ["composite", "--input"]

    r = _run("mosaic", "--plan", str(run), "--resolution", "0.01", "--local", "--no-docker")
    assert r.exit_code == 0, r.output
    keys = {
        o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="e2e/e2e/output/e2e-m0-000/")["Contents"]
    }
    for name in ("mosaic_ndvi.tif", "mosaic_ndvi.png", "collection.json", "index.html"):
        assert f"e2e/e2e/output/e2e-m0-000/{name}" in keys, sorted(keys)
    collection = json.loads(
        s3.get_object(Bucket=BUCKET, Key="e2e/e2e/output/e2e-m0-000/collection.json")["Body"].read()
    )
    assert sorted(
        link["href"].rsplit("/", 1)[-1] for link in collection["links"] if link["rel"] == "item"
    ) == [
        "31UFU_20231202_20231205_ndvi-max.json",
        "32ULC_20231202_20231205_ndvi-max.json",
    ]  # fmt: skip  (the composites, not the scenes)
    html = s3.get_object(Bucket=BUCKET, Key="e2e/e2e/output/e2e-m0-000/index.html")["Body"].read().decode()
    assert "<svg" in html.lower() or "svg" in html.lower()

    status = json.loads(_run("status", "--plan", str(run), "--json").stdout)
    assert status["products"]["missing"] == 0
    assert {j["status"] for j in status["products"]["jobs"]} == {"Completed (local)"}
    r = _run("resume", "--plan", str(run), "--no-submit")
    assert "nothing to resume" in r.output, r.output


@pytest.mark.docker
def test_stage_2_local_with_the_processing_image(aws, scenes, tmp_path: Path) -> None:
    """`launcher composite|mosaic --local` with Docker: the image's ENTRYPOINT (ndvi-worker) gets the stage-2
    ContainerArguments (`composite --input /opt/ml/processing/input ...`), as on SageMaker. Stage 1 runs as processes."""
    import os
    import subprocess

    from launcher.aws import client
    from launcher.ndvi.local_run import docker_problem

    image = os.environ.get("EARTHMON_PROCESSING_IMAGE", "earthmon-processing:dev")
    problem = docker_problem()
    require(problem is None, f"no Docker engine ({problem})")
    found = subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False)
    require(found.returncode == 0, f"image {image} is not built: make build-processing")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(i) + "\n" for i in scenes))
    run = tmp_path / "run"
    r = _run("plan", "--items", str(items), "--jobs", "1", "--instances-per-job", "1",
             "--s3-prefix", f"s3://{BUCKET}/dk", "--run-id", "dk", "--out", str(run))  # fmt: skip
    assert r.exit_code == 0, r.output
    assert _run("local", "--plan", str(run), "--no-docker", "--instances", "1").exit_code == 0
    r = _run(
        "composite", "--plan", str(run), "--method", "median", "--jobs", "1", "--local", "--image", image
    )
    assert r.exit_code == 0, r.output
    r = _run("mosaic", "--plan", str(run), "--local", "--image", image)
    assert r.exit_code == 0, r.output
    keys = {o["Key"] for o in client("s3").list_objects_v2(Bucket=BUCKET, Prefix="dk/dk/output/")["Contents"]}
    assert {
        "dk/dk/output/dk-c0-000/31UFU_20231202_20231205_ndvi-median.tif",
        "dk/dk/output/dk-c0-000/32ULC_20231202_20231205_ndvi-median.json",
        "dk/dk/output/dk-m0-000/mosaic_ndvi.tif",
        "dk/dk/output/dk-m0-000/index.html",
    } <= keys, sorted(keys)
    status = json.loads(_run("status", "--plan", str(run), "--json").stdout)
    assert status["products"]["missing"] == 0
