"""What `status`, `watch` and `resume` read: the run's outputs and reports in S3, its jobs' descriptions (or the
status files of `launcher local`), put together by the pure `launcher.ndvi.watch`."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.ndvi import products, store
from launcher.ndvi.plan import Plan, SceneRef
from launcher.ndvi.submit import describe_jobs
from launcher.ndvi.watch import (
    LOCAL_SUFFIX,
    Progress,
    active_jobs,
    done_item_ids,
    failures_from_reports,
    missing_scenes,
    progress,
)

LOCAL_DIR = "local"  # `launcher local`'s default work folder, beside plan.json
LOCAL_STATUS_FILE = "local-status.json"


def local_status(plan_dir: str | os.PathLike[str], job_name: str) -> dict[str, Any] | None:
    """The status of a job run by `launcher local` (never submitted), as a DescribeProcessingJob-like dict."""
    path = Path(plan_dir) / LOCAL_DIR / job_name / LOCAL_STATUS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    messages = [i.get("message", "").strip() for i in data.get("instances", []) if i.get("exit_code")]
    return {
        "ProcessingJobStatus": f"{data.get('status', 'Unknown')}{LOCAL_SUFFIX}",
        "ExitMessage": "; ".join(m for m in messages if m)[:1024] or None,
    }


def describe_all(sm: Any, plan: Plan, plan_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any] | None]:
    """Every job of the plan (stage 1 and 2) described, or its `launcher local` status, or None (never run)."""
    names = [j.name for j in plan.jobs] + [j.name for r in plan.products for j in r.jobs]
    descriptions = describe_jobs(sm, names)
    for name, description in descriptions.items():
        if description is None:
            descriptions[name] = local_status(plan_dir, name)
    return descriptions


def gather(s3: Any, sm: Any, plan: Plan, plan_dir: str | os.PathLike[str]) -> tuple[Progress, set[str]]:
    """The run's progress (jobs by state, scenes done, failures, cost; stage 2's jobs and missing products) and the
    ids of the scenes done."""
    objects = store.list_output_objects(s3, plan)
    keys = list(objects)
    done = done_item_ids(keys)
    reports = store.read_reports(s3, plan, keys)
    descriptions = describe_all(sm, plan, plan_dir)
    prog = progress(plan, descriptions, done, reports)
    if plan.products:
        outputs = products.scan_outputs(plan, objects)
        states, hours = products.product_states(plan, outputs, descriptions, dt.datetime.now(dt.UTC))
        prog.products = states
        prog.products_missing = products.products_missing(plan, outputs)
        prog.instance_hours = round(prog.instance_hours + hours, 3)
        prog.cost_usd = round(prog.instance_hours * plan.estimate.price_per_hour, 2)
    return prog, done


def status_dict(plan: Plan, prog: Progress) -> dict[str, Any]:
    """`launcher status --json`."""
    return {
        "run_id": plan.run_id,
        "scenes": prog.scenes,
        "done": prog.done,
        "jobs_by_status": prog.by_status,
        "cost_usd": prog.cost_usd,
        "instance_hours": prog.instance_hours,
        "failed_scenes": [f.__dict__ for f in prog.failures],
        "jobs": [
            {
                "name": j.name,
                "status": j.status,
                "scenes": j.scenes,
                "done": j.done,
                "failure_reason": j.failure_reason,
                "exit_message": j.exit_message,
            }
            for j in prog.jobs
        ],
        "products": {
            "missing": prog.products_missing,
            "rounds": [
                {
                    "kind": r.kind,
                    "round": r.round,
                    "retry_of": r.retry_of,
                    "args": list(r.args),
                    "source": r.source,
                }
                for r in plan.products
            ],
            "jobs": [
                {
                    "name": j.name,
                    "status": j.status,
                    "tiles": j.scenes,
                    "done": j.done,
                    "failure_reason": j.failure_reason,
                    "exit_message": j.exit_message,
                }
                for j in prog.products
            ],
        },
    }


@dataclass(frozen=True)
class ResumeSelection:
    """The scenes a new round runs (`missing`), the failed ones left out by --skip-failed (`skipped`) and how many
    of the plan's scenes are done."""

    done: int
    missing: list[SceneRef]
    skipped: list[SceneRef]


def resume_selection(s3: Any, plan: Plan, skip_failed: bool = False) -> ResumeSelection:
    """The scenes without a valid output; with `skip_failed`, less those the per-host reports show as failed."""
    done, keys = store.done_scenes(s3, plan)
    missing = missing_scenes(plan, done)
    skipped: list[SceneRef] = []
    if skip_failed:
        failed = {f.item_id for f in failures_from_reports(store.read_reports(s3, plan, keys), done)}
        skipped = [m for m in missing if m.item_id in failed]
        missing = [m for m in missing if m.item_id not in failed]
    return ResumeSelection(done=len(done & set(plan.scenes())), missing=missing, skipped=skipped)


def running_jobs(sm: Any, plan: Plan) -> Sequence[str]:
    """The plan's jobs still running (a new round would plan their scenes again)."""
    return active_jobs(plan, describe_jobs(sm, [j.name for j in plan.jobs]))


def scan(s3: Any, plan: Plan) -> products.Outputs:
    """The products under the run's output prefix (per-scene outputs, composites, mosaic files)."""
    return products.scan_outputs(plan, store.list_output_objects(s3, plan))
