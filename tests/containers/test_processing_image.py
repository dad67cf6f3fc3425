"""The processing image as SageMaker Processing runs it (`docker run IMAGE [ContainerArguments]`, /opt/ml
bind mounts) and as `launcher local` runs it (two simulated instances sharing a ManifestFile job)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from earthmon_testing.containers import docker, inspect

pytestmark = pytest.mark.docker

GOOD = ["S2B_31UFU_20231204_0_L2A", "S2A_32ULC_20231205_0_L2A"]
BAD = "S2B_31UGU_20231204_0_L2A"


def _scene(root: Path, item_id: str, seed: int) -> Path:
    from ndvi_worker import synthetic

    return Path(synthetic.write_scene(root / item_id, item_id=item_id, size=256, seed=seed).item_path)


def _tree(base: Path, host: str, hosts: list[str]) -> Path:
    for sub in ("processing/input", "processing/output", "config", "output"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "config" / "resourceconfig.json").write_text(json.dumps({"current_host": host, "hosts": hosts}))
    return base


def _run(image: str, tree: Path, *args: str, timeout: float = 600):
    """`docker run IMAGE ARGS` with the SageMaker mounts: exactly what a processing job does."""
    mounts = []
    for sub in ("processing/input", "processing/output", "config", "output"):
        mounts += ["-v", f"{tree / sub}:/opt/ml/{sub}"]
    return docker("run", "--rm", "--network", "host", *mounts, image, *args, check=False, timeout=timeout)


def test_image_metadata_and_contents(processing_image: str) -> None:
    meta = inspect(processing_image)
    cfg = meta["Config"]
    assert cfg["Entrypoint"] == ["ndvi-worker"]  # exec form: ContainerArguments are appended to it
    assert not cfg.get("Cmd")
    labels = cfg["Labels"]
    for key in ("source", "revision", "version", "title", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.revision"] != "unknown"
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert not [k for k in env if k.startswith("AWS_") or "PROXY" in k.upper() or k.startswith("PIP_")]
    # Python 3.11 on Debian bookworm, the venv without pip, no compiler, no wheelhouse left behind
    probe = docker(
        "run", "--rm", "--entrypoint", "sh", processing_image, "-c",
        ". /etc/os-release; echo $VERSION_CODENAME; python3 --version; "
        "ls /opt/earthmon/bin; for c in gcc cc pip pip3; do command -v $c || true; done; "
        "ls -d /wheelhouse /src 2>/dev/null || true",
    ).stdout.split()  # fmt: skip
    assert probe[0] == "bookworm" and probe[1:3] == ["Python", probe[2]] and probe[2].startswith("3.11.")
    assert "ndvi-worker" in probe and "launcher" not in probe and "segmentation-trainer" not in probe
    assert not [
        p for p in probe if p.endswith(("/gcc", "/cc", "/pip", "/pip3")) or p in ("/wheelhouse", "/src")
    ]
    # the worker's own deps, not the trainer's or the launcher's (separate lock files)
    check = docker(
        "run", "--rm", "--entrypoint", "python", processing_image, "-c",
        "import importlib.util as u, rasterio, numpy; "
        "print(rasterio.__version__, numpy.__version__, u.find_spec('mxnet') is None, "
        "u.find_spec('pystac_client') is None, u.find_spec('segmentation_trainer') is None)",
    ).stdout.split()  # fmt: skip
    lock = dict(
        line.split("==") for line in (Path(__file__).parents[2] / "requirements/worker.txt").read_text().split()
        if "==" in line
    )  # fmt: skip
    assert check == [lock["rasterio"], lock["numpy"], "True", "True", "True"]


def test_help_through_the_entrypoint(processing_image: str) -> None:
    out = docker("run", "--rm", processing_image, "--help").stdout  # arguments reach ndvi-worker
    assert "--mask-classes" in out and "--boa-offset" in out


def test_sagemaker_contract_run_with_a_bad_scene(processing_image: str, tmp_path: Path) -> None:
    tree = _tree(tmp_path / "algo-1", "algo-1", ["algo-1"])
    inp = tree / "processing/input"
    items = {item_id: _scene(inp / "scenes", item_id, seed) for seed, item_id in enumerate([*GOOD, BAD])}
    # the bad scene: its red band is truncated (a COG cut short in transfer)
    red = items[BAD].parent / "B04.tif"
    red.write_bytes(red.read_bytes()[:4096])
    (inp / "notes.json").write_text('{"not": "an item"}')  # other JSON is skipped with a log line

    proc = _run(processing_image, tree, "--workers", "1", "--on-error", "continue")
    logs = proc.stdout + proc.stderr
    assert proc.returncode != 0, logs  # a failed scene fails the instance, after the others are written
    out = tree / "processing/output"
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    for item_id in GOOD:
        tif = out / f"{item_id}_ndvi.tif"
        valid, errors, _ = cog_validate(str(tif))
        assert valid, errors
        with rasterio.open(tif) as dst, rasterio.open(items[item_id].parent / "B04.tif") as src:
            assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)
            ndvi = dst.read(1, masked=True).astype("float64") * (dst.scales[0] or 1.0)
            assert ndvi.count() > 0.2 * ndvi.size
            assert float(ndvi.min()) >= -1.0 and float(ndvi.max()) <= 1.0
        stac = json.loads((out / f"{item_id}_ndvi.json").read_text())
        assert stac["id"].startswith(item_id)
    assert not list(out.glob(f"{BAD}_ndvi.*"))
    assert not [p for p in out.rglob("*") if "staging" in p.name or p.name.endswith((".tmp", ".part"))]
    report = json.loads((out / "_reports" / "algo-1.json").read_text())
    status = {s["item_id"]: s for s in report["scenes"]}
    assert {status[i]["status"] for i in GOOD} == {"done"}
    assert status[BAD]["status"] == "failed" and status[BAD]["error"]
    message = (tree / "output" / "message").read_text()
    assert BAD in message and len(message.encode()) <= 1024 + 64

    # a rerun is idempotent: the good scenes are skipped, the bad one fails again, nothing is rewritten
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*_ndvi.tif")}
    proc = _run(processing_image, tree, "--workers", "1")
    assert proc.returncode != 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_ndvi.tif")} == before


def test_an_empty_shard_is_success(processing_image: str, tmp_path: Path) -> None:
    tree = _tree(tmp_path / "algo-3", "algo-3", ["algo-1", "algo-2", "algo-3"])
    proc = _run(processing_image, tree)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tree / "processing/output/_reports/algo-3.json").read_text())
    assert report["summary"]["total"] == 0


def test_launcher_local_two_instances_with_docker(processing_image: str, aws: str, tmp_path: Path) -> None:
    """`launcher local --instances 2` runs the image once per simulated instance (ManifestFile split like
    ShardedByS3Key, own /opt/ml tree and resourceconfig.json each), outputs to the plan's S3 prefix."""
    from click.testing import CliRunner

    from launcher.aws import client
    from launcher.cli import cli
    from launcher.ndvi.store import load_plan

    scenes_root = tmp_path / "scenes"
    ids = [*GOOD, "S2A_32UMC_20231205_0_L2A", BAD]
    items = []
    for seed, item_id in enumerate(ids):
        path = _scene(scenes_root, item_id, seed)
        item = json.loads(path.read_text())
        for asset in item["assets"].values():  # absolute hrefs: the items travel through S3
            asset["href"] = str((path.parent / asset["href"]).resolve())
        items.append(item)
    items[-1]["assets"]["red"]["href"] = str(scenes_root / "missing" / "B04.tif")  # fails alone
    items_path = tmp_path / "items.jsonl"
    items_path.write_text("".join(json.dumps(i) + "\n" for i in items))
    run = tmp_path / "run"

    def launcher(*args: str):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    r = launcher("plan", "--items", str(items_path), "--jobs", "1", "--instances-per-job", "2",
                 "--s3-prefix", "s3://earthmon-test/ndvi", "--run-id", "ctr", "--out", str(run))  # fmt: skip
    assert r.exit_code == 0, r.output
    r = launcher(
        "local", "--plan", str(run), "--instances", "2", "--image", processing_image,
        "--volume", f"{scenes_root}:{scenes_root}:ro", "--env", "GDAL_NUM_THREADS=1",
    )  # fmt: skip
    assert r.exit_code == 1, r.output  # the job holding the bad scene fails, as on SageMaker
    plan = load_plan(run)
    job = plan.jobs[0]
    s3 = client("s3")
    listing = s3.list_objects_v2(Bucket="earthmon-test", Prefix=f"ndvi/ctr/output/{job.name}/")
    keys = {o["Key"].rsplit(f"{job.name}/", 1)[-1] for o in listing.get("Contents", [])}
    for item_id in ids[:-1]:
        assert {f"{item_id}_ndvi.tif", f"{item_id}_ndvi.json"} <= keys
    assert not [k for k in keys if k.startswith(BAD) and k.endswith(("_ndvi.tif", "_ndvi.json"))]
    assert {"_reports/algo-1.json", "_reports/algo-2.json"} <= keys
    seen, failed = [], []
    for host in ("algo-1", "algo-2"):
        body = s3.get_object(Bucket="earthmon-test", Key=f"ndvi/ctr/output/{job.name}/_reports/{host}.json")[
            "Body"
        ]
        report = json.loads(body.read())
        assert report["summary"]["total"] == 2  # 4 scenes over 2 instances
        seen += [s["item_id"] for s in report["scenes"]]
        failed += [s["item_id"] for s in report["scenes"] if s["status"] == "failed"]
        tree = run / "local" / job.name / host
        assert json.loads((tree / "config" / "resourceconfig.json").read_text())["current_host"] == host
    assert sorted(seen) == sorted(ids) and failed == [BAD]
    tif = s3.get_object(Bucket="earthmon-test", Key=f"ndvi/ctr/output/{job.name}/{GOOD[0]}_ndvi.tif")[
        "Body"
    ].read()
    local = tmp_path / "from-s3.tif"
    local.write_bytes(tif)
    from rio_cogeo.cogeo import cog_validate

    assert cog_validate(str(local))[0]


