"""Planning: sharding properties (hypothesis), manifests, the plan.json model, and `launcher plan` on moto."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from earthmon_testing.launcher import fixture_items, synthetic_items
from launcher.cli import cli
from launcher.ndvi.plan import (
    DEFAULT_SECONDS_PER_SCENE,
    MAX_ITEMS_PER_BATCH,
    Plan,
    PlanError,
    SceneRef,
    add_round,
    batch_sizes,
    build_manifest,
    common_prefix,
    estimate,
    even_split,
    fewest_instances,
    layout_for,
    make_plan,
    manifest_uris,
    shard,
)

# ---------------------------------------------------------------------------------------------- sharding


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(), max_size=300, unique=True), st.integers(min_value=1, max_value=40))
def test_shard_every_item_exactly_once_balanced(items: list[int], n: int) -> None:
    shards = shard(items, n)
    assert len(shards) == n
    flat = [x for s in shards for x in s]
    assert sorted(flat) == sorted(items) and len(flat) == len(items)  # each exactly once
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    if len(items) >= n:
        assert min(sizes) >= 1  # none empty unless fewer items than shards
    else:
        assert sum(1 for s in sizes if s) == len(items)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=8), max_size=100), st.integers(min_value=1, max_value=30))
def test_shard_is_stable(items: list[str], n: int) -> None:
    assert shard(items, n) == shard(list(items), n)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=400), st.integers(min_value=1, max_value=30), st.randoms())
def test_plan_jobs_balanced_and_independent_of_input_order(n_items: int, jobs: int, rnd) -> None:
    items = synthetic_items(n_items)
    plan1, manifests1, _ = make_plan(
        items, run_id="r", created="t", s3_prefix="s3://b/p", jobs=jobs, instances_per_job=20
    )
    shuffled = items[:]
    rnd.shuffle(shuffled)
    plan2, manifests2, _ = make_plan(
        shuffled, run_id="r", created="t", s3_prefix="s3://b/p", jobs=jobs, instances_per_job=20
    )
    assert plan1 == plan2 and manifests1 == manifests2
    sizes = [j.scene_count for j in plan1.jobs]
    assert len(plan1.jobs) == min(jobs, n_items) and min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    listed = [u for m in manifests1.values() for u in manifest_uris(m)]
    assert sorted(listed) == sorted(s.uri for j in plan1.jobs for s in j.scenes)
    assert len(set(listed)) == n_items


def test_shard_rejects_zero() -> None:
    with pytest.raises(ValueError):
        shard([1], 0)


# --------------------------------------------------------------------------------------------- manifests


def test_manifest_prefix_and_relative_keys() -> None:
    uris = [
        "s3://sentinel-cogs/sentinel-s2-l2a-cogs/21/P/XK/2023/11/S2B_21PXK_20231110_0_L2A/S2B_21PXK_20231110_0_L2A.json",
        "s3://sentinel-cogs/sentinel-s2-l2a-cogs/1/C/DK/2023/9/S2A_1CDK_20230901_0_L2A/S2A_1CDK_20230901_0_L2A.json",
    ]
    manifest = build_manifest(uris)
    assert manifest[0] == {"prefix": "s3://sentinel-cogs/sentinel-s2-l2a-cogs/"}
    assert manifest[1] == "21/P/XK/2023/11/S2B_21PXK_20231110_0_L2A/S2B_21PXK_20231110_0_L2A.json"
    assert manifest_uris(manifest) == uris
    assert common_prefix(["s3://b/a/x.json"]) == "s3://b/a/"
    assert common_prefix(["s3://b/x.json", "s3://b/y/z.json"]) == "s3://b/"
    assert common_prefix(["s3://b/ab/x.json", "s3://b/ac/x.json"]) == "s3://b/"  # folder boundaries only
    with pytest.raises(ValueError, match="several buckets"):
        common_prefix(["s3://a/x.json", "s3://b/x.json"])


def test_items_referenced_in_place_or_copied() -> None:
    items = fixture_items()  # all v1 items live in sentinel-cogs (canonical links)
    plan, _, to_write = make_plan(
        items, run_id="r1", created="t", s3_prefix="s3://b/p", jobs=3, instances_per_job=2
    )
    assert to_write == {}
    assert all(s.uri.startswith("s3://sentinel-cogs/sentinel-s2-l2a-cogs/") for s in plan.scenes().values())
    api_only = copy.deepcopy(items[0])
    api_only["id"] = "S2A_99XXX_20231201_0_L2A"
    api_only["links"] = []
    api_only["properties"].pop("earthsearch:s3_path", None)
    api_only["assets"] = {}
    plan, manifests, to_write = make_plan(
        [*items, api_only], run_id="r1", created="t", s3_prefix="s3://b/p", jobs=3, instances_per_job=2
    )
    # a manifest lists one bucket's keys: with one API-only item, every item is written under the run's prefix, in
    # batches: here 3 jobs of 8-9 scenes on 2 instances, so 2 batches a job
    assert sorted(to_write) == [
        f"s3://b/p/r1/items/r0-{j:03d}-{k:04d}.jsonl" for j in range(3) for k in range(2)
    ]
    assert sorted(i["id"] for batch in to_write.values() for i in batch) == sorted(
        i["id"] for i in [*items, api_only]
    )
    for job in plan.jobs:
        listed = manifest_uris(manifests[job.manifest_uri])
        assert listed == sorted({s.uri for s in job.scenes}) and len(listed) == 2
        for scene in job.scenes:  # each scene points at the batch that holds its item
            assert scene.item_id in [i["id"] for i in to_write[scene.uri]]
    assert all(m[0]["prefix"] == "s3://b/p/r1/items/" for m in manifests.values())
    with pytest.raises(PlanError, match="--no-copy-items"):
        make_plan([*items, api_only], run_id="r1", created="t", s3_prefix="s3://b/p", jobs=3, instances_per_job=2,
                  copy_items=False)  # fmt: skip
    plan, _, to_write = make_plan(
        items, run_id="r1", created="t", s3_prefix="s3://b/p", jobs=3, instances_per_job=2, copy_items=True
    )
    assert sum(len(b) for b in to_write.values()) == len(items)


@settings(max_examples=200, deadline=None)
@given(scenes=st.integers(1, 20000), instances=st.integers(1, 100))
def test_batch_sizes_cover_a_job_evenly_per_instance(scenes: int, instances: int) -> None:
    instances = min(instances, scenes)  # make_jobs never gives a job more instances than scenes
    sizes = batch_sizes(scenes, instances)
    assert sum(sizes) == scenes and min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert max(sizes) <= MAX_ITEMS_PER_BATCH or len(sizes) == scenes
    assert len(sizes) % instances == 0  # every instance gets as many batches: ShardedByS3Key splits objects
    # no more objects than needed: one fewer batch per instance would exceed the cap
    per_instance = len(sizes) // instances
    assert per_instance == 1 or math.ceil(scenes / instances / (per_instance - 1)) > MAX_ITEMS_PER_BATCH


def test_reference_run_copies_its_items_in_500_objects() -> None:
    items = synthetic_items(8581)
    plan, manifests, to_write = make_plan(
        items, run_id="ref", created="t", s3_prefix="s3://b/p", jobs=25, instances_per_job=20, copy_items=True
    )
    assert len(to_write) == 500  # one batch per instance (17-18 scenes), not 8,581 objects
    assert {len(b) for b in to_write.values()} == {17, 18}
    assert all(len(manifest_uris(m)) == 20 for m in manifests.values())
    # the fewest-instances layout: 3 jobs x 18 instances of ~2,860 scenes: 3 batches per instance of <= 64
    _, _, to_write = make_plan(
        items, run_id="ref", created="t", s3_prefix="s3://b/p", jobs=3, instances_per_job=18, copy_items=True
    )
    assert len(to_write) == 162 and max(len(b) for b in to_write.values()) <= MAX_ITEMS_PER_BATCH


def test_plan_rejects_bad_input() -> None:
    items = synthetic_items(5)
    kwargs = {"created": "t", "s3_prefix": "s3://b/p", "jobs": 2, "instances_per_job": 2}
    with pytest.raises(PlanError, match="run id"):
        make_plan(items, run_id="bad_id!", **kwargs)
    with pytest.raises(PlanError, match="run id"):
        make_plan(items, run_id="x" * 49, **kwargs)
    with pytest.raises(PlanError, match="listed twice"):
        make_plan(items + items[:1], run_id="r", **kwargs)
    with pytest.raises(PlanError, match="1..100"):
        make_plan(items, run_id="r", **{**kwargs, "instances_per_job": 101})
    with pytest.raises(PlanError, match="s3://"):
        make_plan(items, run_id="r", **{**kwargs, "s3_prefix": "bucket/p"})
    with pytest.raises(PlanError, match="--price-per-hour"):
        make_plan(items, run_id="r", instance_type="ml.p5.48xlarge", **kwargs)


# ------------------------------------------------------------------------------------------------- model


def test_plan_round_trips_and_rejects_unknown_keys() -> None:
    plan, _, _ = make_plan(
        synthetic_items(50), run_id="run-1", created="2023-12-08T00:00:00+00:00", s3_prefix="s3://b/p", jobs=4,
        instances_per_job=3,
    )  # fmt: skip
    data = json.loads(json.dumps(plan.to_dict()))
    assert Plan.from_dict(data) == plan
    assert data["summary"] == {"jobs": 4, "scenes": 50, "rounds": [0]}
    with pytest.raises(PlanError, match="unknown key.*instance_typ"):
        Plan.from_dict({**data, "instance_typ": "ml.m5.xlarge"})
    bad_job = copy.deepcopy(data)
    bad_job["jobs"][1]["instances"] = 3
    with pytest.raises(PlanError, match=r"plan.jobs\[1\].*instances"):
        Plan.from_dict(bad_job)
    bad_scene = copy.deepcopy(data)
    bad_scene["jobs"][0]["scenes"][0]["href"] = "x"
    with pytest.raises(PlanError, match=r"scenes\[0\]"):
        Plan.from_dict(bad_scene)
    missing = copy.deepcopy(data)
    del missing["output_prefix"]
    with pytest.raises(PlanError, match="missing key.*output_prefix"):
        Plan.from_dict(missing)
    with pytest.raises(PlanError, match="version"):
        Plan.from_dict({**data, "version": 99})
    assert data["jobs"][0]["scene_count"] == len(data["jobs"][0]["scenes"]) == 13
    edited = copy.deepcopy(data)
    edited["jobs"][0]["scenes"].pop()
    with pytest.raises(PlanError, match="scene_count 13 does not match its 12 scenes"):
        Plan.from_dict(edited)


def test_reference_run_estimate() -> None:
    # 8,581 scenes in 25 jobs x 20 ml.m5.xlarge: 343-344 scenes a job, 18 a busiest instance
    plan, manifests, _ = make_plan(
        synthetic_items(8581), run_id="ref", created="t", s3_prefix="s3://b/p", jobs=25, instances_per_job=20
    )
    sizes = sorted({j.scene_count for j in plan.jobs})
    assert sizes == [343, 344] and len(manifests) == 25
    assert {j.instance_count for j in plan.jobs} == {20}
    est = plan.estimate
    assert est.instance_hours == pytest.approx(500 * (180 + 18 * DEFAULT_SECONDS_PER_SCENE) / 3600, rel=1e-3)
    assert est.cost_usd == pytest.approx(est.instance_hours * 0.23, abs=0.01)
    assert estimate([(3, 3)], 1.0, 60, 0).instance_hours == pytest.approx(3 * 60 / 3600, abs=1e-3)


def test_fewest_instances_for_a_deadline() -> None:
    # 8,581 scenes at 5 s each, 180 s start-up, 20 min: 204 scenes an instance -> 43 instances
    n = fewest_instances(8581, 5.0, 1200, 180)
    assert n == 43
    assert 180 + math.ceil(8581 / n) * 5.0 <= 1200 < 180 + math.ceil(8581 / (n - 1)) * 5.0
    fewer = estimate([(8581, n)], 0.23, 5.0, 180)
    assert fewer.wall_hours * 3600 <= 1200
    assert fewer.instance_hours < estimate([(8581, 500)], 0.23, 5.0, 180).instance_hours  # fewer start-ups
    assert fewest_instances(10, 2000.0, 1200, 180) is None  # one scene alone misses the deadline
    assert fewest_instances(0, 5.0, 1200, 180) == 0
    assert fewest_instances(200, 5.1, 1200, 180) == 1  # 1020 / 5.1 is 200 scenes, not 199.999...
    with pytest.raises(PlanError, match="positive"):
        fewest_instances(10, 0.0, 1200, 180)
    # as jobs of at most 20 instances: 53 -> 3 jobs of 18 (54 instances), scenes split as make_jobs splits them
    assert layout_for(53, 20) == (3, 18) and layout_for(7, 20) == (1, 7) and layout_for(40, 20) == (2, 20)
    assert even_split(8581, 3) == [2861, 2860, 2860]
    split = estimate([(n, 18) for n in even_split(8581, 3)], 0.23, 6.2, 180)
    assert split.wall_hours * 3600 <= 1200


def test_add_round_plans_only_given_scenes() -> None:
    plan, _, _ = make_plan(
        synthetic_items(100), run_id="run", created="t", s3_prefix="s3://b/p", jobs=4, instances_per_job=5
    )
    missing = [SceneRef(s.item_id, s.uri, s.tile) for s in list(plan.scenes().values())[:30]]
    new_plan, new_jobs, manifests, batches = add_round(plan, missing)
    assert batches == {}  # items referenced in place stay there
    assert [j.name for j in new_jobs] == ["run-r1-000", "run-r1-001"]  # 25 scenes a job in round 0
    assert sorted(s.item_id for j in new_jobs for s in j.scenes) == sorted(s.item_id for s in missing)
    assert new_plan.rounds == [0, 1] and len(new_plan.jobs) == 6 and new_plan.scene_count == 100
    assert set(manifests) == {"s3://b/p/run/manifests/r1-000.json", "s3://b/p/run/manifests/r1-001.json"}


def test_add_round_batches_copied_scenes_again() -> None:
    plan, _, first = make_plan(
        synthetic_items(100), run_id="run", created="t", s3_prefix="s3://b/p", jobs=4, instances_per_job=5,
        copy_items=True,
    )  # fmt: skip
    missing = list(plan.scenes().values())[::7]
    new_plan, new_jobs, manifests, batches = add_round(plan, missing)
    # the missing scenes only, in new objects of round 1 (the round-0 batches also hold scenes that are done)
    assert sorted(i for ids in batches.values() for i in ids) == sorted(s.item_id for s in missing)
    assert all(uri.startswith("s3://b/p/run/items/r1-") for uri in batches) and not set(batches) & set(first)
    for job in new_jobs:
        assert manifest_uris(manifests[job.manifest_uri]) == sorted({s.uri for s in job.scenes})
        assert all(s.item_id in batches[s.uri] for s in job.scenes)
    assert new_plan.scenes() == plan.scenes()  # the first round's refs (and batches) stay valid
    in_place = SceneRef("S2A_31UDQ_20231201_0_L2A", "s3://elsewhere/S2A_31UDQ_20231201_0_L2A.json")
    with pytest.raises(PlanError, match="mix"):
        add_round(plan, [*missing, in_place])


# ------------------------------------------------------------------------------------------- CLI on moto


def test_plan_cli_uploads_manifests_and_writes_plan(aws, tmp_path: Path) -> None:
    from launcher.aws import client

    items = fixture_items()
    items_path = tmp_path / "items.jsonl"
    items_path.write_text("".join(json.dumps(i) + "\n" for i in items))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "plan",
            "--items",
            str(items_path),
            "--jobs",
            "5",
            "--instances-per-job",
            "3",
            "--s3-prefix",
            "s3://earthmon-test/ndvi",
            "--run-id",
            "dec-2023",
            "--out",
            str(out),
            "--map",
            str(out / "plan.html"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "planned 25 scene(s) into 5 job(s) of 5-5 scenes" in result.output
    # the estimate uses the measured time per scene, and says how few instances would do in 20 minutes
    assert f"({DEFAULT_SECONDS_PER_SCENE:g} s per scene, 180 s start-up per job)" in result.output
    fewest = fewest_instances(25, DEFAULT_SECONDS_PER_SCENE, 1200, 180)
    help_text = " ".join(CliRunner().invoke(cli, ["plan", "--help"]).output.split())
    assert (
        f"[default: {DEFAULT_SECONDS_PER_SCENE:g} s, the worker's steady state" in help_text
    )  # help follows the constant
    jobs, per_job = layout_for(fewest, 3)
    assert (
        f"fewest instances to finish within 20 min: {fewest}; as --jobs {jobs} --instances-per-job {per_job}:"
        in (result.output)
    )
    plan = Plan.from_dict(json.loads((out / "plan.json").read_text()))
    assert [j.name for j in plan.jobs] == [f"dec-2023-r0-00{i}" for i in range(5)]
    assert plan.output_prefix == "s3://earthmon-test/ndvi/dec-2023/output/"
    puts = aws.sent("s3", "PutObject")
    bodies = {json.dumps(c.body): c.body for c in puts}
    manifests = [b for b in bodies.values() if isinstance(b, list)]
    assert len(manifests) == 5  # items referenced in place: only manifests and the plan are written
    assert all(m[0] == {"prefix": "s3://sentinel-cogs/sentinel-s2-l2a-cogs/"} for m in manifests)
    assert sorted(k for m in manifests for k in m[1:]) == sorted(
        s.uri.removeprefix("s3://sentinel-cogs/sentinel-s2-l2a-cogs/") for s in plan.scenes().values()
    )
    s3 = client("s3")
    stored = json.loads(
        s3.get_object(Bucket="earthmon-test", Key="ndvi/dec-2023/manifests/r0-000.json")["Body"].read()
    )
    assert stored == json.loads((out / "manifests" / "r0-000.json").read_text())
    assert json.loads(s3.get_object(Bucket="earthmon-test", Key="ndvi/dec-2023/plan.json")["Body"].read())[
        "run_id"
    ]
    html = (out / "plan.html").read_text()
    assert (
        "S2B_21PXK_20231110_0_L2A" in html
        and "dec-2023-r0-004" in html
        and "map of 25 footprint(s)" in result.output
    )


def test_plan_cli_writes_api_only_items_first(aws, tmp_path: Path) -> None:
    items = synthetic_items(7, in_bucket=False)
    items_path = tmp_path / "items.jsonl"
    items_path.write_text("".join(json.dumps(i) + "\n" for i in items))
    result = CliRunner().invoke(
        cli,
        ["plan", "--items", str(items_path), "--jobs", "2", "--s3-prefix", "s3://earthmon-test/x", "--run-id", "r",
         "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    puts = aws.sent("s3", "PutObject")
    item_puts = [
        i for i, c in enumerate(puts) if isinstance(c.body, dict) and c.body.get("type") == "Feature"
    ]
    manifest_puts = [i for i, c in enumerate(puts) if isinstance(c.body, list)]
    assert len(item_puts) == 7 and len(manifest_puts) == 2
    assert max(item_puts) < min(manifest_puts)  # a manifest never lists a key that is not there yet


def test_plan_cli_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = CliRunner().invoke(
        cli, ["plan", "--items", str(empty), "--s3-prefix", "s3://b/p", "--out", str(tmp_path)]
    )
    assert r.exit_code == 1 and "no items" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\nnot json\n')
    r = CliRunner().invoke(
        cli, ["plan", "--items", str(bad), "--s3-prefix", "s3://b/p", "--out", str(tmp_path)]
    )
    assert r.exit_code == 1 and "bad.jsonl:2" in r.output


def test_plan_cli_never_overwrites_a_run_silently(aws, tmp_path: Path) -> None:
    items_path = tmp_path / "items.jsonl"
    items_path.write_text("".join(json.dumps(i) + "\n" for i in synthetic_items(6)))
    args = ["plan", "--items", str(items_path), "--jobs", "2", "--s3-prefix", "s3://earthmon-test/x", "--out",
            str(tmp_path / "run")]  # fmt: skip
    assert CliRunner().invoke(cli, [*args, "--run-id", "first"]).exit_code == 0
    again = CliRunner().invoke(cli, [*args, "--run-id", "second"])
    assert again.exit_code == 1 and "exists already" in again.output and "--force" in again.output
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["run_id"] == "first"
    assert CliRunner().invoke(cli, [*args, "--run-id", "second", "--force"]).exit_code == 0
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["run_id"] == "second"
