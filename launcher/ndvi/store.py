"""I/O edge for plans: read/write plan.json, upload manifests and item JSONs, list outputs and reports."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from launcher.aws import S3Uri, get_json, list_objects, parse_s3_uri, put_json, short
from launcher.ndvi.paths import inside
from launcher.ndvi.plan import BATCH_SUFFIX, Plan, PlanError, SceneRef, is_copied
from launcher.ndvi.watch import done_item_ids, is_report_key

PLAN_FILE = "plan.json"


MAX_PLAN_BYTES = 512 * 1024 * 1024


def plan_file(path: str | os.PathLike[str]) -> Path:
    """The plan.json a `--plan` option names (a folder means its plan.json)."""
    p = Path(path)
    return p / PLAN_FILE if p.is_dir() else p


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """plan.json (or DIR/plan.json) read and type-checked: PlanError saying what is wrong, never another error."""
    p = Path(path)
    try:
        if p.is_dir():
            p = p / PLAN_FILE
        if p.stat().st_size > MAX_PLAN_BYTES:
            raise PlanError(f"{p} is larger than {MAX_PLAN_BYTES // 2**20} MB: not a plan")
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"no plan at {p}: run `launcher plan ... --out DIR` first") from None
    except json.JSONDecodeError as exc:
        raise PlanError(f"{p} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise PlanError(f"{p} is not a text file (plan.json is UTF-8 JSON)") from None
    except RecursionError:
        raise PlanError(f"{p} is nested too deeply to be a plan") from None
    except OSError as exc:
        raise PlanError(f"cannot read {p}: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. an integer too long to convert
        raise PlanError(f"{p} is not valid JSON ({exc})") from None
    try:
        return Plan.from_dict(data)
    except PlanError as exc:
        raise PlanError(f"{p}: {exc}") from None


def save_plan(plan: Plan, path: str | os.PathLike[str]) -> Path:
    """Write plan.json atomically (a crash never leaves half a plan)."""
    p = Path(path)
    if p.is_dir() or not p.suffix:
        p = p / PLAN_FILE
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".plan-", suffix=".json")
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; a plan is an ordinary file
    with os.fdopen(fd, "w") as f:
        json.dump(plan.to_dict(), f, indent=1)
        f.write("\n")
    os.replace(tmp, p)
    return p


def save_manifests(manifests: Mapping[str, list[Any]], directory: str | os.PathLike[str]) -> list[Path]:
    """Local copies of the manifests (DIR/manifests/<name>.json) for inspection and `local` runs."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    out = inside(directory, "manifests")
    out.mkdir(exist_ok=True)
    paths = []
    for uri, manifest in manifests.items():
        path = inside(out, uri.rsplit("/", 1)[-1])
        path.write_text(json.dumps(manifest, indent=0) + "\n")
        paths.append(path)
    return paths


#: A batch holds at most MAX_ITEMS_PER_BATCH items (~21 KB each from Earth Search); an object or file much larger
#: than that is not one of this run's batches, and is refused unread.
MAX_BATCH_BYTES = 32 * 2**20

# Line and paragraph separators that JSON allows unescaped in strings but line readers other than `readline` split
# at (Python's str.splitlines among them): written escaped. Their UTF-8 bytes occur only inside JSON strings.
_SEPARATORS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"), (b"\xc2\x85", b"\\u0085"))


def item_bytes(item: dict[str, Any]) -> bytes:
    """One item as compact UTF-8 JSON on one line. orjson writes the reference run's 179 MB of items in 0.3 s where
    `json.dumps` took 3-5 s; items read by `launcher plan` come from orjson already (integers beyond 64 bits read as
    floats, no NaN); an item orjson refuses (such an integer from elsewhere) goes through the standard library."""
    try:
        data = orjson.dumps(item)
    except orjson.JSONEncodeError:
        data = json.dumps(item, separators=(",", ":"), allow_nan=False).encode()
    for raw, escaped in _SEPARATORS:
        if raw in data:
            data = data.replace(raw, escaped)
    return data


def batch_bytes(items: Sequence[dict[str, Any]]) -> bytes:
    """A batch object: JSON Lines, one item per line (what the worker reads from `*.jsonl`)."""
    return b"".join(item_bytes(item) + b"\n" for item in items)


