"""What `composite`, `mosaic` and `resume` hand to a stage-2 round (launcher.ndvi.products, below the CLI): the worker's
options, the mosaic's source, what a round lacks, and resume's retry round."""

from __future__ import annotations

import pytest

from earthmon_testing.launcher import synthetic_items
from launcher.ndvi.plan import make_plan
from launcher.ndvi.products import (
    ProductResume,
    composite_args,
    mosaic_args,
    mosaic_inputs_missing,
    mosaic_source,
    plan_composites,
    retry_round,
    scan_outputs,
    scenes_missing,
)


def test_composite_args_in_the_workers_order() -> None:
    assert composite_args("max", None, None, None) == ["--method", "max"]
    assert composite_args("median", " 2023-12-01/2023-12-31 ", "float32", 128) == [
        "--method", "median", "--period", "2023-12-01/2023-12-31", "--dtype", "float32", "--memory-mb", "128",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="ends before it starts"):
        composite_args("max", "2023-12-31/2023-12-01", None, None)


def test_mosaic_args_in_the_workers_order() -> None:
    assert mosaic_args(None, None, None) == []
    assert mosaic_args(0.05, " -10,35,30,60", "int16") == [
        "--resolution", "0.05", "--bbox", "-10,35,30,60", "--dtype", "int16",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="--resolution"):
        mosaic_args(0, None, None)
    with pytest.raises(ValueError, match="--bbox"):
        mosaic_args(None, "30,35,-10,60", None)


def _plan_and_outputs(written: int):
    """A 6-scene plan whose first `written` scenes have both output files."""
    plan, _, _ = make_plan(
        synthetic_items(6),
        run_id="po",
        created="t",
        s3_prefix="s3://earthmon-test/p",
        jobs=2,
        instances_per_job=1,
    )
    objects = {}
    scenes = [(job, s) for job in plan.jobs for s in job.scenes][:written]
    for job, s in scenes:
        prefix = plan.job_output_uri(job).split("/", 3)[3]
        objects[f"{prefix}{s.item_id}_ndvi.tif"] = 100
        objects[f"{prefix}{s.item_id}_ndvi.json"] = 10
    return plan, scan_outputs(plan, objects)


def test_what_a_round_lacks_and_the_mosaics_source() -> None:
    plan, outputs = _plan_and_outputs(4)
    assert scenes_missing(plan, outputs) == "2 of 6 scene(s) have no output yet"
    assert mosaic_source(plan, "auto") == "scenes"
    assert mosaic_inputs_missing(plan, outputs, "auto") == "2 of 6 scene(s) have no output yet"
    # no composite round: plan_mosaic says so
    assert mosaic_inputs_missing(plan, outputs, "composites") is None
    plan, outputs = _plan_and_outputs(6)
    assert scenes_missing(plan, outputs) is None
    with_composites, round_, _ = plan_composites(plan, outputs, ["--method", "max"], 2, "t")
    assert mosaic_source(with_composites, "auto") == "composites"
    assert mosaic_source(with_composites, "scenes") == "scenes"
    tiles = sum(len(j.tiles) for j in round_.jobs)
    assert mosaic_inputs_missing(with_composites, outputs, "auto") == (
        f"{tiles} of {tiles} tile(s) of composite round {round_.round} have no composite yet"
    )


def test_retry_round_keeps_the_originals_args() -> None:
    plan, outputs = _plan_and_outputs(6)
    with_composites, original, _ = plan_composites(plan, outputs, ["--method", "mean"], 2, "t")
    missing = original.jobs[0].tiles
    todo = ProductResume("composite", original, missing=missing)
    _, retry, manifests = retry_round(with_composites, outputs, todo, None, "t2")
    assert retry.kind == "composite" and retry.retry_of == original.round and retry.args == original.args
    assert sorted(t for j in retry.jobs for t in j.tiles) == sorted(missing)
    assert len(retry.jobs) <= len(original.jobs) and len(manifests) == len(retry.jobs)
    _, one_job, _ = retry_round(with_composites, outputs, todo, 1, "t2")
    assert len(one_job.jobs) == 1


def test_inputs_href_is_the_input_prefix_seen_from_the_output_prefix():
    from launcher.ndvi.products import inputs_href, with_option

    assert inputs_href("s3://b/run/out/run-m0-000/", "s3://b/run/out/") == "../"
    assert inputs_href("s3://b/run/out/run-m0-000/", "s3://b/run/out/run-0003/") == "../run-0003/"
    assert inputs_href("s3://b/products/m/", "s3://b/run/out/") == "../../run/out/"
    assert inputs_href("s3://b/run/out/", "s3://b/run/out/") is None
    assert inputs_href("s3://b/run/out/m/", "s3://other/run/out/") is None  # no relative path across buckets
    assert inputs_href("s3://b/run/out/m/", "s3://b/my run/<x>/") is None  # a key the worker would refuse
    assert with_option(["--x", "1", "--inputs-href=../a/", "--y"], "--inputs-href", "../") == (
        "--x", "1", "--y", "--inputs-href", "../",
    )  # fmt: skip
