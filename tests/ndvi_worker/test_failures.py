"""Bad input gets a clear error and loses nothing: one bad scene is reported, the rest completes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rio_cogeo.cogeo import cog_validate

from ndvi_worker.io import is_transient, with_retries


def good_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def clone_scene(src: Path, dst_root: Path, new_id: str) -> Path:
    dst = dst_root / new_id
    shutil.copytree(src, dst)
    old = next(dst.glob("*.json"))
    item = json.loads(old.read_text())
    item["id"] = new_id
    old.unlink()
    path = dst / f"{new_id}.json"
    path.write_text(json.dumps(item))
    return path


def in_a_job(base: Path) -> None:
    """Make SAGEMAKER_BASE_DIR look like a Processing job's /opt/ml (SageMaker writes processingjobconfig.json)."""
    (base / "config").mkdir(parents=True, exist_ok=True)
    (base / "config" / "processingjobconfig.json").write_text("{}")


def report_of(out: Path) -> dict:
    return json.loads(next((out / "_reports").glob("*.json")).read_text())


def by_id(report: dict) -> dict:
    return {s["item_id"] or s["source"]: s for s in report["scenes"]}


def test_bad_input_matrix(synthetic_input, run_worker, tmp_path):
    first = good_dirs(synthetic_input)[0]
    bad_root = synthetic_input / "bad"
    bad_root.mkdir()
    # malformed JSON
    (bad_root / "broken.json").write_text('{"type": "Feature", "id": "S2B_X"')
    # JSON that is not a STAC item: skipped with a log line, not a failure
    (bad_root / "catalog.json").write_text(json.dumps({"type": "Catalog", "id": "c", "links": []}))
    # missing asset
    p = clone_scene(first, bad_root, "S2B_01AAA_20231204_0_L2A")
    item = json.loads(p.read_text())
    del item["assets"]["nir"]
    p.write_text(json.dumps(item))
    # asset file missing on disk (a 404 locally)
    p = clone_scene(first, bad_root, "S2B_02AAA_20231204_0_L2A")
    (p.parent / "B08.tif").unlink()
    # truncated COG
    p = clone_scene(first, bad_root, "S2B_03AAA_20231204_0_L2A")
    data = (p.parent / "B04.tif").read_bytes()
    (p.parent / "B04.tif").write_bytes(data[: len(data) // 2])
    # CRS mismatch between red and nir
    p = clone_scene(first, bad_root, "S2B_04AAA_20231204_0_L2A")
    with rasterio.open(p.parent / "B08.tif") as ds:
        arr, prof = ds.read(), ds.profile
    prof.update(crs="EPSG:32632", driver="GTiff")
    with rasterio.open(p.parent / "B08.tif", "w", **prof) as ds:
        ds.write(arr)
    # grid mismatch (nir shifted by one pixel)
    p = clone_scene(first, bad_root, "S2B_05AAA_20231204_0_L2A")
    with rasterio.open(p.parent / "B08.tif") as ds:
        arr, prof = ds.read(), ds.profile
    t = prof["transform"]
    prof.update(transform=Affine(t.a, t.b, t.c + 10, t.d, t.e, t.f), driver="GTiff")
    with rasterio.open(p.parent / "B08.tif", "w", **prof) as ds:
        ds.write(arr)
    # hostile item id
    p = clone_scene(first, bad_root, "S2B_06AAA_20231204_0_L2A")
    item = json.loads(p.read_text())
    item["id"] = "../../../etc/evil"
    p.write_text(json.dumps(item))
    # a duplicate of a good item
    dup = bad_root / "dup"
    dup.mkdir()
    shutil.copy(next(first.glob("*.json")), dup / "copy.json")
    item = json.loads((dup / "copy.json").read_text())
    for a in item["assets"].values():
        a["href"] = str((first / a["href"]).resolve())
    (dup / "copy.json").write_text(json.dumps(item))

    out = tmp_path / "out"
    in_a_job(tmp_path / "opt-ml")  # --input/--output inside a Processing job: the ExitMessage is written
    proc = run_worker("--input", str(synthetic_input), "--output", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = report_of(out)
    scenes = by_id(report)
    # every good scene is written and valid
    for folder in good_dirs(synthetic_input):
        if folder.name == "bad":
            continue
        assert scenes[folder.name]["status"] in ("done", "skipped")
        assert cog_validate(str(out / f"{folder.name}_ndvi.tif"))[0]
    errors = {k: v["error"] for k, v in scenes.items() if v["status"] == "failed"}
    assert "malformed JSON" in errors["bad/broken.json"]
    assert "missing asset for nir" in errors["S2B_01AAA_20231204_0_L2A"]
    assert "No such file" in errors["S2B_02AAA_20231204_0_L2A"]
    assert (
        "cannot read" in errors["S2B_03AAA_20231204_0_L2A"]
        or "cannot open" in errors["S2B_03AAA_20231204_0_L2A"]
    )
    assert "CRS mismatch" in errors["S2B_04AAA_20231204_0_L2A"]
    assert "grid mismatch" in errors["S2B_05AAA_20231204_0_L2A"]
    hostile = [v for v in scenes.values() if v["source"].startswith("bad/S2B_06AAA")]
    assert hostile and "unsafe item id" in hostile[0]["error"] and hostile[0]["item_id"] is None
    assert not (tmp_path / "etc").exists() and not any("evil" in p.name for p in out.rglob("*"))
    assert "bad/catalog.json" not in scenes  # not an item: skipped with a log line
    assert "not a STAC item" in proc.stdout
    dups = [v for v in report["scenes"] if v["source"] == "bad/dup/copy.json"]
    assert dups[0]["status"] == "skipped" and "duplicate" in dups[0]["error"]
    assert report["summary"]["failed"] == 7
    # no failed scene left anything in the output folder
    assert not list(out.glob("S2B_0?AAA*")) and not list(out.glob(".*"))
    message = (tmp_path / "opt-ml" / "output" / "message").read_text()
    assert "7 failed" in message and len(message) <= 1024


def test_on_error_fail_stops_early(synthetic_input, run_worker, tmp_path):
    first = good_dirs(synthetic_input)[0]
    (first / "B08.tif").unlink()
    out = tmp_path / "out"
    proc = run_worker("--input", str(synthetic_input), "--output", str(out), "--on-error", "fail",
                      "--scenes-in-flight", "1")  # fmt: skip
    assert proc.returncode == 1
    report = report_of(out)
    assert report["summary"]["failed"] == 3
    assert sum("not attempted" in (s["error"] or "") for s in report["scenes"]) == 2


def test_item_collections_and_json_lines(synthetic_input, run_worker, tmp_path):
    items = []
    for folder in good_dirs(synthetic_input):
        path = next(folder.glob("*.json"))
        item = json.loads(path.read_text())
        for a in item["assets"].values():
            a["href"] = str((folder / a["href"]).resolve())
        items.append(item)
        path.unlink()
    (synthetic_input / "collection.json").write_text(
        json.dumps({"type": "FeatureCollection", "features": items[:2]})
    )
    (synthetic_input / "rest.jsonl").write_text(json.dumps(items[2]) + "\n\nnot json\n")
    out = tmp_path / "out"
    proc = run_worker("--input", str(synthetic_input), "--output", str(out))
    assert proc.returncode == 1  # the garbage line is a failure, reported
    report = report_of(out)
    assert report["summary"] == {"total": 4, "done": 3, "skipped": 0, "failed": 1}
    assert any("line 3" in (s["error"] or "") for s in report["scenes"])


def test_kill_at_any_moment_then_rerun_completes(synthetic_input, tmp_path):
    """SIGKILL the worker at several moments; a rerun completes the shard with every output valid."""
    base = tmp_path / "opt-ml"
    out = base / "processing" / "output"
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base)}
    cmd = [
        sys.executable,
        "-m",
        "ndvi_worker",
        "--input",
        str(synthetic_input),
        "--output",
        str(out),
        "--workers",
        "2",
    ]
    for delay in (1.2, 1.8, 2.6):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # whatever is in the output folder at this moment is complete and valid
        for tif in out.glob("*_ndvi.tif"):
            assert cog_validate(str(tif))[0], tif
        for js in out.glob("*_ndvi.json"):
            json.loads(js.read_text())
    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stdout + final.stderr
    tifs = sorted(out.glob("*_ndvi.tif"))
    assert len(tifs) == 3
    for tif in tifs:
        assert cog_validate(str(tif))[0]
        item = json.loads(tif.with_suffix(".json").read_text())
        assert item["assets"]["ndvi"]["file:size"] == tif.stat().st_size
    assert not list(out.glob(".*"))


def test_sigterm_writes_the_report_and_message(synthetic_input, tmp_path):
    base = tmp_path / "opt-ml"
    out = base / "processing" / "output"
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base)}
    in_a_job(base)
    cmd = [sys.executable, "-m", "ndvi_worker", "--input", str(synthetic_input), "--output", str(out),
           "--scenes-in-flight", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(out.glob("*_ndvi.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143
    report = report_of(out)
    statuses = [s["status"] for s in report["scenes"]]
    assert "done" in statuses and report["summary"]["total"] == 3
    assert (base / "output" / "message").exists()


def test_transient_errors_are_retried_with_backoff():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("HTTP response code: 503")
        return "ok"

    assert with_retries(flaky, "read", attempts=4, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and sleeps == [0.5, 1.0]

    def missing():
        calls.append(1)
        raise OSError("HTTP response code: 404")

    calls.clear()
    with pytest.raises(OSError):
        with_retries(missing, "read", attempts=4, sleep=sleeps.append)
    assert len(calls) == 1  # a 404 is not retried


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ("HTTP response code: 503", True),
        ("HTTP response code: 429", True),
        ("Operation timed out after 30000 milliseconds", True),
        ("HTTP response code: 404", False),
        ("No such file or directory", False),
        ("TIFFReadEncodedTile() failed", False),
    ],
)
def test_is_transient(message, transient):
    assert is_transient(OSError(message)) is transient


def test_usage_errors_exit_2(run_worker, tmp_path):
    proc = run_worker("--input", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "is not a folder" in proc.stderr
    proc = run_worker("--mask-classes", "8,x")
    assert proc.returncode == 2 and "comma-separated integers" in proc.stderr
    proc = run_worker("--compress", "LERC_ZSTD", "--input", str(tmp_path))
    assert proc.returncode == 2 and "float32" in proc.stderr
    proc = run_worker("--help")
    assert proc.returncode == 0 and "--boa-offset" in proc.stdout and "--scheduler" in proc.stdout


def test_output_is_never_partial_even_across_file_systems(synthetic_input, tmp_path, monkeypatch):
    """Publishing across file systems copies to a hidden .partial file, then renames."""
    import errno

    from ndvi_worker import io as wio

    src = tmp_path / "a.bin"
    src.write_bytes(np.arange(1000, dtype=np.uint8).tobytes())
    dst_dir = tmp_path / "out"
    dst_dir.mkdir()
    real_replace = os.replace
    seen = []

    def fake_replace(a, b):
        if Path(a) == src:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        seen.append((Path(a).name, Path(b).name))
        return real_replace(a, b)

    monkeypatch.setattr(wio.os, "replace", fake_replace)
    wio.publish(src, dst_dir / "a.bin")
    assert seen == [(".a.bin.partial", "a.bin")]
    assert (dst_dir / "a.bin").read_bytes() == np.arange(1000, dtype=np.uint8).tobytes()
    assert not src.exists()
