"""Pure: stage 2 of a run (issue 12): temporal composites per MGRS tile and the planetary mosaic, planned from the
outputs stage 1 left under the run's output prefix, their progress, and what `resume` reruns.

**Sharding by tile.** A composite needs every date of its tile on one machine, and a per-scene output is two objects
(`<id>_ndvi.tif` + `<id>_ndvi.json`, the item's href is relative to it). ShardedByS3Key hands each instance "about
1/n" of a manifest's objects, split arbitrarily (docs/domain.md section 3): the dates of a tile, even a COG and its
item, could land on different instances, each writing a partial composite under the same name. So the launcher
shards by tile itself: tiles are grouped (largest first onto the least loaded group, so groups hold about as many
dates), each group gets its own ManifestFile listing both files of every date of its tiles, and one Processing job
with **one instance** runs it (`FullyReplicated`: on one instance, all of its manifest). Parallelism comes from the
number of jobs (`--jobs`), not instances per job: SageMaker has no per-instance manifest, and several instances of a
FullyReplicated job would each composite every tile. The mosaic is one job over every composite (or every scene).

S3 layout, beside stage 1's (launcher/ndvi/plan.py):
    manifests/c<round>-<index>.json, manifests/m<round>-000.json
    output/<run>-c<round>-<index>/<tile>_<start>_<end>_ndvi-<method>.tif|.json|.png, _reports/composite-<host>.json
    output/<run>-m<round>-000/mosaic_ndvi.tif|.png, collection.json, index.html, _reports/mosaic-<host>.json
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from launcher.aws import parse_s3_uri
from launcher.errors import ArgumentError, PlanError
from launcher.ndvi.plan import Plan, ProductJob, ProductRound, build_manifest, product_job_name
from launcher.ndvi.watch import ACTIVE, DONE_SUFFIX, NOT_SUBMITTED, TIF_SUFFIX, JobState, as_datetime

UNTILED = "unknown"  # the worker's group for products without an MGRS tile
MOSAIC_FILES = ("mosaic_ndvi.tif", "collection.json")  # written last: the mosaic job is done when both exist
COMPOSITE_KEY = re.compile(
    r"^(?P<tile>[A-Za-z0-9-]+)_(?P<start>\d{8})_(?P<end>\d{8})_ndvi-(?P<method>max|median|mean)\.(?P<ext>tif|json)$"
)
GIB = 2**30
MIN_VOLUME_GB = 30
MAX_JOBS = 1000


@dataclass(frozen=True)
class ProductFile:
    """One product in S3: its STAC item and COG (both listed in manifests), their size, the job that wrote it."""

    json_uri: str
    tif_uri: str
    size: int
    job: str


@dataclass
class Outputs:
    """What the run's output prefix holds: per-scene outputs by item id (one per scene: the latest job's, when a
    scene was written twice), composites by job and tile, and the file names of each mosaic job."""

    scenes: dict[str, ProductFile] = field(default_factory=dict)
    composites: dict[str, dict[str, ProductFile]] = field(default_factory=dict)
    files: dict[str, set[str]] = field(default_factory=dict)


def scan_outputs(plan: Plan, objects: Mapping[str, int]) -> Outputs:
    """The products under the plan's output prefix, from a listing (`key -> size`)."""
    prefix = parse_s3_uri(plan.output_prefix).as_prefix()
    base = f"s3://{prefix.bucket}/{prefix.key}"
    ndvi_jobs = {j.name: i for i, j in enumerate(plan.jobs)}
    product_jobs = {j.name for r in plan.products for j in r.jobs}
    pairs: dict[tuple[str, str], dict[str, tuple[str, int]]] = {}
    out = Outputs()
    for key, size in objects.items():
        if not key.startswith(prefix.key):
            continue
        parts = key[len(prefix.key) :].split("/")
        if len(parts) != 2:  # reports and anything deeper are not products
            continue
        job, name = parts
        if job in ndvi_jobs:
            for suffix in (DONE_SUFFIX, TIF_SUFFIX):
                if name.endswith(suffix) and len(name) > len(suffix):
                    pairs.setdefault((job, name[: -len(suffix)]), {})[suffix] = (key, size)
        elif job in product_jobs:
            out.files.setdefault(job, set()).add(name)
            m = COMPOSITE_KEY.match(name)
            if m:
                pairs.setdefault((job, m["tile"]), {})[m["ext"]] = (key, size)
    for (job, stem), found in sorted(pairs.items(), key=lambda kv: (ndvi_jobs.get(kv[0][0], -1), kv[0])):
        if job in ndvi_jobs:
            if DONE_SUFFIX in found and TIF_SUFFIX in found:  # later jobs (rounds) win
                (jk, js), (tk, ts) = found[DONE_SUFFIX], found[TIF_SUFFIX]
                out.scenes[stem] = ProductFile(
                    base + jk[len(prefix.key) :], base + tk[len(prefix.key) :], js + ts, job
                )
        elif "json" in found and "tif" in found:
            (jk, js), (tk, ts) = found["json"], found["tif"]
            out.composites.setdefault(job, {})[stem] = ProductFile(
                base + jk[len(prefix.key) :], base + tk[len(prefix.key) :], js + ts, job
            )
    out.scenes = {k: v for k, v in out.scenes.items() if k in plan.scenes()}
    return out


