"""Reads over HTTP (nginx, Range requests) and from S3 (a moto server), as in the cloud."""

from __future__ import annotations

import json
import shutil

import boto3
import numpy as np
import rasterio

from earthmon_testing.worker import SAMPLE


def sample_item(hrefs: dict[str, str]) -> dict:
    item = json.loads((SAMPLE / f"{SAMPLE.name}.json").read_text())
    for key, href in hrefs.items():
        item["assets"][key]["href"] = href
    return item


def local_reference(run_worker, sample_scene, tmp_path) -> np.ndarray:
    out = tmp_path / "ref"
    run_worker("--input", str(sample_scene.parent.parent), "--output", str(out), check_code=0)
    with rasterio.open(out / f"{SAMPLE.name}_ndvi.tif") as ds:
        return ds.read(1)


def test_http_range_reads_from_nginx(nginx, run_worker, sample_scene, tmp_path):
    root, base, access_log = nginx
    shutil.copytree(SAMPLE, root / "http-sample", dirs_exist_ok=True)
    inp = tmp_path / "in"
    inp.mkdir()
    hrefs = {
        k: f"{base}/http-sample/{n}" for k, n in (("red", "B04.tif"), ("nir", "B08.tif"), ("scl", "SCL.tif"))
    }
    (inp / "item.json").write_text(json.dumps(sample_item(hrefs)))
    out = tmp_path / "out"
    run_worker("--input", str(inp), "--output", str(out), check_code=0)
    with rasterio.open(out / f"{SAMPLE.name}_ndvi.tif") as ds:
        remote = ds.read(1)
    assert np.array_equal(remote, local_reference(run_worker, sample_scene, tmp_path))
    lines = [line.split() for line in access_log.read_text().splitlines() if "/http-sample/" in line]
    assert lines and all(parts[0] == "206" for parts in lines if parts[1] == "GET"), (
        "only Range GETs expected"
    )
    assert any(len(parts) > 3 and parts[3].startswith("bytes=") for parts in lines)
    report = json.loads(next((out / "_reports").glob("*.json")).read_text())
    size = sum((SAMPLE / n).stat().st_size for n in ("B04.tif", "B08.tif", "SCL.tif"))
    assert 0 < report["scenes"][0]["bytes_read"] <= size


def test_http_404_and_5xx_are_reported_per_scene(nginx, run_worker, tmp_path):
    root, base, access_log = nginx
    shutil.copytree(SAMPLE, root / "http-ok", dirs_exist_ok=True)
    inp = tmp_path / "in"
    inp.mkdir()
    names = (("red", "B04.tif"), ("nir", "B08.tif"), ("scl", "SCL.tif"))
    ok = sample_item({k: f"{base}/http-ok/{n}" for k, n in names})
    missing = sample_item({k: f"{base}/nowhere/{n}" for k, n in names})
    missing["id"] = "S2A_29RKH_20200219_1_L2A"
    flaky = sample_item({k: f"{base}/flaky/{n}" for k, n in names})
    flaky["id"] = "S2A_29RKH_20200219_2_L2A"
    for name, doc in (("ok.json", ok), ("missing.json", missing), ("flaky.json", flaky)):
        (inp / name).write_text(json.dumps(doc))
    out = tmp_path / "out"
    proc = run_worker(
        "--input", str(inp), "--output", str(out), "--retries", "2",
        env={"GDAL_HTTP_MAX_RETRY": "1", "GDAL_HTTP_RETRY_DELAY": "0.1"},
    )  # fmt: skip
    assert proc.returncode == 1
    report = json.loads(next((out / "_reports").glob("*.json")).read_text())
    by_id = {s["item_id"]: s for s in report["scenes"]}
    assert by_id[SAMPLE.name]["status"] == "done"
    assert "404" in by_id["S2A_29RKH_20200219_1_L2A"]["error"]
    assert "503" in by_id["S2A_29RKH_20200219_2_L2A"]["error"]
    flaky_requests = [line for line in access_log.read_text().splitlines() if "/flaky/B04.tif" in line]
    assert len(flaky_requests) >= 2, "a 503 must be retried"
    assert "retry" in proc.stdout


def test_s3_reads_from_a_moto_server(moto_s3, run_worker, sample_scene, tmp_path):
    creds = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-west-2",
    }
    s3 = boto3.client("s3", endpoint_url=moto_s3, region_name="us-west-2", aws_access_key_id="testing",
                      aws_secret_access_key="testing")  # fmt: skip
    s3.create_bucket(Bucket="sentinel-cogs", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    prefix = "sentinel-s2-l2a-cogs/29/R/KH/2020/2/S2A_29RKH_20200219_0_L2A"
    for name in ("B04.tif", "B08.tif", "SCL.tif"):
        # public objects, like the real sentinel-cogs bucket: anonymous GETs are allowed
        s3.upload_file(
            str(SAMPLE / name), "sentinel-cogs", f"{prefix}/{name}", ExtraArgs={"ACL": "public-read"}
        )
    inp = tmp_path / "in"
    inp.mkdir()
    hrefs = {
        k: f"s3://sentinel-cogs/{prefix}/{n}"
        for k, n in (("red", "B04.tif"), ("nir", "B08.tif"), ("scl", "SCL.tif"))
    }
    (inp / "item.json").write_text(json.dumps(sample_item(hrefs)))
    reference = local_reference(run_worker, sample_scene, tmp_path)
    # signed requests (credentials present)
    out = tmp_path / "signed"
    run_worker(
        "--input", str(inp), "--output", str(out), env={**creds, "AWS_ENDPOINT_URL": moto_s3}, check_code=0
    )
    with rasterio.open(out / f"{SAMPLE.name}_ndvi.tif") as ds:
        assert np.array_equal(ds.read(1), reference)
    # anonymous requests (no credentials anywhere: the public-bucket path)
    out = tmp_path / "anonymous"
    env = {"AWS_ENDPOINT_URL": moto_s3, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")}  # fmt: skip
    proc = run_worker("--input", str(inp), "--output", str(out), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # a missing key is a per-scene failure with the reason
    (inp / "item.json").write_text(json.dumps(sample_item({"red": f"s3://sentinel-cogs/{prefix}/nope.tif"})))
    out = tmp_path / "missing"
    proc = run_worker("--input", str(inp), "--output", str(out), env={**creds, "AWS_ENDPOINT_URL": moto_s3})
    assert proc.returncode == 1
    report = json.loads(next((out / "_reports").glob("*.json")).read_text())
    assert "nope.tif" in report["scenes"][0]["error"]
