"""Pure: progress of a plan from its outputs, per-host reports and job descriptions; the resume diff.

A scene is done when its `<item_id>_ndvi.json` exists under the plan's output prefix: the worker writes it last,
after the GeoTIFF, so its presence marks a complete scene.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from launcher.ndvi.plan import Plan, SceneRef

DONE_SUFFIX = "_ndvi.json"
TIF_SUFFIX = "_ndvi.tif"
REPORTS_DIR = "_reports"
TERMINAL = {"Completed", "Failed", "Stopped"}
ACTIVE = {"InProgress", "Stopping"}
NOT_SUBMITTED = "NotSubmitted"
LOCAL_SUFFIX = " (local)"  # a job never submitted but run by `launcher local`: "Completed (local)"


def done_item_ids(keys: Iterable[str]) -> set[str]:
    """Item ids whose scene is complete, from output object keys (STAC item written last) with the GeoTIFF."""
    jsons: set[str] = set()
    tifs: set[str] = set()
    for key in keys:
        base = key.rsplit("/", 1)[-1]
        if base.endswith(DONE_SUFFIX):
            jsons.add(base[: -len(DONE_SUFFIX)])
        elif base.endswith(TIF_SUFFIX):
            tifs.add(base[: -len(TIF_SUFFIX)])
    return jsons & tifs


def is_report_key(key: str) -> bool:
    parts = key.split("/")
    return len(parts) >= 2 and parts[-2] == REPORTS_DIR and parts[-1].endswith(".json")


@dataclass(frozen=True)
class SceneFailure:
    item_id: str | None
    source: str
    error: str
    job: str
    host: str


def failures_from_reports(
    reports: Mapping[tuple[str, str], Mapping[str, Any]], done: set[str]
) -> list[SceneFailure]:
    """Failed scenes of the per-host reports ((job, host) -> report) that have no output yet."""
    out: list[SceneFailure] = []
    for (job, host), report in sorted(reports.items()):
        for scene in report.get("scenes") or []:
            if scene.get("status") != "failed":
                continue
            item_id = scene.get("item_id")
            if item_id and item_id in done:
                continue
            out.append(
                SceneFailure(
                    item_id=item_id,
                    source=str(scene.get("source") or ""),
                    error=str(scene.get("error") or "unknown error"),
                    job=job,
                    host=host,
                )
            )
    return out


@dataclass
class JobState:
    name: str
    status: str
    scenes: int
    done: int
    instance_count: int
    started: dt.datetime | None = None
    ended: dt.datetime | None = None
    failure_reason: str | None = None
    exit_message: str | None = None


@dataclass
class Progress:
    scenes: int
    done: int
    jobs: list[JobState]
    failures: list[SceneFailure] = field(default_factory=list)
    cost_usd: float = 0.0
    instance_hours: float = 0.0
    # stage 2 (launcher/ndvi/products.py): its jobs, and the tiles of the latest composites plus the latest mosaic
    # not written yet (a retry round writing a tile counts for the round it repeats)
    products: list[JobState] = field(default_factory=list)
    products_missing: int = 0

    @property
    def by_status(self) -> dict[str, int]:
        return dict(Counter(j.status for j in self.jobs))

    @property
    def finished(self) -> bool:
        return all(
            j.status in TERMINAL or j.status == NOT_SUBMITTED or j.status.endswith(LOCAL_SUFFIX)
            for j in [*self.jobs, *self.products]
        )


def as_datetime(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def progress(
    plan: Plan,
    descriptions: Mapping[str, Mapping[str, Any] | None],
    done: set[str],
    reports: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    now: dt.datetime | None = None,
) -> Progress:
    """Combine the plan, DescribeProcessingJob answers (None: never submitted), done scene ids and reports.

    Cost so far = instances x (end or now - start) x price, per job that has started.
    """
    now = now or dt.datetime.now(dt.UTC)
    price = plan.estimate.price_per_hour
    scenes = plan.scenes()
    jobs: list[JobState] = []
    instance_hours = 0.0
    for job in plan.jobs:
        d = descriptions.get(job.name)
        status = NOT_SUBMITTED if d is None else str(d.get("ProcessingJobStatus", "Unknown"))
        started = as_datetime(d.get("ProcessingStartTime")) if d else None
        ended = as_datetime(d.get("ProcessingEndTime")) if d else None
        if started is not None:
            end = ended or now
            instance_hours += job.instance_count * max(0.0, (end - started).total_seconds()) / 3600
        jobs.append(
            JobState(
                name=job.name,
                status=status,
                scenes=job.scene_count,
                done=sum(1 for s in job.scenes if s.item_id in done),
                instance_count=job.instance_count,
                started=started,
                ended=ended,
                failure_reason=(d or {}).get("FailureReason"),
                exit_message=(d or {}).get("ExitMessage"),
            )
        )
    done_in_plan = sum(1 for item_id in scenes if item_id in done)
    failures = failures_from_reports(reports or {}, done)
    return Progress(
        scenes=len(scenes),
        done=done_in_plan,
        jobs=jobs,
        failures=failures,
        cost_usd=round(instance_hours * price, 2),
        instance_hours=round(instance_hours, 3),
    )


def missing_scenes(plan: Plan, done: set[str]) -> list[SceneRef]:
    """The resume diff: every scene of the plan without a complete output, in the plan's order."""
    return [ref for item_id, ref in plan.scenes().items() if item_id not in done]


def active_jobs(plan: Plan, descriptions: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    return [
        j.name
        for j in plan.jobs
        if (d := descriptions.get(j.name)) is not None and d.get("ProcessingJobStatus") in ACTIVE
    ]


def summarize_errors(failures: Sequence[SceneFailure], limit: int = 10) -> list[str]:
    return [f"{f.item_id or f.source} ({f.job}/{f.host}): {f.error}" for f in failures[:limit]]