# ------------------------------------------------------------------------------------------------ planning


def group_tiles(sizes: Mapping[str, int], jobs: int) -> list[list[str]]:
    """Tiles into at most `jobs` non-empty groups of about equal load (`sizes`: dates per tile): largest first onto
    the least loaded group (ties: the lower index), each group sorted. Deterministic; every tile in one group."""
    if jobs < 1:
        raise ArgumentError(f"--jobs must be >= 1, got {jobs}")
    n = min(jobs, len(sizes))
    groups: list[list[str]] = [[] for _ in range(n)]
    load = [0] * n
    for tile in sorted(sizes, key=lambda t: (-sizes[t], t)):
        i = min(range(n), key=lambda k: (load[k], k))
        groups[i].append(tile)
        load[i] += sizes[tile]
    return [sorted(g) for g in groups if g]


def volume_for(input_bytes: int) -> int:
    """EBS GB for a stage-2 instance: its inputs twice over (inputs, products, staging) plus 10, at least 30."""
    return min(16384, max(MIN_VOLUME_GB, math.ceil(2 * input_bytes / GIB) + 10))


def next_round(plan: Plan, kind: str) -> int:
    return max((r.round for r in plan.product_rounds(kind)), default=-1) + 1


def _manifest_uri(plan: Plan, kind: str, round_: int, index: int) -> str:
    letter = product_job_name("x", kind, round_, index).split("-", 1)[1]
    return f"{plan.s3_prefix.rstrip('/')}/manifests/{letter}.json"


def mosaic_volume(resolution: float = 0.01) -> int:
    """EBS GB for the mosaic job, which downloads only the items (its COGs are read in place): twice its scratch
    over the global grid at `resolution` (the float32 sum and count, the int16 staging raster and COG) plus 10,
    at least 30 (0.01 degrees: 36000 x 18000 pixels, 8.4 GB of scratch -> 30 GB)."""
    pixels = math.ceil(360 / resolution) * math.ceil(180 / resolution)
    return min(16384, max(MIN_VOLUME_GB, math.ceil(2 * pixels * (8 + 2 + 2 + 1) / GIB) + 10))


