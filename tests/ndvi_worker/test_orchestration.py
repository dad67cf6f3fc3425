"""The worker's orchestration pieces tested directly, next to the end-to-end runs: shard planning, chunk windows,
the ExitMessage and the per-host report (pure functions over dicts and records, no GDAL reads)."""

from __future__ import annotations

import copy
import json

import pytest

from earthmon_testing.worker import STAC_ITEMS
from ndvi_worker.config import WorkerConfig
from ndvi_worker.discover import InputItem
from ndvi_worker.report import SceneRecord, exit_message, host_report, summarize
from ndvi_worker.run import chunk_windows, plan_shard

ITEM = json.loads((STAC_ITEMS / "earth-search-v1" / "S2A_13TDE_20231008_0_L2A.json").read_text())


def entry(item, source="a.json", error=None):
    return InputItem(source=source, location="/data/" + source, item=item, error=error)


@pytest.fixture
def cfg(tmp_path):
    (tmp_path / "in").mkdir()
    return WorkerConfig(input_dir=tmp_path / "in", output_dir=tmp_path / "out")


def statuses(planned):
    return [
        (p.record.status if p.record else "process", p.record.error if p.record else None) for p in planned
    ]


def test_plan_shard_sorts_every_input_into_failed_skipped_or_to_process(cfg):
    bad_id = copy.deepcopy(ITEM)
    bad_id["id"] = "../escape"
    no_red = copy.deepcopy(ITEM)
    no_red["id"] = "S2A_13TDE_20231009_0_L2A"
    del no_red["assets"]["red"]
    planned = plan_shard(
        [
            entry(None, "broken.json", error="not JSON: Expecting value"),
            entry(ITEM, "a.json"),
            entry(copy.deepcopy(ITEM), "again.json"),
            entry(bad_id, "bad.json"),
            entry(no_red, "nored.json"),
        ],
        cfg,
    )
    got = statuses(planned)
    assert got[0] == ("failed", "not JSON: Expecting value")
    assert got[1] == ("process", None)
    assert got[2] == ("skipped", "duplicate of an item earlier in the shard")
    assert got[3][0] == "failed" and planned[3].record.item_id is None  # an unsafe id is never echoed
    assert got[4][0] == "failed" and "red" in got[4][1]
    assert planned[1].scene.item_id == ITEM["id"]


def test_plan_shard_skips_a_scene_published_completely_and_redoes_a_partial_one(cfg):
    scene = plan_shard([entry(ITEM)], cfg)[0].scene
    cfg.output_dir.mkdir()
    cog = cfg.output_dir / f"{scene.output_stem}.tif"
    cog.write_bytes(b"x" * 10)
    item = {"assets": {"ndvi": {"file:size": 10}}}
    (cfg.output_dir / f"{scene.output_stem}.json").write_text(json.dumps(item))
    [done] = plan_shard([entry(ITEM)], cfg)
    assert done.record.status == "skipped" and done.record.output == f"{scene.output_stem}.tif"
    cog.write_bytes(b"x" * 7)  # a COG of another size than its item records: not complete
    assert plan_shard([entry(ITEM)], cfg)[0].record is None
    overwrite = WorkerConfig(input_dir=cfg.input_dir, output_dir=cfg.output_dir, overwrite=True)
    cog.write_bytes(b"x" * 10)
    assert plan_shard([entry(ITEM)], overwrite)[0].record is None


@pytest.mark.parametrize("shape, chunk", [((10980, 10980), 1024), ((5, 7), 4), ((1024, 1024), 1024)])
def test_chunk_windows_tile_the_raster_exactly_once(shape, chunk):
    windows = chunk_windows(shape, chunk)
    covered = [[0] * shape[1] for _ in range(shape[0])] if shape[0] * shape[1] < 100 else None
    assert sum(w.width * w.height for w in windows) == shape[0] * shape[1]
    assert all(0 < w.width <= chunk and 0 < w.height <= chunk for w in windows)
    if covered is not None:
        for w in windows:
            for r in range(w.row_off, w.row_off + w.height):
                for c in range(w.col_off, w.col_off + w.width):
                    covered[r][c] += 1
        assert all(v == 1 for row in covered for v in row)


def records(n_failed: int):
    out = [SceneRecord("ok.json", "S2A_13TDE_20231008_0_L2A", "done", seconds=3.0, bytes_read=100)]
    out.append(SceneRecord("skip.json", "S2A_13TDE_20231009_0_L2A", "skipped"))
    out += [
        SceneRecord(f"f{i}.json", f"S2A_13TDE_2023101{i % 10}_0_L2A", "failed", error="boom " * 50)
        for i in range(n_failed)
    ]
    return out


def test_exit_message_counts_names_the_first_failures_and_fits_in_1_kb():
    assert exit_message(records(0), "algo-2") == "algo-2: 1 done, 1 skipped, 0 failed of 2 scenes."
    text = exit_message(records(8), "algo-2")
    assert text.startswith(
        "algo-2: 1 done, 1 skipped, 8 failed of 10 scenes. Failed: S2A_13TDE_20231010_0_L2A: boom"
    )
    assert len(text) <= 1024
    short = exit_message([SceneRecord(f"f{i}", f"id{i}", "failed", error="x") for i in range(7)], "h")
    assert short.endswith("; and 2 more (see _reports/h.json)")


def test_exit_message_and_report_redact_a_secret_in_an_error():
    rec = SceneRecord(
        "s.json", "id", "failed", error="GET https://h/b.tif?X-Amz-Signature=deadbeefcafe failed"
    )
    assert "deadbeefcafe" not in exit_message([rec], "h")
    assert "deadbeefcafe" not in json.dumps(host_report("h", ["h"], "t0", [rec], {}))


def test_host_report_holds_the_summary_every_scene_and_the_options():
    recs = records(1)
    report = host_report("algo-1", ["algo-1", "algo-2"], "2023-12-01T00:00:00Z", recs, {"workers": 2})
    assert report["summary"] == summarize(recs) == {"total": 3, "done": 1, "skipped": 1, "failed": 1}
    assert report["hosts"] == ["algo-1", "algo-2"] and report["options"] == {"workers": 2}
    assert [s["source"] for s in report["scenes"]] == ["ok.json", "skip.json", "f0.json"]
    assert report["bytes_read"] == 100 and report["finished"] >= report["started"]
