"""The plan: scenes sharded into ManifestFile jobs. Pure: item dicts in, a `Plan` (and manifests) out.

`plan.json` is the launcher's central record. `Plan.from_dict` rejects unknown keys (a typo in a hand-edited plan
is an error, not a silently ignored setting).

S3 layout of a run under `s3_prefix` (`s3://bucket/prefix/<run_id>/`):
    plan.json                      the plan
    manifests/r<round>-<index>.json one ManifestFile per job
    items/r<round>-<job>-<k>.jsonl item JSONs that live in no bucket (or with --copy-items), in batches: JSON Lines
                                   of at most MAX_ITEMS_PER_BATCH items, a multiple of the job's instances per job
    output/<job_name>/...          each job's Continuous output (per-host reports need per-job folders)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from launcher.aws import is_job_name, is_s3_uri
from launcher.errors import ArgumentError, PlanError
from launcher.ndvi.items import item_location, mgrs_tile
from launcher.secrets import ENV_NAME_PATTERN, is_secret
from ndvi_worker.stac import ItemError, validate_item_id  # the worker's id rule: one rule for both

PLAN_VERSION = 1
RUN_ID_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,47}$")
MAX_RUN_ID = 48  # job names are <run_id>-r<round>-<index>, at most 63 characters
# One full scene per instance in the steady state of a shard (two scenes in flight), over a 30 ms / 60 MB/s S3-like
# link: `make bench-worker` (its --shard run) on 2 vCPUs, 3.95 s on 2026-12-02 (a quiet machine; 4.95-5.33 s in runs
# that shared it), taken as an ml.m5.xlarge's (4 vCPUs = 2 cores with hyper-threading, counted as no faster: the
# conservative reading). README "The reference run"; docs/performance-worker.md.
DEFAULT_SECONDS_PER_SCENE = 4.0
MAX_SECONDS_PER_SCENE = 86400.0  # a day per scene: beyond, the estimate overflows (inf in plan.json)
DEFAULT_STARTUP_SECONDS = 180.0  # provisioning + image pull + manifest download, per job
DEADLINE_SECONDS = 20 * 60.0  # the reference run's target: the whole planet in under 20 minutes
# Copied item JSONs are written in batches, JSON Lines of one item per line (the worker reads them as it reads single
# items): one object per item made planning the reference run 8,581 PUTs (150 s against a local S3 server), batched
# it is about 500. A job's batches are a multiple of its instances (ShardedByS3Key hands each instance about 1/n of
# the objects), each at most this many items, so an instance's share stays even.
MAX_ITEMS_PER_BATCH = 64
BATCH_SUFFIX = ".jsonl"
# Approximate on-demand prices (USD per instance-hour) of SageMaker Processing in us-east-1. An estimate only:
# pass --price-per-hour for your region and agreement.
PRICES_USD_PER_HOUR = {
    "ml.t3.medium": 0.05,
    "ml.t3.large": 0.10,
    "ml.t3.xlarge": 0.20,
    "ml.m5.large": 0.115,
    "ml.m5.xlarge": 0.23,
    "ml.m5.2xlarge": 0.461,
    "ml.m5.4xlarge": 0.922,
    "ml.m5.12xlarge": 2.765,
    "ml.c5.xlarge": 0.204,
    "ml.c5.2xlarge": 0.408,
    "ml.c5.4xlarge": 0.816,
    "ml.r5.large": 0.151,
    "ml.r5.xlarge": 0.302,
    "ml.r5.2xlarge": 0.605,
}

T = TypeVar("T")


def check_item_id(item_id: object) -> str | None:
    """Why an item id cannot be used (it names S3 keys and files), or None when it is safe (the worker's rule)."""
    try:
        validate_item_id(item_id)
    except ItemError as exc:
        return str(exc)
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def _got(value: Any) -> str:
    return "null" if value is None else f"{_kind(value)} {_show(value)}"


def _typed(value: Any, hint: Any, where: str) -> Any:
    """`value` checked against a type hint (str, int, float, bool, X | None, tuple[X, ...], dict[str, X], a plan
    dataclass); lists become tuples. Raises PlanError naming the key path."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise PlanError(f"{where}: must not be null")
        inner = [o for o in options if o is not type(None)]
        return _typed(value, inner[0], where)
    if hint is Any:
        return value
    if hint is str:
        if not isinstance(value, str):
            raise PlanError(f"{where}: expected a string, got {_got(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise PlanError(f"{where}: expected true or false, got {_got(value)}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise PlanError(f"{where}: expected an integer, got {_got(value)}")
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise PlanError(f"{where}: expected a finite number, got {_got(value)}")
        return float(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise PlanError(f"{where}: expected a list, got {_got(value)}")
        item_hint = typing.get_args(hint)[0]
        return tuple(_typed(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise PlanError(f"{where}: expected an object, got {_got(value)}")
        value_hint = typing.get_args(hint)[1]
        return {k: _typed(v, value_hint, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return hint.from_dict(value, where)
    raise TypeError(f"unsupported type hint {hint!r}")  # pragma: no cover - a programming error


def _typed_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """The keys of `data` checked (no unknown, none missing) and their values type-checked against `cls`."""
    _check_keys(cls, data, where)
    hints = typing.get_type_hints(cls)
    return {key: _typed(value, hints[key], f"{where}.{key}") for key, value in data.items()}


def _check_s3(value: str, where: str) -> None:
    if not is_s3_uri(value):
        raise PlanError(f"{where}: expected an s3://bucket/key URI, got {_show(value)}")


def _check_range(value: float, lo: float, hi: float, where: str) -> None:
    if not lo <= value <= hi:
        raise PlanError(f"{where}: must be within {lo:g}..{hi:g}, got {_show(value)}")


# --------------------------------------------------------------------------------------------------- model


def _check_keys(cls: type, data: dict[str, Any], where: str, derived: tuple[str, ...] = ()) -> None:
    if not isinstance(data, dict):
        raise PlanError(f"{where}: expected an object, got {_got(data)}")
    names = {f.name for f in dataclasses.fields(cls)} | set(derived)
    unknown = sorted(map(str, set(data) - names))
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(data))
    if missing:
        raise PlanError(f"{where}: missing key(s) {', '.join(missing)}")


@dataclass(frozen=True)
class SceneRef:
    """One scene of a job: the item id and the S3 URI of its item JSON."""

    item_id: str
    uri: str
    tile: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "uri": self.uri, "tile": self.tile}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "scene") -> SceneRef:
        values = _typed_fields(cls, data, where)
        why = check_item_id(values["item_id"])
        if why:
            raise PlanError(f"{where}.item_id: {why}")
        _check_s3(values["uri"], f"{where}.uri")
        return cls(**values)


@dataclass(frozen=True)
class JobPlan:
    """One Processing job: its manifest and scenes."""

    name: str
    round: int
    index: int
    manifest_uri: str
    instance_count: int
    scenes: tuple[SceneRef, ...]

    @property
    def scene_count(self) -> int:
        return len(self.scenes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "round": self.round,
            "index": self.index,
            "manifest_uri": self.manifest_uri,
            "instance_count": self.instance_count,
            "scene_count": self.scene_count,
            "scenes": [s.to_dict() for s in self.scenes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "job") -> JobPlan:
        _check_keys(cls, data, where, derived=("scene_count",))
        data = dict(data)
        count = data.pop("scene_count", None)  # derived, written for humans
        values = _typed_fields(cls, data, where)
        if count is not None and count != len(values["scenes"]):
            raise PlanError(
                f"{where}: scene_count {_show(count)} does not match its {len(values['scenes'])} scenes"
            )
        if not is_job_name(values["name"]):
            raise PlanError(
                f"{where}.name: {_show(values['name'])} is not a Processing job name (1-63 letters, digits, hyphens)"
            )
        _check_range(values["round"], 0, 10**6, f"{where}.round")
        _check_range(values["index"], 0, 10**6, f"{where}.index")
        _check_range(values["instance_count"], 1, 100, f"{where}.instance_count")
        _check_s3(values["manifest_uri"], f"{where}.manifest_uri")
        if not values["scenes"]:
            raise PlanError(f"{where}.scenes: a job has at least one scene")
        return cls(**values)


@dataclass(frozen=True)
class Estimate:
    instance_hours: float
    cost_usd: float
    wall_hours: float
    price_per_hour: float
    seconds_per_scene: float
    startup_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "estimate") -> Estimate:
        values = _typed_fields(cls, data, where)
        for key, value in values.items():
            _check_range(value, 0, math.inf, f"{where}.{key}")
        return cls(**values)


@dataclass(frozen=True)
class Submission:
    """How the jobs are submitted (recorded by `submit`, reused by `resume`)."""

    image: str
    role: str
    instance_type: str = "ml.m5.xlarge"
    volume_gb: int = 30
    max_runtime_seconds: int = 3 * 3600
    environment: dict[str, str] = field(default_factory=dict)
    worker_args: tuple[str, ...] = ()
    # variables whose values come from the caller's environment at submit/local time (secrets): names only,
    # their values are never written to plan.json
    env_from_caller: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["worker_args"] = list(self.worker_args)
        d["env_from_caller"] = list(self.env_from_caller)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "submission") -> Submission:
        values = _typed_fields(cls, data, where)
        for key in [*values.get("environment", {}), *values.get("env_from_caller", ())]:
            if not ENV_NAME_PATTERN.fullmatch(key):
                raise PlanError(f"{where}: {_show(key)} is not an environment variable name")
        stored = sorted(k for k in values.get("environment", {}) if is_secret(k))
        if stored:
            raise PlanError(
                f"{where}.environment: {', '.join(stored)} look(s) like secrets, whose values a plan never holds: "
                "move the name(s) to env_from_caller and export the value(s) where you run the launcher"
            )
        return cls(**values)


PRODUCT_KINDS = ("composite", "mosaic")
PRODUCT_SOURCES = ("scenes", "composites")
_PRODUCT_LETTER = {"composite": "c", "mosaic": "m"}


@dataclass(frozen=True)
class ProductJob:
    """One stage-2 Processing job (a composite or the mosaic): one instance over one ManifestFile that lists every
    input it needs (for a composite job, every date of each of its tiles; see launcher/ndvi/products.py)."""

    name: str
    index: int
    manifest_uri: str
    tiles: tuple[str, ...]
    objects: int
    input_bytes: int
    volume_gb: int

    instance_count = 1  # the inputs are not split: FullyReplicated on one instance

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tiles"] = list(self.tiles)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "product job") -> ProductJob:
        values = _typed_fields(cls, data, where)
        if not is_job_name(values["name"]):
            raise PlanError(
                f"{where}.name: {_show(values['name'])} is not a Processing job name (1-63 letters, digits, hyphens)"
            )
        _check_range(values["index"], 0, 10**6, f"{where}.index")
        _check_s3(values["manifest_uri"], f"{where}.manifest_uri")
        _check_range(values["objects"], 1, 10**8, f"{where}.objects")
        _check_range(values["input_bytes"], 0, 2**62, f"{where}.input_bytes")
        _check_range(values["volume_gb"], 1, 16384, f"{where}.volume_gb")
        for i, tile in enumerate(values["tiles"]):
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", tile):
                raise PlanError(f"{where}.tiles[{i}]: {_show(tile)} is not a tile name")
        return cls(**values)


@dataclass(frozen=True)
class ProductRound:
    """A stage-2 round: composites (`kind` composite, one job per tile group) or the mosaic (one job), built from
    the per-scene outputs (`source` scenes) or from composite rounds (`source` composites). `args` are the
    worker command's options after `--input`/`--output` (e.g. `--method max --period ...`); `retry_of` names the
    round a `resume` retry repeats (with the same args, for its missing tiles only)."""

    kind: str
    round: int
    created: str
    source: str
    args: tuple[str, ...]
    jobs: tuple[ProductJob, ...]
    retry_of: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "round": self.round,
            "created": self.created,
            "source": self.source,
            "args": list(self.args),
            "retry_of": self.retry_of,
            "jobs": [j.to_dict() for j in self.jobs],
        }

    @property
    def family(self) -> int:
        """The round this one repeats (itself when it is an original)."""
        return self.round if self.retry_of is None else self.retry_of

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "product round") -> ProductRound:
        values = _typed_fields(cls, data, where)
        if values["kind"] not in PRODUCT_KINDS:
            raise PlanError(
                f"{where}.kind: expected one of {', '.join(PRODUCT_KINDS)}, got {_show(values['kind'])}"
            )
        if values["source"] not in PRODUCT_SOURCES:
            raise PlanError(
                f"{where}.source: expected one of {', '.join(PRODUCT_SOURCES)}, got {_show(values['source'])}"
            )
        if values["kind"] == "composite" and values["source"] != "scenes":
            raise PlanError(f"{where}.source: composites are made from scenes, got {_show(values['source'])}")
        _check_range(values["round"], 0, 999, f"{where}.round")
        if values["retry_of"] is not None and not 0 <= values["retry_of"] < values["round"]:
            raise PlanError(f"{where}.retry_of: must name an earlier round, got {_show(values['retry_of'])}")
        for i, arg in enumerate(values["args"]):
            if not 1 <= len(arg) <= 256 or any(ord(c) < 32 for c in arg):
                raise PlanError(
                    f"{where}.args[{i}]: {_show(arg)} is not a container argument (1-256 characters)"
                )
        if not values["jobs"]:
            raise PlanError(f"{where}.jobs: a round has at least one job")
        if values["kind"] == "mosaic" and len(values["jobs"]) != 1:
            raise PlanError(f"{where}.jobs: a mosaic round has exactly one job, got {len(values['jobs'])}")
        return cls(**values)


def product_job_name(run_id: str, kind: str, round_: int, index: int) -> str:
    """`<run_id>-c<round>-<index>` (composites) or `<run_id>-m<round>-000` (the mosaic): never an NDVI job's name."""
    return f"{run_id}-{_PRODUCT_LETTER[kind]}{round_}-{index:03d}"


@dataclass(frozen=True)
class Plan:
    run_id: str
    created: str
    s3_prefix: str
    output_prefix: str
    instance_type: str
    instances_per_job: int
    jobs: tuple[JobPlan, ...]
    estimate: Estimate
    dedupe: str | None = None
    submission: Submission | None = None
    products: tuple[ProductRound, ...] = ()
    version: int = PLAN_VERSION

    @property
    def scene_count(self) -> int:
        return len({s.item_id for j in self.jobs for s in j.scenes})

    @property
    def rounds(self) -> list[int]:
        return sorted({j.round for j in self.jobs})

    def jobs_of_round(self, round_: int) -> list[JobPlan]:
        return [j for j in self.jobs if j.round == round_]

    def scenes(self) -> dict[str, SceneRef]:
        """Every scene of the plan by item id (a scene planned in several rounds appears once)."""
        out: dict[str, SceneRef] = {}
        for job in self.jobs:
            for s in job.scenes:
                out.setdefault(s.item_id, s)
        return out

    def latest_scenes(self) -> dict[str, SceneRef]:
        """Every scene of the plan by item id, as the latest round that planned it names it (its item JSON where
        that round's job read it: a copied item is in a new batch each round, and a fix goes into the latest)."""
        out: dict[str, SceneRef] = {}
        for job in sorted(self.jobs, key=lambda j: (j.round, j.index)):
            for s in job.scenes:
                out[s.item_id] = s
        return out

    def job_output_uri(self, job: JobPlan | ProductJob) -> str:
        return f"{self.output_prefix.rstrip('/')}/{job.name}/"

    def product_rounds(self, kind: str) -> list[ProductRound]:
        return [r for r in self.products if r.kind == kind]

    def product_job(self, name: str) -> tuple[ProductRound, ProductJob] | None:
        for round_ in self.products:
            for job in round_.jobs:
                if job.name == name:
                    return round_, job
        return None

    def to_dict(self) -> dict[str, Any]:
        d = self._to_dict()
        if self.products:  # stage 2 (launcher/ndvi/products.py); a plan without it reads as before
            d["summary"]["product_jobs"] = sum(len(r.jobs) for r in self.products)
            d["products"] = [r.to_dict() for r in self.products]
        return d

    def _to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "run_id": self.run_id,
            "created": self.created,
            "s3_prefix": self.s3_prefix,
            "output_prefix": self.output_prefix,
            "instance_type": self.instance_type,
            "instances_per_job": self.instances_per_job,
            "dedupe": self.dedupe,
            "estimate": self.estimate.to_dict(),
            "submission": self.submission.to_dict() if self.submission else None,
            "summary": {
                "jobs": len(self.jobs),
                "scenes": self.scene_count,
                "rounds": self.rounds,
            },
            "jobs": [j.to_dict() for j in self.jobs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """A plan read from JSON: keys and value types checked (PlanError with the key path, never another
        exception), then the values that name things (run id, job names, item ids, S3 URIs)."""
        _check_keys(cls, data, "plan", derived=("summary",))
        data = dict(data)
        data.pop("summary", None)  # derived, written for humans
        if data.get("version") != PLAN_VERSION:
            raise PlanError(
                f"plan version {_show(data.get('version'))} is not supported (this launcher reads {PLAN_VERSION})"
            )
        values = _typed_fields(cls, data, "plan")
        if not RUN_ID_PATTERN.fullmatch(values["run_id"]):
            raise PlanError(f"plan.run_id: {_show(values['run_id'])} is not a valid run id")
        _check_s3(values["s3_prefix"], "plan.s3_prefix")
        _check_s3(values["output_prefix"], "plan.output_prefix")
        _check_range(values["instances_per_job"], 1, 100, "plan.instances_per_job")
        if not values["jobs"]:
            raise PlanError("plan.jobs: a plan has at least one job")
        names: set[str] = set()
        for i, job in enumerate(values["jobs"]):
            if job.name != job_name(values["run_id"], job.round, job.index):
                raise PlanError(
                    f"plan.jobs[{i}].name: {_show(job.name)} is not {job_name(values['run_id'], job.round, job.index)}"
                    " (<run_id>-r<round>-<index>)"
                )
            if job.name in names:
                raise PlanError(f"plan.jobs[{i}].name: {job.name} is listed twice")
            names.add(job.name)
        rounds: set[tuple[str, int]] = set()
        for i, product in enumerate(values.get("products", ())):
            if (product.kind, product.round) in rounds:
                raise PlanError(f"plan.products[{i}]: {product.kind} round {product.round} is listed twice")
            rounds.add((product.kind, product.round))
            if product.retry_of is not None and (product.kind, product.retry_of) not in rounds:
                raise PlanError(
                    f"plan.products[{i}].retry_of: no earlier {product.kind} round {product.retry_of}"
                )
            for k, job in enumerate(product.jobs):
                expected = product_job_name(values["run_id"], product.kind, product.round, job.index)
                if job.name != expected:
                    raise PlanError(
                        f"plan.products[{i}].jobs[{k}].name: {_show(job.name)} is not {expected} "
                        "(<run_id>-c<round>-<index> for composites, <run_id>-m<round>-000 for the mosaic)"
                    )
                if job.name in names:
                    raise PlanError(f"plan.products[{i}].jobs[{k}].name: {job.name} is listed twice")
                names.add(job.name)
        return cls(**values)


# ---------------------------------------------------------------------------------------------- pure logic


def shard(items: Sequence[T], n: int) -> list[list[T]]:
    """Round-robin `items` into `n` shards: item i goes to shard i % n.

    Every item lands in exactly one shard, shard sizes differ by at most one, the result depends only on the
    order of `items`, and no shard is empty unless there are fewer items than shards.
    """
    if n < 1:
        raise ValueError(f"number of shards must be >= 1, got {n}")
    return [list(items[i::n]) for i in range(n)]


def common_prefix(uris: Sequence[str]) -> str:
    """The deepest common folder (`s3://bucket/dir/`) of S3 URIs in one bucket."""
    if not uris:
        raise ValueError("no URIs")
    buckets = {u[5:].split("/", 1)[0] for u in uris}
    if len(buckets) != 1:
        raise ValueError(f"URIs span several buckets: {', '.join(sorted(buckets))}")
    folders = [u.rsplit("/", 1)[0].split("/") for u in uris]
    first = folders[0]
    depth = len(first)
    for parts in folders[1:]:
        depth = min(depth, len(parts))
        for i in range(depth):
            if parts[i] != first[i]:
                depth = i
                break
    # keep at least "s3:", "", "bucket"
    depth = max(depth, 3)
    return "/".join(first[:depth]) + "/"


def build_manifest(uris: Sequence[str]) -> list[Any]:
    """A ManifestFile: `[{"prefix": "s3://bucket/dir/"}, "rel/key", ...]` (keys relative to the prefix)."""
    prefix = common_prefix(uris)
    return [{"prefix": prefix}, *[u[len(prefix) :] for u in uris]]


def manifest_uris(manifest: Sequence[Any]) -> list[str]:
    """The S3 URIs listed by a ManifestFile (inverse of `build_manifest`)."""
    if not manifest or not isinstance(manifest[0], dict) or "prefix" not in manifest[0]:
        raise ValueError('a ManifestFile starts with {"prefix": "s3://..."}')
    prefix = manifest[0]["prefix"]
    return [prefix + key for key in manifest[1:]]


def job_name(run_id: str, round_: int, index: int) -> str:
    return f"{run_id}-r{round_}-{index:03d}"


def default_run_id(items: Sequence[dict[str, Any]], now: dt.datetime | None = None) -> str:
    """`ndvi-<UTC time>-<hash of the item ids>`: a new id per planning, the same hash for the same items."""
    digest = hashlib.sha1("\n".join(sorted(str(i["id"]) for i in items)).encode()).hexdigest()[:6]
    return f"ndvi-{(now or dt.datetime.now(dt.UTC)):%Y%m%d-%H%M}-{digest}"


def validate_run_id(run_id: str) -> None:
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise ArgumentError(
            f"run id {run_id!r} is not valid: 1-{MAX_RUN_ID} characters, letters, digits and hyphens, starting and "
            "ending with a letter or digit (it prefixes the Processing job names, at most 63 characters)"
        )


def scene_refs(
    items: Sequence[dict[str, Any]], copy_items: bool | None = None
) -> tuple[list[SceneRef], bool]:
    """Each item's `SceneRef`, and whether the items must be copied under the run's prefix.

    Items are referenced where they live when they all live in one bucket; otherwise (or with `copy_items=True`)
    they are copied, because a ManifestFile lists keys of one bucket. A copied item's ref has no URI yet (""):
    `make_jobs` gives it its batch's.
    """
    locations = [item_location(item) for item in items]
    buckets = {loc.bucket for loc in locations if loc is not None}
    in_place = copy_items is not True and all(loc is not None for loc in locations) and len(buckets) == 1
    if copy_items is False and not in_place:
        raise ArgumentError(
            "the items do not all live in one bucket, so they must be copied: drop --no-copy-items "
            f"(buckets: {', '.join(sorted(buckets)) or 'none'})"
        )
    refs: list[SceneRef] = []
    seen: set[str] = set()
    for item, loc in zip(items, locations, strict=True):
        item_id = item.get("id")
        why = check_item_id(item_id)
        if why:  # callers leave such items out first (`safe_items`); never build a key or path from one
            raise PlanError(why)
        assert isinstance(item_id, str)
        if item_id in seen:
            raise PlanError(
                f"item {item_id} is listed twice: deduplicate the items first (launcher search does)"
            )
        seen.add(item_id)
        uri = loc.uri if in_place and loc is not None else ""
        refs.append(SceneRef(item_id=item_id, uri=uri, tile=mgrs_tile(item)))
    return refs, not in_place


def batch_sizes(scenes: int, instances: int) -> list[int]:
    """How many items each batch object of a job holds, in order: a multiple of `instances` batches (at most one
    per scene), each of at most MAX_ITEMS_PER_BATCH items, sizes differing by at most one."""
    if scenes < 1 or instances < 1:
        raise ValueError(f"a job has at least one scene and one instance, got {scenes} and {instances}")
    per_instance = math.ceil(scenes / instances)
    return even_split(scenes, min(scenes, instances * math.ceil(per_instance / MAX_ITEMS_PER_BATCH)))


def batch_uri(items_prefix: str, round_: int, index: int, k: int) -> str:
    return f"{items_prefix.rstrip('/')}/r{round_}-{index:03d}-{k:04d}{BATCH_SUFFIX}"


def is_copied(uri: str, items_prefix: str) -> bool:
    """A scene whose item JSON the run wrote under its `items/` prefix (a batch, or one item per object as plans
    before batches did)."""
    return uri.startswith(items_prefix.rstrip("/") + "/")


def safe_items(items: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The items whose id is safe to plan (the worker's rule: ids name S3 keys and files), and one line per
    item left out saying why."""
    kept: list[dict[str, Any]] = []
    rejected: list[str] = []
    for item in items:
        why = check_item_id(item.get("id"))
        if why:
            rejected.append(why)
        else:
            kept.append(item)
    return kept, rejected


def estimate(
    scene_counts_and_instances: Sequence[tuple[int, int]],
    price_per_hour: float,
    seconds_per_scene: float = DEFAULT_SECONDS_PER_SCENE,
    startup_seconds: float = DEFAULT_STARTUP_SECONDS,
) -> Estimate:
    """Instance-hours, cost and wall time when all jobs run at once. Each instance of a job gets about
    scenes/instances scenes; a job lasts as long as its busiest instance, and every instance is billed for it."""
    instance_hours = 0.0
    wall = 0.0
    for scenes, instances in scene_counts_and_instances:
        if scenes == 0 or instances == 0:
            continue
        seconds = startup_seconds + math.ceil(scenes / instances) * seconds_per_scene
        instance_hours += instances * seconds / 3600
        wall = max(wall, seconds / 3600)
    return Estimate(
        instance_hours=round(instance_hours, 3),
        cost_usd=round(instance_hours * price_per_hour, 2),
        wall_hours=round(wall, 3),
        price_per_hour=price_per_hour,
        seconds_per_scene=seconds_per_scene,
        startup_seconds=startup_seconds,
    )


def fewest_instances(
    scenes: int,
    seconds_per_scene: float,
    deadline_seconds: float,
    startup_seconds: float = DEFAULT_STARTUP_SECONDS,
) -> int | None:
    """The fewest instances that finish ``scenes`` within ``deadline_seconds``, start-up included, each taking an
    equal share (the busiest one has ceil(scenes / instances)); None when even one scene per instance misses the
    deadline. Fewer instances bill fewer start-ups: this is also the cheapest count that meets the deadline."""
    if not (seconds_per_scene > 0 and math.isfinite(seconds_per_scene)):
        raise ArgumentError(f"seconds per scene must be a positive number, got {seconds_per_scene}")
    if scenes <= 0:
        return 0
    # scenes that fit before the deadline (the epsilon keeps 1020 / 5.1 = 199.99999... at 200)
    per_instance = math.floor((deadline_seconds - startup_seconds) / seconds_per_scene + 1e-9)
    if per_instance < 1:
        return None
    return math.ceil(scenes / per_instance)


def layout_for(instances: int, instances_per_job: int) -> tuple[int, int]:
    """(jobs, instances per job) for at least ``instances`` instances in jobs of at most ``instances_per_job``,
    as even as possible (the fewest jobs, then the fewest instances each)."""
    jobs = max(1, math.ceil(instances / max(1, instances_per_job)))
    return jobs, max(1, math.ceil(instances / jobs))


def even_split(scenes: int, jobs: int) -> list[int]:
    """The scene counts of ``jobs`` jobs sharing ``scenes`` (sizes within one, as `make_jobs` splits them)."""
    return [scenes // jobs + (1 if k < scenes % jobs else 0) for k in range(jobs)]


def price_for(instance_type: str, override: float | None = None) -> float:
    if override is not None:
        return override
    check_instance_type(instance_type)
    try:
        return PRICES_USD_PER_HOUR[instance_type]
    except KeyError:
        raise ArgumentError(
            f"no price known for {instance_type}: pass --price-per-hour (USD per instance-hour) for the estimate"
        ) from None


INSTANCE_TYPE_PATTERN = re.compile(r"ml\.[a-z0-9]+\.[a-z0-9]+")


def check_instance_type(instance_type: str) -> None:
    """SageMaker instance types start with `ml.` (`m5.xlarge` is EC2's name): say so instead of failing later."""
    if INSTANCE_TYPE_PATTERN.fullmatch(instance_type):
        return
    hint = (
        f" (did you mean ml.{instance_type}?)" if re.fullmatch(r"[a-z0-9]+\.[a-z0-9]+", instance_type) else ""
    )
    raise ArgumentError(
        f"--instance-type {_show(instance_type)} is not a SageMaker instance type{hint}: they look like ml.m5.xlarge"
    )


def order_scenes(refs: Sequence[SceneRef]) -> list[SceneRef]:
    """The canonical order sharding starts from: by tile, then item id (independent of search page order)."""
    return sorted(refs, key=lambda s: (s.tile or "~", s.item_id))


def make_jobs(
    refs: Sequence[SceneRef],
    run_id: str,
    round_: int,
    jobs: int,
    instances_per_job: int,
    manifest_prefix: str,
    items_prefix: str | None = None,
) -> tuple[list[JobPlan], dict[str, list[Any]], dict[str, tuple[str, ...]]]:
    """Shard scenes into at most `jobs` non-empty jobs and build their manifests (uri -> manifest).

    With `items_prefix`, the scenes' items are copied there in batches (`batch_sizes`): every ref's URI becomes its
    batch's, and the third value maps each batch URI to its item ids, in order (empty without `items_prefix`).
    """
    if jobs < 1:
        raise ArgumentError(f"--jobs must be >= 1, got {jobs}")
    if not 1 <= instances_per_job <= 100:
        raise ArgumentError(
            f"--instances-per-job must be within 1..100 (the API's limit), got {instances_per_job}"
        )
    if not refs:
        raise PlanError("no scenes to plan")
    ordered = order_scenes(refs)
    shards = [s for s in shard(ordered, min(jobs, len(ordered))) if s]
    job_plans: list[JobPlan] = []
    manifests: dict[str, list[Any]] = {}
    batches: dict[str, tuple[str, ...]] = {}
    base = manifest_prefix.rstrip("/")
    for index, scenes in enumerate(shards):
        uri = f"{base}/r{round_}-{index:03d}.json"
        instances = min(instances_per_job, len(scenes))
        if items_prefix is not None:
            placed: list[SceneRef] = []
            for k, size in enumerate(batch_sizes(len(scenes), instances)):
                batch = batch_uri(items_prefix, round_, index, k)
                members = scenes[len(placed) : len(placed) + size]
                batches[batch] = tuple(s.item_id for s in members)
                placed.extend(dataclasses.replace(s, uri=batch) for s in members)
            scenes = placed
        listed = list(dict.fromkeys(s.uri for s in scenes))  # a batch once, in order
        manifests[uri] = build_manifest(listed)
        job_plans.append(
            JobPlan(
                name=job_name(run_id, round_, index),
                round=round_,
                index=index,
                manifest_uri=uri,
                instance_count=instances,
                scenes=tuple(scenes),
            )
        )
    return job_plans, manifests, batches


def run_paths(s3_prefix: str, run_id: str) -> dict[str, str]:
    base = f"{s3_prefix.rstrip('/')}/{run_id}"
    return {
        "base": base + "/",
        "plan": f"{base}/plan.json",
        "manifests": f"{base}/manifests/",
        "items": f"{base}/items/",
        "output": f"{base}/output/",
    }


def make_plan(
    items: Sequence[dict[str, Any]],
    *,
    run_id: str,
    created: str,
    s3_prefix: str,
    jobs: int,
    instances_per_job: int,
    instance_type: str = "ml.m5.xlarge",
    price_per_hour: float | None = None,
    seconds_per_scene: float = DEFAULT_SECONDS_PER_SCENE,
    startup_seconds: float = DEFAULT_STARTUP_SECONDS,
    copy_items: bool | None = None,
    dedupe: str | None = None,
) -> tuple[Plan, dict[str, list[Any]], dict[str, list[dict[str, Any]]]]:
    """Plan items into jobs. Returns the plan, the manifests to upload (uri -> manifest) and the item batches to
    write under the run's `items/` prefix first (batch uri -> its items, in order; empty when referenced in
    place)."""
    validate_run_id(run_id)
    price = price_for(instance_type, price_per_hour)
    bucket = s3_prefix[5:].split("/", 1)[0] if s3_prefix.startswith("s3://") else ""
    if not bucket or any(c.isspace() for c in s3_prefix) or ".." in s3_prefix.split("/"):
        raise ArgumentError(f"--s3-prefix must be an s3://bucket/prefix URI, got {s3_prefix!r}")
    if not (0 < seconds_per_scene <= MAX_SECONDS_PER_SCENE):
        raise ArgumentError(
            f"--seconds-per-scene must be a number of seconds from 0 to {MAX_SECONDS_PER_SCENE:.0f} (one day), "
            f"got {seconds_per_scene}"
        )
    if price_per_hour is not None and not (price_per_hour >= 0 and math.isfinite(price_per_hour)):
        raise ArgumentError(f"--price-per-hour must be a number >= 0, got {price_per_hour}")
    paths = run_paths(s3_prefix, run_id)
    refs, copied = scene_refs(items, copy_items)
    job_plans, manifests, batches = make_jobs(
        refs, run_id, 0, jobs, instances_per_job, paths["manifests"], paths["items"] if copied else None
    )
    by_id = {str(item["id"]): item for item in items}
    to_write = {uri: [by_id[i] for i in ids] for uri, ids in batches.items()}
    est = estimate(
        [(j.scene_count, j.instance_count) for j in job_plans], price, seconds_per_scene, startup_seconds
    )
    plan = Plan(
        run_id=run_id,
        created=created,
        s3_prefix=paths["base"],
        output_prefix=paths["output"],
        instance_type=instance_type,
        instances_per_job=instances_per_job,
        jobs=tuple(job_plans),
        estimate=est,
        dedupe=dedupe,
    )
    return plan, manifests, to_write


def add_round(
    plan: Plan, scenes: Sequence[SceneRef], jobs: int | None = None
) -> tuple[Plan, list[JobPlan], dict[str, list[Any]], dict[str, tuple[str, ...]]]:
    """A new round of jobs for `scenes` (resume). Jobs default to as many as keep the first round's scenes per
    job. Returns the extended plan, the new jobs, their manifests and, when the run copied its items, the new
    round's batches (batch uri -> item ids): the caller writes them from the scenes' earlier batches first."""
    if not scenes:
        raise PlanError("no scenes to plan in a new round")
    round_ = max(plan.rounds, default=-1) + 1
    if jobs is None:
        first = plan.jobs_of_round(min(plan.rounds)) if plan.jobs else []
        per_job = max(1, math.ceil(sum(j.scene_count for j in first) / max(1, len(first))))
        jobs = max(1, math.ceil(len(scenes) / per_job))
    name_check = job_name(plan.run_id, round_, max(jobs, 1) - 1)
    if len(name_check) > 63:
        raise PlanError(
            f"job name {name_check} would exceed 63 characters: too many rounds for run {plan.run_id}"
        )
    base = plan.s3_prefix.rstrip("/")
    items_prefix = f"{base}/items/"
    copied = [is_copied(s.uri, items_prefix) for s in scenes]
    if any(copied) and not all(copied):
        raise PlanError(
            "the scenes to resume are partly copied under the run's items/ and partly referenced in place: "
            "a plan does not mix the two; plan the missing scenes as a new run"
        )
    new_jobs, manifests, batches = make_jobs(
        scenes, plan.run_id, round_, jobs, plan.instances_per_job, f"{base}/manifests/",
        items_prefix if all(copied) else None,
    )  # fmt: skip
    all_jobs = (*plan.jobs, *new_jobs)
    est = estimate(
        [(j.scene_count, j.instance_count) for j in all_jobs],
        plan.estimate.price_per_hour,
        plan.estimate.seconds_per_scene,
        plan.estimate.startup_seconds,
    )
    return dataclasses.replace(plan, jobs=all_jobs, estimate=est), new_jobs, manifests, batches