def with_option(args: Sequence[str], option: str, value: str) -> tuple[str, ...]:
    """Worker options with ``option value`` set (replacing one a retried round carried, as ``--opt v`` or
    ``--opt=v``)."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == option:
            skip = True
            continue
        if not a.startswith(option + "="):
            out.append(a)
    return (*out, option, value)


def inputs_href(output_uri: str, input_prefix: str) -> str | None:
    """The mosaic's ``--inputs-href``: the input prefix as a path relative to the job's output prefix (both
    ``s3://`` in one bucket), e.g. ``../`` for ``s3://b/run/`` seen from ``s3://b/run/run-m0001-000/``; None across
    buckets or for keys the worker's rule refuses (the links then stay relative to the instance's folders)."""
    out, inp = parse_s3_uri(output_uri), parse_s3_uri(input_prefix)
    if out.bucket != inp.bucket:
        return None
    from ndvi_worker.safety import HrefError, check_inputs_href

    rel = posixpath.relpath("/" + inp.key.strip("/"), "/" + out.key.strip("/"))
    try:
        return (
            None if rel == "." else check_inputs_href(rel)
        )  # the worker's own rule: a key it would refuse -> None
    except HrefError:
        return None


def _resolution(args: Sequence[str]) -> float:
    for k, a in enumerate(args[:-1]):
        if a == "--resolution":
            return float(args[k + 1])
    return 0.01


def _job(plan: Plan, kind: str, round_: int, index: int, tiles: Sequence[str], files: Sequence[ProductFile],
         volume_gb: int | None, items_only: bool = False) -> tuple[ProductJob, list[Any]]:  # fmt: skip
    """A job and its manifest: both files of every product, or with `items_only` (the mosaic) the STAC items
    alone (the worker reads the COGs' overviews in place, `--assets-root`)."""
    uris = sorted(u for f in files for u in ((f.json_uri,) if items_only else (f.json_uri, f.tif_uri)))
    size = sum(f.size for f in files)
    name = product_job_name(plan.run_id, kind, round_, index)
    if len(name) > 63:
        raise PlanError(f"job name {name} would exceed 63 characters: too many rounds for run {plan.run_id}")
    job = ProductJob(
        name=name,
        index=index,
        manifest_uri=_manifest_uri(plan, kind, round_, index),
        tiles=tuple(tiles),
        objects=len(uris),
        input_bytes=size,
        volume_gb=volume_gb or volume_for(size),
    )
    return job, build_manifest(uris)


def scenes_by_tile(plan: Plan, outputs: Outputs) -> dict[str, list[ProductFile]]:
    """The per-scene outputs of the plan's scenes by MGRS tile (the plan's tile, as the worker reads it)."""
    scenes = plan.scenes()
    by_tile: dict[str, list[ProductFile]] = {}
    for item_id, product in sorted(outputs.scenes.items()):
        by_tile.setdefault(scenes[item_id].tile or UNTILED, []).append(product)
    return by_tile


def plan_composites(
    plan: Plan,
    outputs: Outputs,
    args: Sequence[str],
    jobs: int,
    created: str,
    volume_gb: int | None = None,
    tiles: Sequence[str] | None = None,
    retry_of: int | None = None,
) -> tuple[Plan, ProductRound, dict[str, list[Any]]]:
    """A composite round: the tiles (all, or `tiles`) grouped into at most `jobs` jobs, each manifest listing both
    files of every date of its tiles. Returns the extended plan, the round and its manifests (uri -> manifest)."""
    if not 1 <= jobs <= MAX_JOBS:
        raise ArgumentError(f"--jobs must be within 1..{MAX_JOBS}, got {jobs}")
    by_tile = scenes_by_tile(plan, outputs)
    if tiles is not None:
        by_tile = {t: by_tile[t] for t in tiles if t in by_tile}
    if not by_tile:
        raise PlanError(
            "no per-scene outputs to composite under "
            f"{plan.output_prefix}: run stage 1 first (`launcher submit` or `launcher local`)"
        )
    round_ = next_round(plan, "composite")
    built = [
        _job(plan, "composite", round_, i, group, [f for t in group for f in by_tile[t]], volume_gb)
        for i, group in enumerate(group_tiles({t: len(v) for t, v in by_tile.items()}, jobs))
    ]
    product = ProductRound(
        kind="composite", round=round_, created=created, source="scenes", args=tuple(args),
        jobs=tuple(j for j, _ in built), retry_of=retry_of,
    )  # fmt: skip
    manifests = {j.manifest_uri: m for j, m in built}
    return dataclasses.replace(plan, products=(*plan.products, product)), product, manifests


def plan_mosaic(
    plan: Plan,
    outputs: Outputs,
    source: str,
    args: Sequence[str],
    created: str,
    volume_gb: int | None = None,
    retry_of: int | None = None,
) -> tuple[Plan, ProductRound, dict[str, list[Any]]]:
    """A mosaic round: one job over every per-scene output (`source` scenes) or every composite of the latest
    composite round and its retries (`source` composites). Its manifest lists only the STAC items; the worker gets
    `--assets-root <the manifest's prefix>` and reads each COG's overviews in place from S3 (a planetary week's
    COGs are ~1 TB; the overviews it needs are a few percent of that, fetched with Range requests)."""
    if source == "composites":
        family = latest_composite_family(plan)
        if family is None:
            raise ArgumentError(
                "no composite round in the plan: run `launcher composite` first, or --source scenes"
            )
        files = list(composite_done(plan, outputs, family).values())
        what = f"composite round {family.round}"
    else:
        files = list(outputs.scenes.values())
        what = f"stage 1 ({plan.output_prefix})"
    if not files:
        raise PlanError(f"no outputs of {what} to mosaic yet")
    round_ = next_round(plan, "mosaic")
    volume = volume_gb or mosaic_volume(_resolution(args))
    job, manifest = _job(plan, "mosaic", round_, 0, (), files, volume, items_only=True)
    # the input folder mirrors the manifest's prefix (SageMaker places each key relative to it): the COG of
    # <prefix><job>/<id>_ndvi.json, href ./<id>_ndvi.tif, is read in place at <prefix><job>/<id>_ndvi.tif;
    # collection.json and index.html link the inputs where they are in S3, seen from the mosaic's output prefix
    args = with_option(args, "--assets-root", manifest[0]["prefix"])
    href = inputs_href(plan.job_output_uri(job), manifest[0]["prefix"])
    if href is not None:
        args = with_option(args, "--inputs-href", href)
    product = ProductRound(
        kind="mosaic", round=round_, created=created, source=source, args=tuple(args), jobs=(job,),
        retry_of=retry_of,
    )  # fmt: skip
    return (
        dataclasses.replace(plan, products=(*plan.products, product)),
        product,
        {job.manifest_uri: manifest},
    )


# ------------------------------------------------------------------------------------------------ progress


def latest_composite_family(plan: Plan) -> ProductRound | None:
    """The original round of the latest composites (a retry belongs to the round it repeats)."""
    rounds = plan.product_rounds("composite")
    if not rounds:
        return None
    family = max(r.family for r in rounds)
    return next(r for r in rounds if r.round == family)


def family_rounds(plan: Plan, original: ProductRound) -> list[ProductRound]:
    return [r for r in plan.product_rounds(original.kind) if r.family == original.round]


def composite_done(plan: Plan, outputs: Outputs, original: ProductRound) -> dict[str, ProductFile]:
    """Tile -> its composite, over a composite round and its retries (the latest round's wins)."""
    done: dict[str, ProductFile] = {}
    for r in family_rounds(plan, original):
        for job in r.jobs:
            written = outputs.composites.get(job.name, {})
            done.update({t: written[t] for t in job.tiles if t in written})
    return done


def mosaic_done(outputs: Outputs, job: ProductJob) -> bool:
    return all(name in outputs.files.get(job.name, set()) for name in MOSAIC_FILES)


def job_done(outputs: Outputs, kind: str, job: ProductJob) -> int:
    """Tiles of a composite job with their composite written; 1 or 0 for the mosaic job."""
    if kind == "mosaic":
        return int(mosaic_done(outputs, job))
    return sum(1 for t in job.tiles if t in outputs.composites.get(job.name, {}))


def product_states(
    plan: Plan, outputs: Outputs, descriptions: Mapping[str, Mapping[str, Any] | None], now: dt.datetime
) -> tuple[list[JobState], float]:
    """One JobState per stage-2 job (`scenes` counts its tiles, 1 for the mosaic) and their instance-hours."""
    states: list[JobState] = []
    hours = 0.0
    for r in plan.products:
        for job in r.jobs:
            d = descriptions.get(job.name)
            started = as_datetime(d.get("ProcessingStartTime")) if d else None
            ended = as_datetime(d.get("ProcessingEndTime")) if d else None
            if started is not None:
                hours += max(0.0, ((ended or now) - started).total_seconds()) / 3600
            states.append(
                JobState(
                    name=job.name,
                    status=NOT_SUBMITTED if d is None else str(d.get("ProcessingJobStatus", "Unknown")),
                    scenes=len(job.tiles) if r.kind == "composite" else 1,
                    done=job_done(outputs, r.kind, job),
                    instance_count=1,
                    started=started,
                    ended=ended,
                    failure_reason=(d or {}).get("FailureReason"),
                    exit_message=(d or {}).get("ExitMessage"),
                )
            )
    return states, hours


# -------------------------------------------------------------------------------------------------- resume


@dataclass(frozen=True)
class ProductResume:
    """What `resume` does for stage 2: submit the jobs of the latest round never submitted (`unsubmitted`), else a
    retry round of `original` (same args) for its `missing` tiles (composites) or the mosaic."""

    kind: str
    original: ProductRound
    missing: tuple[str, ...] = ()
    unsubmitted: tuple[ProductJob, ...] = ()
    active: tuple[str, ...] = ()


def product_resume(
    plan: Plan, outputs: Outputs, descriptions: Mapping[str, Mapping[str, Any] | None]
) -> ProductResume | None:
    """The stage-2 work left: the latest composites first (a mosaic over them would miss tiles), then the latest
    mosaic. None when everything planned is written."""
    family = latest_composite_family(plan)
    if family is not None:
        wanted = [t for j in family.jobs for t in j.tiles]
        done = composite_done(plan, outputs, family)
        missing = tuple(t for t in wanted if t not in done)
        if missing:
            return _resume("composite", plan, family, descriptions, missing)
    mosaics = plan.product_rounds("mosaic")
    if mosaics:
        last = mosaics[-1]
        if not mosaic_done(outputs, last.jobs[0]):
            original = next(r for r in mosaics if r.round == last.family)
            return _resume("mosaic", plan, original, descriptions, ())
    return None


def products_missing(plan: Plan, outputs: Outputs) -> int:
    """Tiles of the latest composite round (with its retries) without a composite, plus 1 if the latest mosaic is
    not written."""
    missing = 0
    family = latest_composite_family(plan)
    if family is not None:
        done = composite_done(plan, outputs, family)
        missing += sum(1 for j in family.jobs for t in j.tiles if t not in done)
    mosaics = plan.product_rounds("mosaic")
    if mosaics and not mosaic_done(outputs, mosaics[-1].jobs[0]):
        missing += 1
    return missing


def _resume(kind: str, plan: Plan, original: ProductRound, descriptions: Mapping[str, Any], missing: tuple[str, ...]
            ) -> ProductResume:  # fmt: skip
    latest = family_rounds(plan, original)[-1]
    unsubmitted = tuple(j for j in latest.jobs if descriptions.get(j.name) is None)
    active = tuple(
        name
        for r in family_rounds(plan, original)
        for j in r.jobs
        if (d := descriptions.get(name := j.name)) is not None and d.get("ProcessingJobStatus") in ACTIVE
    )
    return ProductResume(kind, original, missing, unsubmitted, active)


# ------------------------------------------------------------------------------------------ what a round is given


def composite_args(method: str, period: str | None, dtype: str | None, memory_mb: int | None) -> list[str]:
    """The worker's options of a composite round: `--method M [--period START/END] [--dtype D] [--memory-mb N]`.
    ValueError for a period the worker would refuse."""
    args = ["--method", method]
    if period is not None:
        from ndvi_worker.composite import parse_period

        parse_period(period)
        args += ["--period", period.strip()]
    if dtype:
        args += ["--dtype", dtype]
    if memory_mb is not None:
        args += ["--memory-mb", str(memory_mb)]
    return args


def mosaic_args(resolution: float | None, bbox: str | None, dtype: str | None) -> list[str]:
    """The worker's options of a mosaic round: `[--resolution DEG] [--bbox W,S,E,N] [--dtype D]`. ValueError for a
    resolution or extent the worker would refuse."""
    from ndvi_worker.mosaic import check_resolution, parse_bbox

    args: list[str] = []
    if resolution is not None:
        check_resolution(resolution)
        args += ["--resolution", repr(float(resolution))]
    if bbox is not None:
        parse_bbox(bbox)
        args += ["--bbox", bbox.strip()]
    if dtype:
        args += ["--dtype", dtype]
    return args


def mosaic_source(plan: Plan, source: str) -> str:
    """`--source auto` made concrete: the latest composites when the plan has some, else the per-scene outputs."""
    if source != "auto":
        return source
    return "composites" if latest_composite_family(plan) is not None else "scenes"


def scenes_missing(plan: Plan, outputs: Outputs) -> str | None:
    """What a round over the per-scene outputs lacks (None: every scene has its output)."""
    n = plan.scene_count - len(outputs.scenes)
    return f"{n} of {plan.scene_count} scene(s) have no output yet" if n else None


def mosaic_inputs_missing(plan: Plan, outputs: Outputs, source: str) -> str | None:
    """What a mosaic round over `source` (scenes, composites or auto) lacks (None: nothing, or no composite round,
    which plan_mosaic reports)."""
    if mosaic_source(plan, source) == "scenes":
        return scenes_missing(plan, outputs)
    family = latest_composite_family(plan)
    if family is None:
        return None  # plan_mosaic says what to do
    wanted = [t for j in family.jobs for t in j.tiles]
    n = len(set(wanted) - set(composite_done(plan, outputs, family)))
    return (
        f"{n} of {len(wanted)} tile(s) of composite round {family.round} have no composite yet" if n else None
    )


def retry_round(
    plan: Plan, outputs: Outputs, todo: ProductResume, jobs: int | None, created: str
) -> tuple[Plan, ProductRound, dict[str, list[Any]]]:
    """`resume`'s retry of `todo.original` (same args): its missing tiles in `jobs` jobs [default: as many as the
    original's] for composites, the mosaic again (same source) for a mosaic."""
    original = todo.original
    if todo.kind == "composite":
        return plan_composites(
            plan, outputs, original.args, jobs or len(original.jobs), created, tiles=todo.missing,
            retry_of=original.round,
        )  # fmt: skip
    return plan_mosaic(plan, outputs, original.source, original.args, created, retry_of=original.round)