def test_runs_as_a_non_root_user(processing_image: str, tmp_path: Path) -> None:
    """`docker run --user 1000:1000` with writable mounted folders works (the image stays root by default, as
    SageMaker expects): outputs, report and ExitMessage written, nothing left behind, files owned by 1000."""
    meta = inspect(processing_image)
    assert meta["Config"].get("User") in (None, "", "root", "0")  # root by default
    tree = _tree(tmp_path / "algo-1", "algo-1", ["algo-1"])
    (tree / "config" / "processingjobconfig.json").write_text("{}")
    _scene(tree / "processing/input", GOOD[0], 0)
    for sub in ("processing/output", "output"):
        (tree / sub).chmod(0o777)
    mounts = []
    for sub in ("processing/input", "processing/output", "config", "output"):
        mounts += ["-v", f"{tree / sub}:/opt/ml/{sub}"]
    proc = docker(
        "run", "--rm", "--user", "1000:1000", "--network", "none", *mounts, processing_image, "--workers", "1",
        check=False, timeout=600,
    )  # fmt: skip
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs
    assert "Traceback" not in logs
    out = tree / "processing/output"
    tif = out / f"{GOOD[0]}_ndvi.tif"
    from rio_cogeo.cogeo import cog_validate

    assert cog_validate(str(tif))[0]
    assert tif.stat().st_uid == 1000
    report = json.loads((out / "_reports" / "algo-1.json").read_text())
    assert report["summary"]["done"] == 1
    assert (tree / "output" / "message").read_text().startswith("algo-1: 1 done")
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
    # an unwritable output folder is one clear line, exit 2, no traceback
    (out).chmod(0o755)
    proc = docker(
        "run", "--rm", "--user", "1000:1000", "--network", "none", *mounts, processing_image, "--overwrite",
        check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "writable --output" in proc.stderr