def object_bytes(uri: str, items: Sequence[dict[str, Any]]) -> bytes:
    """What the object at `uri` holds: a batch (JSON Lines), or one item JSON (`items/<id>.json` of plans made
    before batches)."""
    if uri.endswith(BATCH_SUFFIX):
        return batch_bytes(items)
    if len(items) != 1:
        raise PlanError(f"{uri} holds one item, not {len(items)}: plan the run again")
    return item_bytes(items[0])


def save_items(batches: Mapping[str, Sequence[dict[str, Any]]], directory: str | os.PathLike[str]) -> int:
    """Local copies of the item batches a run writes under its prefix (DIR/items/<batch>.jsonl), for `upload`
    after `plan --no-upload` (and again after `resume`). Returns the number of items. Names come from the plan;
    the paths are checked again here."""
    out = inside(directory, "items")
    out.mkdir(parents=True, exist_ok=True)
    for uri, items in batches.items():
        inside(out, uri.rsplit("/", 1)[-1]).write_bytes(object_bytes(uri, items))
    return sum(len(items) for items in batches.values())


def parse_batch(data: bytes, where: str, wanted: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The items `wanted` (ids) of a batch (JSON Lines) or of one item JSON (plans before batches), decoded by the
    worker's rules (strict JSON, size and depth capped): id -> item. PlanError naming `where` when it is not that:
    not UTF-8 JSON, an item listed twice, or one of `wanted` missing."""
    from ndvi_worker.discover import load_json

    again = "restore it or plan the run again"
    if len(data) > MAX_BATCH_BYTES:
        raise PlanError(f"{where} is larger than {MAX_BATCH_BYTES // 2**20} MB: not an item batch; {again}")
    chunks = data.split(b"\n") if where.endswith(BATCH_SUFFIX) else [data]
    found: dict[str, dict[str, Any]] = {}
    for n, chunk in enumerate(chunks, start=1):
        if not chunk.strip():
            continue
        try:
            doc = load_json(chunk.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise PlanError(f"{where} line {n} is not an item JSON ({short(str(exc))}); {again}") from None
        item_id = doc.get("id") if isinstance(doc, dict) else None
        if not isinstance(item_id, str):
            raise PlanError(f"{where} line {n} is not an item JSON (no string id); {again}")
        if item_id in found:
            raise PlanError(f"{where} lists item {item_id} twice; {again}")
        found[item_id] = doc
    missing = [i for i in wanted if i not in found]
    if missing:
        raise PlanError(f"{where} lacks item {missing[0]} of the plan; {again}")
    return {i: found[i] for i in wanted}


def local_run_files(
    plan: Plan, directory: str | os.PathLike[str]
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The manifests (uri -> manifest) and item batches (uri -> items) of a plan, read back from DIR/manifests and
    DIR/items (written by `plan --no-upload` and `resume`) for `launcher upload`."""
    manifests: dict[str, Any] = {}
    for job in plan.jobs:
        path = inside(directory, "manifests", job.manifest_uri.rsplit("/", 1)[-1])
        try:
            manifests[job.manifest_uri] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PlanError(
                f"cannot read the manifest of {job.name} at {path} ({exc}): plan the run again"
            ) from None
    batches: dict[str, list[dict[str, Any]]] = {}
    for uri, ids in copied_items(plan).items():
        path = inside(directory, "items", uri.rsplit("/", 1)[-1])
        try:
            with path.open("rb") as f:
                data = f.read(MAX_BATCH_BYTES + 1)
        except OSError as exc:
            raise PlanError(
                f"cannot read the item batch {path} ({exc.strerror or exc}): plan the run again"
            ) from None
        found = parse_batch(data, str(path), ids)
        batches[uri] = [found[i] for i in ids]
    return manifests, batches


def copied_items(plan: Plan) -> dict[str, list[str]]:
    """The objects the run wrote under its items/ prefix: uri -> item ids, in order, each once (plans made before
    batches list the same `items/<id>.json` in every round that planned the scene)."""
    items_prefix = plan.s3_prefix.rstrip("/") + "/items/"
    out: dict[str, dict[str, None]] = {}
    for job in plan.jobs:
        for scene in job.scenes:
            if is_copied(scene.uri, items_prefix):
                out.setdefault(scene.uri, {})[scene.item_id] = None
    return {uri: list(ids) for uri, ids in out.items()}


def fetch_items(s3: Any, scenes: Sequence[SceneRef]) -> dict[str, dict[str, Any]]:
    """The item JSONs of copied scenes, read back from the objects their refs name (to write a resume round's
    batches): id -> item. One GET per object, a few at a time; PlanError naming an object that is gone or is not
    what the run wrote."""
    from launcher.aws import is_not_found

    wanted: dict[str, list[str]] = {}
    for scene in scenes:
        wanted.setdefault(scene.uri, []).append(scene.item_id)
    found: dict[str, dict[str, Any]] = {}

    def get(uri: str) -> None:
        loc = parse_s3_uri(uri)
        try:
            obj = s3.get_object(Bucket=loc.bucket, Key=loc.key)
        except Exception as exc:
            if is_not_found(exc):
                raise PlanError(
                    f"{uri} is gone: the items of its scenes cannot be read back; restore it or plan the run again"
                ) from None
            raise
        if int(obj.get("ContentLength") or 0) > MAX_BATCH_BYTES:
            raise PlanError(
                f"{uri} is larger than {MAX_BATCH_BYTES // 2**20} MB: not an item batch of this run"
            )
        found.update(parse_batch(obj["Body"].read(MAX_BATCH_BYTES + 1), uri, wanted[uri]))

    _parallel(get, list(wanted), workers=8)
    return found


def _parallel(fn: Callable[[Any], None], items: Sequence[Any], workers: int = 16) -> None:
    if len(items) <= 1:
        for it in items:
            fn(it)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        for _ in pool.map(fn, items):
            pass


def upload_run(
    s3: Any,
    plan: Plan,
    manifests: Mapping[str, list[Any]],
    batches: Mapping[str, Sequence[dict[str, Any]]],
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Upload the item batches first (manifests must never list a missing key), then manifests, then plan.json.
    `on_batch(n)` is called after each batch of n items lands."""

    def put_batch(kv: tuple[str, Sequence[dict[str, Any]]]) -> None:
        uri, items = kv
        loc = parse_s3_uri(uri)
        kind = "application/x-ndjson" if uri.endswith(BATCH_SUFFIX) else "application/json"
        s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=object_bytes(uri, items), ContentType=kind)
        if on_batch:
            on_batch(len(items))

    _parallel(put_batch, list(batches.items()))
    _parallel(lambda kv: put_json(s3, parse_s3_uri(kv[0]), kv[1]), list(manifests.items()))
    put_json(s3, parse_s3_uri(plan.s3_prefix).join("plan.json"), plan.to_dict())


def list_output_objects(s3: Any, plan: Plan) -> dict[str, int]:
    """Every object under the plan's output prefix: key -> size in bytes."""
    prefix = parse_s3_uri(plan.output_prefix).as_prefix()
    try:
        return {o["Key"]: int(o.get("Size") or 0) for o in list_objects(s3, prefix)}
    except Exception as exc:  # a bucket that does not exist yet means nothing is done
        from launcher.aws import is_not_found

        if is_not_found(exc):
            return {}
        raise


def list_output_keys(s3: Any, plan: Plan) -> list[str]:
    return list(list_output_objects(s3, plan))


def upload_manifests(s3: Any, plan: Plan, manifests: Mapping[str, list[Any]]) -> None:
    """A new round's manifests, then plan.json, to the run's prefix."""
    upload_run(s3, plan, manifests, {})


def read_reports(s3: Any, plan: Plan, keys: Sequence[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per-host reports under the output prefix: (job name, host) -> report. Unreadable reports are skipped."""
    bucket = parse_s3_uri(plan.output_prefix).bucket
    out: dict[tuple[str, str], dict[str, Any]] = {}
    output_key = parse_s3_uri(plan.output_prefix).as_prefix().key
    for key in keys:
        if not is_report_key(key):
            continue
        rel = key[len(output_key) :] if key.startswith(output_key) else key
        job = rel.split("/", 1)[0]
        host = key.rsplit("/", 1)[-1][: -len(".json")]
        try:
            report = get_json(s3, S3Uri(bucket, key))
        except ValueError:  # half-written or not JSON: the next poll reads it again
            continue
        except Exception as exc:
            from launcher.aws import is_not_found

            if is_not_found(exc):  # deleted between list and get
                continue
            raise
        if isinstance(report, dict):
            out[(job, host)] = report
    return out


def done_scenes(s3: Any, plan: Plan) -> tuple[set[str], list[str]]:
    keys = list_output_keys(s3, plan)
    return done_item_ids(keys), keys
