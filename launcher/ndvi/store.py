"""I/O edge for plans: read/write plan.json, upload manifests and item JSONs, list outputs and reports."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from launcher.aws import S3Uri, get_json, list_objects, parse_s3_uri, put_json
from launcher.ndvi.paths import inside
from launcher.ndvi.plan import Plan, PlanError
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


def save_items(items: Sequence[dict[str, Any]], directory: str | os.PathLike[str]) -> int:
    """Local copies of the item JSONs a run must write under its prefix (DIR/items/<id>.json), for `upload`
    after `plan --no-upload`. Ids were checked by the plan; the paths are checked again here."""
    out = inside(directory, "items")
    out.mkdir(parents=True, exist_ok=True)
    for item in items:
        inside(out, f"{item['id']}.json").write_text(json.dumps(item, separators=(",", ":")) + "\n")
    return len(items)


def local_run_files(
    plan: Plan, directory: str | os.PathLike[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifests (uri -> manifest) and copied item JSONs of a plan planned with --no-upload, read back from
    DIR/manifests and DIR/items for `launcher upload`."""
    manifests: dict[str, Any] = {}
    for job in plan.jobs:
        path = inside(directory, "manifests", job.manifest_uri.rsplit("/", 1)[-1])
        try:
            manifests[job.manifest_uri] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PlanError(
                f"cannot read the manifest of {job.name} at {path} ({exc}): plan the run again"
            ) from None
    items_prefix = plan.s3_prefix.rstrip("/") + "/items/"
    items = []
    for scene in plan.scenes().values():
        if not scene.uri.startswith(items_prefix):
            continue  # referenced in place
        path = inside(directory, "items", f"{scene.item_id}.json")
        try:
            item = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PlanError(f"cannot read the item JSON {path} ({exc}): plan the run again") from None
        if not isinstance(item, dict) or item.get("id") != scene.item_id:
            raise PlanError(f"{path} is not the item {scene.item_id}: plan the run again")
        items.append(item)
    return manifests, items


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
    items_to_write: Sequence[dict[str, Any]],
    item_uris: Mapping[str, str],
    on_item: Callable[[], None] | None = None,
) -> None:
    """Upload item JSONs first (manifests must never list a missing key), then manifests, then plan.json."""

    def put_item(item: dict[str, Any]) -> None:
        put_json(s3, parse_s3_uri(item_uris[str(item["id"])]), item)
        if on_item:
            on_item()

    _parallel(put_item, list(items_to_write))
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
    upload_run(s3, plan, manifests, [], {})


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
