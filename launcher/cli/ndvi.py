"""The planetary NDVI job's commands: search, plan, upload, submit, status, watch, resume and local; stage 2:
composite and mosaic.

Thin: arguments -> config objects -> `launcher.ndvi` (the pure core: search, plan, requests, watch; its I/O edges:
store, submit, status, local_run) -> printed results. Heavy modules (boto3, pystac-client, folium, sagemaker) are
imported inside the commands.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import click

from launcher.cli.console import aws_hint, friendly_errors, with_options
from launcher.cli.console import console as _console

# ------------------------------------------------------------------------------------------------- search


@click.command()
@click.option("--stac-url", default=None, help="STAC API root [default: Earth Search v1].")
@click.option("--collection", default="sentinel-2-l2a", show_default=True, help="STAC collection id.")
@click.option(
    "--bbox", default=None, help="Area as W,S,E,N degrees (use --bbox=-179,... for negative values)."
)
@click.option(
    "--intersects",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Area as a GeoJSON file (geometry, Feature or one-feature FeatureCollection).",
)
@click.option(
    "--datetime", "datetime_", default=None, help="Time range START/END, e.g. 2023-12-01/2023-12-07."
)
@click.option("--max-cloud", type=float, default=None, help="Keep scenes with eo:cloud_cover below this (%).")
@click.option(
    "--dedupe",
    type=click.Choice(["least-cloudy", "first", "latest"]),
    default="least-cloudy",
    show_default=True,
    help="Which scene to keep per MGRS tile.",
)
@click.option(
    "--source",
    type=click.Choice(["stac", "sagemaker-geospatial"]),
    default="stac",
    show_default=True,
    help="Search a STAC API, or SageMaker geospatial's SearchRasterDataCollection (us-west-2 only, closed to new "
    "customers).",
)
@click.option("--page-size", type=int, default=500, show_default=True, help="Items per page requested.")
@click.option(
    "--max-items",
    type=int,
    default=None,
    help="Stop after this many items (before dedupe) [default: all, and more than 500000 is an error].",
)
@click.option(
    "--max-pages",
    type=click.IntRange(1),
    default=2000,
    show_default=True,
    help="A STAC search with more pages is an error (raise it for a bigger search).",
)
@click.option(
    "--out", "out", type=click.Path(dir_okay=False, writable=True), required=True, help="Output JSONL."
)
@friendly_errors
def search(
    stac_url, collection, bbox, intersects, datetime_, max_cloud, dedupe, source, page_size, max_items, max_pages,
    out,
) -> None:  # fmt: skip
    """Search scenes (all pages), keep one per MGRS tile, write them as JSON lines.

    A STAC search stays on the API's origin (a next link elsewhere stops it with an error), stops when a next
    link repeats, and is bounded: --max-pages pages, 500000 items unless --max-items, 64 MiB and 300 s per page.
    """
    from launcher.errors import ResponseError
    from launcher.ndvi import search as s

    if bbox is None and intersects is None:
        raise click.UsageError("give an area: --bbox=W,S,E,N or --intersects FILE")
    url = stac_url or s.EARTH_SEARCH_V1
    if source == "stac" and not url.startswith(("http://", "https://")):
        raise click.UsageError(f"--stac-url must be the http(s):// root of a STAC API, got {url!r}")
    if max_items is not None and max_items < 1:
        raise click.UsageError(f"--max-items must be >= 1, got {max_items}")
    out_dir = Path(out).resolve().parent
    if not out_dir.is_dir():
        raise click.UsageError(f"--out {out}: the folder {out_dir} does not exist (create it first)")
    try:
        if datetime_ is not None:
            s.check_datetime(datetime_)
        geometry = None
        if intersects:
            try:
                doc = json.loads(Path(intersects).read_text(encoding="utf-8"))
            except (UnicodeDecodeError, RecursionError):
                raise ValueError(f"--intersects {intersects} is not a GeoJSON text file") from None
            if not isinstance(doc, dict):
                raise ValueError(
                    f"--intersects {intersects}: expected a GeoJSON object, got {type(doc).__name__}"
                )
            geometry = s.geometry_from_geojson(doc)
        query = s.SearchQuery(
            collection=collection,
            bbox=s.parse_bbox(bbox) if bbox else None,
            intersects=geometry,
            datetime=datetime_,
            max_cloud=max_cloud,
            page_size=page_size,
            max_items=max_items,
        )
        if source == "sagemaker-geospatial":
            s.geospatial_request(query)  # its own limits (closed range, a polygon), before anything is sent
    except (ValueError, json.JSONDecodeError) as exc:
        raise click.UsageError(str(exc)) from None
    console = _console()
    notes: list[str] = []
    with console.status("searching ...") as status:

        def on_page(pages: int, count: int) -> None:
            status.update(f"searching: {count} items from {pages} page(s)")

        if source == "stac":
            found = s.search_stac(url, query, on_page, max_pages=max_pages, notes=notes)
        else:
            found = s.search_geospatial(query, on_page)
        try:
            kept, stats = s.dedupe(found, dedupe, collection=collection)
        except ResponseError as exc:
            raise click.ClickException(f"the STAC search stopped: {exc}") from None
        except Exception as exc:
            if source == "stac" and aws_hint(exc) is None:
                raise click.ClickException(
                    f"the STAC search at {url} failed ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); "
                    "check --stac-url and the network, then run the search again"
                ) from None
            raise
    for note in notes:
        console.print(f"[yellow]{note}[/]")
    n = s.write_jsonl(kept, out)
    console.print(
        f"found {stats.searched} item(s)"
        + (f" from {url}" if source == "stac" else " (SageMaker geospatial)")
    )
    if stats.other_collection:
        console.print(f"  dropped {stats.other_collection} item(s) of other collections than {collection}")
    if stats.no_tile:
        console.print(f"  [yellow]{stats.no_tile} item(s) have no MGRS tile: kept each on its own[/]")
    console.print(
        f"kept {n} scene(s), one per MGRS tile ({dedupe}); {stats.duplicates} duplicate(s) dropped -> {out}"
    )


# --------------------------------------------------------------------------------------------------- plan


@click.command()
@click.option(
    "--items", "items_path", type=click.Path(exists=True, dir_okay=False), required=True, help="JSONL."
)
@click.option("--jobs", type=int, default=25, show_default=True, help="Processing jobs (one manifest each).")
@click.option(
    "--instances-per-job", type=int, default=20, show_default=True, help="Instances per job (1-100)."
)
@click.option(
    "--s3-prefix", required=True, help="s3://BUCKET/PREFIX for manifests, copied items and outputs."
)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Directory for plan.json."
)
@click.option(
    "--run-id", default=None, help="Run id (prefix of the job names) [default: ndvi-<time>-<hash>]."
)
@click.option(
    "--instance-type", default="ml.m5.xlarge", show_default=True, help="For the estimate and submit."
)
@click.option(
    "--price-per-hour", type=float, default=None, help="USD per instance-hour [default: built-in table]."
)
@click.option("--seconds-per-scene", type=float, default=60.0, show_default=True, help="For the estimate.")
@click.option(
    "--copy-items/--no-copy-items",
    default=None,
    help="Write every item JSON under the run's prefix [default: only when they do not all live in one bucket]. "
    "Use it when the items' bucket is in another region than the jobs.",
)
@click.option(
    "--map", "map_path", type=click.Path(dir_okay=False), default=None, help="Write an HTML map here."
)
@click.option("--no-upload", is_flag=True, help="Only write the plan and manifests locally.")
@click.option("--force", is_flag=True, help="Replace an existing DIR/plan.json (its run's history is lost).")
@friendly_errors
def plan(
    items_path,
    jobs,
    instances_per_job,
    s3_prefix,
    out_dir,
    run_id,
    instance_type,
    price_per_hour,
    seconds_per_scene,
    copy_items,
    map_path,
    no_upload,
    force,
) -> None:
    """Shard the items into balanced ManifestFile jobs, upload them and write DIR/plan.json.

    ITEMS may be JSON lines (what `launcher search` writes), a STAC item, an ItemCollection or a list of items,
    as the worker reads them. Items whose id cannot name a file (e.g. '../x') are reported and left out.
    """
    from launcher.ndvi import plan as p
    from launcher.ndvi import store
    from launcher.ndvi.search import read_items

    console = _console()
    out = Path(out_dir)
    existing = out / store.PLAN_FILE
    if out.exists() and not out.is_dir():
        raise click.UsageError(f"--out {out_dir} is a file: give a folder for plan.json")
    if existing.exists() and not force:
        raise click.ClickException(
            f"{existing} exists already: it records a run (status, resume need it). Plan into another --out, "
            "or pass --force to replace it"
        )
    if run_id is not None:
        p.validate_run_id(run_id)
    p.price_for(instance_type, price_per_hour)  # argument problems first, before reading anything
    try:
        items = read_items(items_path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    items, rejected = p.safe_items(items)
    for why in rejected[:20]:
        console.print(f"[yellow]left out: {why}[/]")
    if len(rejected) > 20:
        console.print(f"[yellow]left out {len(rejected) - 20} more item(s) with unsafe ids[/]")
    if not items:
        raise click.ClickException(
            f"{items_path} holds no items to plan"
            + (f" ({len(rejected)} left out for unsafe ids)" if rejected else "")
        )
    t0 = time.perf_counter()
    the_plan, manifests, to_write = p.make_plan(
        items,
        run_id=run_id or p.default_run_id(items),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        s3_prefix=s3_prefix,
        jobs=jobs,
        instances_per_job=instances_per_job,
        instance_type=instance_type,
        price_per_hour=price_per_hour,
        seconds_per_scene=seconds_per_scene,
        copy_items=copy_items,
    )
    planned_in = time.perf_counter() - t0
    if not no_upload:  # uploaded first: a failed upload leaves nothing local to mistake for a planned run
        _upload(console, the_plan, manifests, to_write)
    store.save_manifests(manifests, out)
    if no_upload and to_write:
        store.save_items(to_write, out)  # for `launcher upload` later
    path = store.save_plan(the_plan, out)
    if map_path:
        from launcher.ndvi.mapview import write_map

        drawn = write_map(the_plan, items, map_path)
        console.print(f"map of {drawn} footprint(s) -> {map_path}")
    sizes = [j.scene_count for j in the_plan.jobs]
    est = the_plan.estimate
    console.print(
        f"planned {the_plan.scene_count} scene(s) into {len(the_plan.jobs)} job(s) of {min(sizes)}-{max(sizes)} "
        f"scenes, up to {instances_per_job} x {instance_type} each, in {planned_in:.2f} s"
        + (f"; {len(rejected)} item(s) left out" if rejected else "")
    )
    if not to_write:
        where = "referenced in place"
    elif no_upload:
        where = f"to be written under {the_plan.s3_prefix}items/ (kept in {out / 'items'} until uploaded)"
    else:
        where = f"written under {the_plan.s3_prefix}items/"
    console.print(f"item JSONs {where}; outputs -> {the_plan.output_prefix}")
    console.print(
        f"estimate: {est.instance_hours:.1f} instance-hours, ${est.cost_usd:,.2f} at ${est.price_per_hour}/h, "
        f"about {est.wall_hours * 60:.0f} min if all jobs run at once"
    )
    if no_upload:
        console.print(
            f"[yellow]--no-upload: nothing was written to S3; `launcher upload --plan {out}` uploads the run "
            "before `submit` or `local`[/]"
        )
    console.print(f"plan -> {path}")


def _upload(console, the_plan, manifests, to_write, planning: bool = True) -> None:
    """Item JSONs, then manifests, then plan.json to the run's prefix; a credentials or region problem says how
    to plan without uploading."""
    from rich.progress import Progress

    from launcher.aws import client
    from launcher.ndvi import store

    try:
        s3 = client("s3")
        uris = {s.item_id: s.uri for s in the_plan.scenes().values()}
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("uploading item JSONs", total=len(to_write))
            store.upload_run(s3, the_plan, manifests, to_write, uris, on_item=lambda: bar.advance(task))
    except Exception as exc:
        hint = aws_hint(exc)
        if hint is None:
            raise
        if not planning:
            raise click.ClickException(f"{hint}; then run `launcher upload` again") from None
        raise click.ClickException(
            f"{hint}. Nothing was written locally; to plan without AWS, add --no-upload and run "
            "`launcher upload --plan DIR` later"
        ) from None


@click.command()
@click.option("--plan", "plan_path", required=True, help="DIR/plan.json of `launcher plan --no-upload`.")
@friendly_errors
def upload(plan_path) -> None:
    """Upload a run planned with --no-upload: its item JSONs, manifests and plan.json, to its S3 prefix."""
    from launcher.ndvi import store

    console = _console()
    the_plan = _load_plan(plan_path)
    manifests, items = store.local_run_files(the_plan, _plan_file(plan_path).parent)
    _upload(console, the_plan, manifests, items, planning=False)
    console.print(
        f"uploaded {len(items)} item JSON(s), {len(manifests)} manifest(s) and plan.json to {the_plan.s3_prefix}"
    )


# ------------------------------------------------------------------------------------------------- submit


def _load_plan(plan_path: str):
    from launcher.ndvi.store import load_plan

    return load_plan(plan_path)


def _plan_file(plan_path: str) -> Path:
    from launcher.ndvi.store import plan_file

    return plan_file(plan_path)


def _submission(the_plan, image, role, instance_type, volume_gb, max_runtime, env, worker_args):
    """The submission settings (the plan's, overridden by the options) and the secret values given on this
    command line (used for this invocation only, never stored)."""
    from launcher.ndvi.submit import merge_submission
    from launcher.secrets import parse_env_options

    options = parse_env_options(env)
    submission = merge_submission(
        the_plan, options, image, role, instance_type, volume_gb, max_runtime, worker_args
    )
    return submission, options.given


def _secret_values(names, given, console, when: str, dry_run: bool = False) -> dict[str, str]:
    """The values of the variables kept by name (secrets): from this command line, else the caller's
    environment. Missing ones: a usage error (a placeholder in a dry run)."""
    from launcher.errors import ArgumentError
    from launcher.secrets import missing_message, resolve

    names = list(names)
    values, missing = resolve(names, given, os.environ)
    if missing and not dry_run:
        raise ArgumentError(missing_message(missing, when))
    for name in missing:
        values[name] = ""
        console.print(f"[yellow]{name} is not set in your environment: export it before `{when}`[/]")
    if names:
        on_line = [n for n in names if n in given]
        console.print(
            f"secret(s) {', '.join(names)}: value(s) taken from "
            + ("this command line (for this run only) and " if on_line else "")
            + "your environment; plan.json keeps only the names"
        )
    return values


def _submit_jobs(
    the_plan, jobs, submission, secrets, dry_run: bool, skip_preflight: bool, console, requests=None
) -> None:
    """Validate and send (or print, for a dry run) the requests of `jobs` (`requests`: already built, for stage-2
    jobs); the quota preflight first."""
    from launcher.aws import client
    from launcher.ndvi.submit import build_requests, preflight, submit_requests
    from launcher.secrets import redact_request

    if requests is None:
        requests = build_requests(the_plan, jobs, submission, secrets)
    if dry_run:
        shown = [redact_request(r, submission.env_from_caller) for r in requests]
        click.echo(json.dumps(shown, indent=2))
        return
    if not skip_preflight:
        checks, why = preflight(client("service-quotas"), the_plan, jobs, submission.instance_type)
        if why:
            console.print(f"[yellow]quota preflight skipped: {why}[/]")
        for check in checks:
            if check.ok:
                console.print(f"quota ok: {check.name} = {check.limit:g} >= {check.needed} needed")
            else:
                console.print(
                    f"[yellow]warning: the plan runs {check.needed} instances at once but '{check.name}' is "
                    f"{check.limit:g}: jobs beyond it fail with ResourceLimitExceeded. Request an increase in "
                    "Service Quotas, or plan fewer jobs / instances per job.[/]"
                )
    from rich.progress import Progress

    sm = client("sagemaker")
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("submitting", total=len(requests))
        results = submit_requests(sm, requests, on_done=lambda _r: bar.advance(task))
    created = sum(r.action == "created" for r in results)
    console.print(f"submitted {created} job(s); {len(results) - created} already existed")


_submit_options = [
    click.option("--image", default=None, help="Processing image URI (ECR)."),
    click.option("--role", default=None, help="IAM role ARN the jobs run as."),
    click.option("--instance-type", default=None, help="[default: the plan's]"),
    click.option("--volume-gb", type=int, default=None, help="EBS volume per instance [default: 30]."),
    click.option("--max-runtime", type=int, default=None, help="Seconds per job [default: 10800]."),
    click.option("--env", multiple=True, help="KEY=VALUE for the container (repeatable)."),
    click.option(
        "--worker-arg",
        "worker_args",
        multiple=True,
        help="Container argument for the worker, replacing the default '--input ... --output ... --on-error "
        "continue' (repeatable, in order).",
    ),
]


@click.command()
@click.option("--plan", "plan_path", required=True, help="DIR/plan.json from `launcher plan`.")
@with_options(_submit_options)
@click.option("--round", "round_", type=int, default=None, help="Submit only this round [default: all].")
@click.option("--dry-run", is_flag=True, help="Print the CreateProcessingJob requests as JSON; send nothing.")
@click.option("--skip-preflight", is_flag=True, help="Do not read the instance quota first.")
@friendly_errors
def submit(
    plan_path,
    image,
    role,
    instance_type,
    volume_gb,
    max_runtime,
    env,
    worker_args,
    round_,
    dry_run,
    skip_preflight,
) -> None:
    """Create one Processing job per manifest (idempotent: existing jobs are left alone)."""
    from launcher.ndvi import store

    console = _console()
    the_plan = _load_plan(plan_path)
    submission, given = _submission(
        the_plan, image, role, instance_type, volume_gb, max_runtime, env, worker_args
    )
    jobs = list(the_plan.jobs) if round_ is None else the_plan.jobs_of_round(round_)
    if not jobs:
        raise click.UsageError(f"no jobs in round {round_} of the plan (rounds: {the_plan.rounds})")
    secrets = _secret_values(submission.env_from_caller, given, console, "launcher submit", dry_run)
    if not dry_run:
        import dataclasses

        from launcher.ndvi.submit import build_requests

        build_requests(the_plan, jobs, submission, secrets)  # invalid settings are never recorded
        # recorded before sending, so `resume` knows them even if this submission is interrupted
        store.save_plan(dataclasses.replace(the_plan, submission=submission), _plan_file(plan_path))
    _submit_jobs(the_plan, jobs, submission, secrets, dry_run, skip_preflight, console)


# ------------------------------------------------------------------------------------------ status / watch


def _gather(the_plan, plan_path: str):
    from launcher.aws import client
    from launcher.ndvi.status import gather

    return gather(client("s3"), client("sagemaker"), the_plan, _plan_file(plan_path).parent)


def _print_status(prog, the_plan, console, verbose: bool, plan_path: str = "DIR/plan.json") -> None:

    states = ", ".join(f"{n} {s}" for s, n in sorted(prog.by_status.items()))
    console.print(f"run {the_plan.run_id}: {len(prog.jobs)} job(s): {states}")
    pct = 100.0 * prog.done / prog.scenes if prog.scenes else 100.0
    console.print(f"scenes done: {prog.done}/{prog.scenes} ({pct:.1f} %)")
    console.print(
        f"cost so far: ${prog.cost_usd:,.2f} ({prog.instance_hours:.2f} instance-hours at "
        f"${the_plan.estimate.price_per_hour}/h; estimate for the plan ${the_plan.estimate.cost_usd:,.2f})"
    )
    for j in prog.jobs:
        if not verbose and not j.status.startswith(("Failed", "Stopped")):
            continue
        reason = " / ".join(x for x in (j.failure_reason, j.exit_message) if x)
        colour = "red" if j.status.startswith(("Failed", "Stopped")) else "default"
        line = (
            f"  [{colour}]{j.name}  {j.status}[/]  {j.done}/{j.scenes} scenes  {j.instance_count} instance(s)"
        )
        console.print(line + (f"  {reason[:300]}" if reason else ""))
    if prog.failures:
        from launcher.ndvi.watch import summarize_errors

        console.print(f"[red]{len(prog.failures)} failed scene(s)[/] (from the per-host reports):")
        for line in summarize_errors(prog.failures):
            console.print(f"  {line}")
    if prog.products:
        _print_products(prog, the_plan, console, verbose, plan_path)
    from launcher.ndvi.watch import NOT_SUBMITTED

    missing = prog.scenes - prog.done
    never = [j for j in prog.jobs if j.status == NOT_SUBMITTED]
    if never:
        what = (
            "no job of this plan was" if len(never) == len(prog.jobs) else f"{len(never)} job(s) were never"
        )
        console.print(
            f"{what} submitted: `launcher submit --plan {plan_path} --image URI --role ARN` submits them "
            f"(or `launcher local --plan {plan_path}` runs them here)"
        )
    elif prog.finished and missing:
        console.print(
            f"{missing} scene(s) without output: `launcher resume --plan {plan_path}` runs them again"
        )


def _print_products(prog, the_plan, console, verbose: bool, plan_path: str) -> None:
    """Stage 2 of `status`/`watch`: composite and mosaic jobs, and what is missing."""
    from collections import Counter

    states = ", ".join(f"{n} {s}" for s, n in sorted(Counter(j.status for j in prog.products).items()))
    console.print(f"stage 2 (composites, mosaic): {len(prog.products)} job(s): {states}")
    for j in prog.products:
        failed = j.status.startswith(("Failed", "Stopped"))
        if not verbose and not failed:
            continue
        reason = " / ".join(x for x in (j.failure_reason, j.exit_message) if x)
        found = the_plan.product_job(j.name)
        if found is not None and found[0].kind == "mosaic":
            counts = "mosaic written" if j.done else "no mosaic yet"
        else:
            counts = f"{j.done}/{j.scenes} tiles"
        line = f"  [{'red' if failed else 'default'}]{j.name}  {j.status}[/]  {counts}"
        console.print(line + (f"  {reason[:300]}" if reason else ""))
    if prog.products_missing:
        console.print(
            f"stage 2: {prog.products_missing} product(s) not written (tiles of the latest composites, the mosaic)"
        )
        if prog.finished:
            console.print(
                f"`launcher resume --plan {plan_path}` reruns them (stage 1 first, if scenes are missing)"
            )


@click.command()
@click.option("--plan", "plan_path", required=True, help="DIR/plan.json.")
@click.option("--jobs", "show_jobs", is_flag=True, help="List every job.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@friendly_errors
def status(plan_path, show_jobs, as_json) -> None:
    """Jobs by state, scenes done, failures with their reasons, and cost so far."""
    the_plan = _load_plan(plan_path)
    prog, _ = _gather(the_plan, plan_path)
    if as_json:
        from launcher.ndvi.status import status_dict

        click.echo(json.dumps(status_dict(the_plan, prog), indent=2))
        return
    _print_status(prog, the_plan, _console(stderr=False), show_jobs, plan_path)


@click.command()
@click.option("--plan", "plan_path", required=True, help="DIR/plan.json.")
@click.option("--interval", type=float, default=30.0, show_default=True, help="Seconds between polls.")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@friendly_errors
def watch(plan_path, interval, timeout) -> None:
    """Follow the run: a progress bar of scenes done with ETA, until every job has ended.

    Covers stage 2 (composites, mosaic) too. Exits 1 when every job has ended but some scenes, composites or the
    mosaic have no output (then `launcher resume`).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if not interval > 0 or interval > 86400:
        raise click.UsageError(f"--interval must be within 0..86400 seconds (above 0), got {interval}")
    if timeout is not None and not timeout >= 0:
        raise click.UsageError(f"--timeout must be >= 0 seconds, got {timeout}")
    console = _console()
    the_plan = _load_plan(plan_path)
    start = time.monotonic()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("scenes", total=the_plan.scene_count)
        while True:
            prog, _ = _gather(the_plan, plan_path)
            states = " ".join(f"{n} {s}" for s, n in sorted(prog.by_status.items()))
            bar.update(task, completed=prog.done, description=f"scenes ({states}, ${prog.cost_usd:,.2f})")
            if prog.finished:
                break
            if timeout is not None and time.monotonic() - start > timeout:
                console.print("[yellow]watch timed out; the jobs keep running[/]")
                break
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                console.print("[yellow]stopped watching; the jobs keep running[/]")
                break
    _print_status(prog, the_plan, console, verbose=False, plan_path=plan_path)
    if prog.finished and (prog.done < prog.scenes or prog.products_missing):
        sys.exit(1)


# ------------------------------------------------------------------------------------------------- resume


@click.command()
@click.option("--plan", "plan_path", required=True, help="DIR/plan.json.")
@click.option("--jobs", type=int, default=None, help="Jobs for the new round [default: keep scenes per job].")
@with_options(_submit_options)
@click.option(
    "--dry-run", is_flag=True, help="Show what would be planned and print the requests; change nothing."
)
@click.option("--no-submit", is_flag=True, help="Plan and upload the new round, but do not submit it.")
@click.option("--force", is_flag=True, help="Resume even while jobs of the plan are still running.")
@click.option("--skip-preflight", is_flag=True, help="Do not read the instance quota first.")
@click.option(
    "--skip-failed",
    is_flag=True,
    help="Leave out scenes the per-host reports show as failed (e.g. corrupt sources); rerun only the scenes that "
    "never ran or whose job died.",
)
@friendly_errors
def resume(
    plan_path,
    jobs,
    image,
    role,
    instance_type,
    volume_gb,
    max_runtime,
    env,
    worker_args,
    dry_run,
    no_submit,
    force,
    skip_preflight,
    skip_failed,
) -> None:
    """Plan and submit a new round for the scenes without a valid output only.

    Once every scene has its output, stage 2: jobs of the latest composite or mosaic round never submitted are
    submitted, else a retry round (same options) runs the composites missing tiles, then the mosaic.
    """
    import dataclasses

    from launcher.aws import client
    from launcher.ndvi import store
    from launcher.ndvi.plan import add_round
    from launcher.ndvi.status import resume_selection, running_jobs

    if jobs is not None and jobs < 1:
        raise click.UsageError(f"--jobs must be >= 1, got {jobs}")
    console = _console()
    the_plan = _load_plan(plan_path)
    s3 = client("s3")
    selection = resume_selection(s3, the_plan, skip_failed)
    missing, skipped = selection.missing, selection.skipped
    if skipped:
        console.print(f"--skip-failed: leaving out {len(skipped)} scene(s) that failed: " + ", ".join(
            m.item_id for m in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))  # fmt: skip
    console.print(f"{selection.done}/{the_plan.scene_count} scene(s) done, {len(missing)} missing")
    if not missing:
        if the_plan.products:
            _resume_products(
                the_plan, plan_path, jobs, (image, role, instance_type, volume_gb, max_runtime, env), dry_run,
                no_submit, force, skip_preflight, console,
            )  # fmt: skip
        else:
            console.print("nothing to resume")
        return
    running = running_jobs(client("sagemaker"), the_plan)
    if running and not force:
        raise click.ClickException(
            f"{len(running)} job(s) still running ({', '.join(running[:3])}{' ...' if len(running) > 3 else ''}): "
            "wait for them (`launcher watch`), or pass --force to plan their scenes again anyway"
        )
    submission = None
    secrets: dict[str, str] = {}
    if not no_submit:
        submission, given = _submission(
            the_plan, image, role, instance_type, volume_gb, max_runtime, env, worker_args
        )
        secrets = _secret_values(submission.env_from_caller, given, console, "launcher resume", dry_run)
    new_plan, new_jobs, manifests = add_round(the_plan, missing, jobs)
    round_ = new_jobs[0].round
    console.print(f"round {round_}: {len(missing)} scene(s) in {len(new_jobs)} job(s)")
    if dry_run:
        if submission is not None:
            _submit_jobs(new_plan, new_jobs, submission, secrets, True, True, console)
        return
    store.save_manifests(manifests, _plan_file(plan_path).parent)
    store.upload_run(s3, new_plan, manifests, [], {})
    if submission is not None:
        new_plan = dataclasses.replace(new_plan, submission=submission)
    store.save_plan(new_plan, _plan_file(plan_path))
    if submission is not None:
        _submit_jobs(new_plan, new_jobs, submission, secrets, False, skip_preflight, console)


# -------------------------------------------------------------------------------------------------- local


@click.command()
@click.option("--plan", "plan_path", required=True, help="DIR/plan.json.")
@click.option("--instances", type=int, default=2, show_default=True, help="Simulated instances per job.")
@click.option(
    "--parallel", type=int, default=None, help="Instances running at once [default: all, as on SageMaker]."
)
@click.option(
    "--job",
    "job_names",
    multiple=True,
    help="Run only these jobs (repeatable; composite and mosaic jobs too) [default: every NDVI job].",
)
@click.option("--round", "round_", type=int, default=None, help="Run only this round [default: all].")
@click.option("--no-docker", is_flag=True, help="Run the worker as a local process instead of the image.")
@click.option(
    "--image", default=None, help="Processing image [default: the plan's, else earthmon-processing:dev]."
)
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="[default: <plan dir>/local]")
@click.option("--env", multiple=True, help="KEY=VALUE for the worker (repeatable).")
@click.option(
    "--volume",
    "volumes",
    multiple=True,
    help="Extra docker bind mount HOST:CONTAINER[:ro], e.g. a local catalog the item hrefs point into.",
)
@click.option(
    "--sdk-local",
    is_flag=True,
    help="Run through SageMaker SDK local mode instead (one instance, S3Prefix, FullyReplicated, EndOfJob; "
    "needs Docker and docker compose).",
)
@click.option(
    "--role", default="arn:aws:iam::000000000000:role/local", show_default=True, help="For --sdk-local."
)
@friendly_errors
def local(
    plan_path,
    instances,
    parallel,
    job_names,
    round_,
    no_docker,
    image,
    workdir,
    env,
    volumes,
    sdk_local,
    role,
) -> None:
    """Run a plan on this machine the way SageMaker would (sharded instances, own /opt/ml trees)."""
    from launcher.aws import client
    from launcher.ndvi import local_run as runner
    from launcher.ndvi.requests import processing_request
    from launcher.secrets import parse_env_options

    if instances < 1 or instances > 100:
        raise click.UsageError(f"--instances must be within 1..100, got {instances}")
    if parallel is not None and parallel < 1:
        raise click.UsageError(f"--parallel must be >= 1, got {parallel}")
    runner.check_volumes(volumes)
    options = parse_env_options(env)
    console = _console()
    the_plan = _load_plan(plan_path)
    product_names = [n for n in job_names if the_plan.product_job(n) is not None]
    ndvi_names = [n for n in job_names if n not in product_names]
    jobs = runner.select_jobs(the_plan, ndvi_names, round_) if ndvi_names or not product_names else []
    submission = runner.local_submission(the_plan, image, role)
    names = runner.secret_names(submission, options)
    secrets = _secret_values(names, options.given, console, "launcher local")
    if not no_docker:
        problem = runner.docker_problem()
        if problem:  # before any tree is touched: the last run's outputs and status stay as they were
            raise click.ClickException(
                f"no Docker engine to run {submission.image} ({problem}): start Docker, or run the worker as a "
                "process with --no-docker"
            )
    s3 = client("s3")
    if sdk_local:
        failed = 0
        for job in jobs:
            console.print(f"{job.name}: SageMaker SDK local mode (1 instance, FullyReplicated, EndOfJob)")
            try:
                runner.run_sdk_local(
                    s3,
                    the_plan,
                    job,
                    submission.image,
                    role,
                    {**submission.environment, **options.plain, **secrets},
                )
                console.print(f"{job.name}: Completed")
            except RuntimeError as exc:  # local mode raises when the container exits non-zero
                failed += 1
                console.print(
                    f"[red]{job.name}: Failed[/] ({str(exc)[:300]}); the per-host report is in the output"
                )
        console.print(
            f"{len(jobs) - failed}/{len(jobs)} job(s) completed; outputs under {the_plan.output_prefix}"
        )
        if failed:
            sys.exit(1)
        return
    from launcher.ndvi.requests import product_request

    workdir_path = Path(workdir) if workdir else _plan_file(plan_path).parent / "local"
    runs = [(job, processing_request(the_plan, job, submission, secrets), instances) for job in jobs]
    for name in product_names:  # stage 2: one instance, as submitted
        product_round, product_job = the_plan.product_job(name)
        runs.append(
            (product_job, product_request(the_plan, product_round, product_job, submission, secrets), 1)
        )
    failed = _run_locally(
        s3,
        the_plan,
        runs,
        workdir_path,
        no_docker,
        submission.image,
        options.plain,
        names,
        volumes,
        parallel,
        console,
    )
    if failed:
        sys.exit(1)


def _run_locally(
    s3, the_plan, runs, workdir, no_docker, image, extra_env, names, volumes, parallel, console
) -> int:
    """Run (job, request, instances) triples with `launcher.ndvi.local_run`; returns how many failed."""
    from launcher.ndvi import local_run as runner

    failed = 0
    for job, request, instances in runs:
        result = runner.run_job(
            s3,
            the_plan,
            job,
            request,
            Path(workdir),
            instances,
            docker=not no_docker,
            image=image,
            extra_env=extra_env,
            redact=names,
            volumes=volumes,
            parallel=parallel,
            on_event=console.print,
        )
        for inst in result.instances:
            if inst.exit_code != 0:
                console.print(
                    f"[red]{job.name} {inst.host} exited {inst.exit_code}[/]: "
                    f"{inst.message.strip() or 'no message (see the log)'} (log: {inst.log})"
                )
        console.print(f"{job.name}: {result.status}")
        failed += result.status != "Completed"
    console.print(
        f"{len(runs) - failed}/{len(runs)} job(s) completed; outputs under {the_plan.output_prefix}"
    )
    return failed


# ------------------------------------------------------------------------------------ stage 2: composite, mosaic


_stage2_options = [
    click.option("--plan", "plan_path", required=True, help="DIR/plan.json of the run (stage 1 done)."),
    click.option(
        "--dtype",
        type=click.Choice(["int16", "float32"]),
        default=None,
        help="Product encoding [default: the worker's, int16 NDVI x 10000].",
    ),
    click.option(
        "--partial",
        is_flag=True,
        help="Go on although some inputs have no output yet (scenes of stage 1, or tiles of the composites).",
    ),
    click.option(
        "--volume-gb",
        type=int,
        default=None,
        help="EBS volume per job [default: twice its inputs + 10, >= 30].",
    ),
    click.option("--image", default=None, help="Processing image URI [default: the plan's submission]."),
    click.option("--role", default=None, help="IAM role ARN [default: the plan's submission]."),
    click.option("--instance-type", default=None, help="[default: the plan's submission, else the plan's]"),
    click.option(
        "--max-runtime", type=int, default=None, help="Seconds per job [default: the submission's]."
    ),
    click.option("--env", multiple=True, help="KEY=VALUE for the container (repeatable; secrets by name)."),
    click.option(
        "--dry-run", is_flag=True, help="Print the CreateProcessingJob requests as JSON; change nothing."
    ),
    click.option(
        "--local",
        "run_local",
        is_flag=True,
        help="Run the jobs on this machine (like `launcher local`) instead of submitting them.",
    ),
    click.option(
        "--no-docker", is_flag=True, help="With --local: run the worker as a process, not the image."
    ),
    click.option(
        "--workdir", type=click.Path(file_okay=False), default=None, help="[default: <plan dir>/local]"
    ),
    click.option("--force", is_flag=True, help="Plan a new round even while jobs of the run are running."),
    click.option("--skip-preflight", is_flag=True, help="Do not read the instance quota first."),
]


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if value is not None and not lo <= value <= hi:
        raise click.UsageError(f"{name} must be within {lo}..{hi}, got {value}")


def _stage2(kind: str, o: dict, make_round, needs) -> None:
    """Plan a stage-2 round from the run's outputs, record it in plan.json, then submit it, run it here (--local) or
    print its requests (--dry-run). `make_round(plan, outputs)` plans it (launcher.ndvi.products); `needs(plan,
    outputs)` says what is missing for it (refused unless --partial)."""
    import dataclasses

    from launcher.aws import client
    from launcher.ndvi import local_run as runner
    from launcher.ndvi import store
    from launcher.ndvi.status import describe_all, scan
    from launcher.ndvi.submit import build_product_requests
    from launcher.ndvi.watch import ACTIVE
    from launcher.secrets import parse_env_options, redact_request

    _check_int("--volume-gb", o["volume_gb"], 1, 16384)
    _check_int("--max-runtime", o["max_runtime"], 1, 777600)
    if o["no_docker"] and not o["run_local"]:
        raise click.UsageError("--no-docker goes with --local")
    console = _console()
    the_plan = _load_plan(o["plan_path"])
    plan_dir = _plan_file(o["plan_path"]).parent
    when = f"launcher {kind}"
    extra_env: dict[str, str] = {}
    if o["run_local"]:
        options = parse_env_options(o["env"])
        extra_env = options.plain
        submission = runner.local_submission(the_plan, o["image"], o["role"] or runner.DEFAULT_ROLE)
        if o["instance_type"] or o["max_runtime"]:
            submission = dataclasses.replace(
                submission,
                instance_type=o["instance_type"] or submission.instance_type,
                max_runtime_seconds=o["max_runtime"] or submission.max_runtime_seconds,
            )
        names = runner.secret_names(submission, options)
        secrets = _secret_values(names, options.given, console, when, o["dry_run"])
        if not o["no_docker"] and not o["dry_run"]:
            problem = runner.docker_problem()
            if problem:
                raise click.ClickException(
                    f"no Docker engine to run {submission.image} ({problem}): start Docker, or add --no-docker"
                )
    else:
        submission, given = _submission(
            the_plan, o["image"], o["role"], o["instance_type"], None, o["max_runtime"], o["env"], ()
        )
        names = list(submission.env_from_caller)
        secrets = _secret_values(names, given, console, when, o["dry_run"])
    s3 = client("s3")
    outputs = scan(s3, the_plan)
    missing = needs(the_plan, outputs)
    if missing and not o["partial"]:
        raise click.ClickException(
            f"{missing}: wait for the jobs (`launcher watch`) or rerun them (`launcher resume`), or pass --partial "
            "to go on without them"
        )
    if missing:
        console.print(f"[yellow]--partial: {missing}[/]")
    descriptions = describe_all(client("sagemaker"), the_plan, plan_dir)
    active = [n for n, d in descriptions.items() if d and d.get("ProcessingJobStatus") in ACTIVE]
    if active and not o["force"]:
        raise click.ClickException(
            f"{len(active)} job(s) of the run still running ({', '.join(active[:3])}"
            f"{' ...' if len(active) > 3 else ''}): wait for them (`launcher watch`), or pass --force"
        )
    new_plan, round_, manifests = make_round(the_plan, outputs)
    requests = build_product_requests(new_plan, round_, round_.jobs, submission, secrets)
    _describe_round(console, round_)
    if o["dry_run"]:
        click.echo(json.dumps([redact_request(r, names) for r in requests], indent=2))
        return
    store.upload_manifests(s3, new_plan, manifests)
    store.save_manifests(manifests, plan_dir)
    if not o["run_local"] and the_plan.submission is None:
        new_plan = dataclasses.replace(new_plan, submission=submission)  # what `resume` reuses
    store.save_plan(new_plan, _plan_file(o["plan_path"]))
    console.print(f"{kind} round {round_.round} recorded in {_plan_file(o['plan_path'])}")
    if o["run_local"]:
        workdir = Path(o["workdir"]) if o["workdir"] else plan_dir / "local"
        runs = [(job, request, 1) for job, request in zip(round_.jobs, requests, strict=True)]
        failed = _run_locally(
            s3, new_plan, runs, workdir, o["no_docker"], submission.image, extra_env, names, (), None, console
        )
        if failed:
            sys.exit(1)
        return
    _submit_jobs(new_plan, round_.jobs, submission, secrets, False, o["skip_preflight"], console, requests)


def _describe_round(console, round_) -> None:
    jobs = round_.jobs
    gib = sum(j.input_bytes for j in jobs) / 2**30
    if round_.kind == "composite":
        tiles = [len(j.tiles) for j in jobs]
        console.print(
            f"composite round {round_.round}: {sum(tiles)} tile(s) in {len(jobs)} job(s) of {min(tiles)}-{max(tiles)} "
            f"tiles (every date of a tile in one manifest, one instance per job), {sum(j.objects for j in jobs)} "
            f"objects, {gib:.2f} GiB"
        )
    else:
        console.print(
            f"mosaic round {round_.round}: one job over {jobs[0].objects} {round_.source} product(s) (its manifest "
            f"lists the items; their COGs, {gib:.2f} GiB, are read in place from S3, overviews only)"
        )


def _created() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _scenes_missing(the_plan, outputs) -> str | None:
    n = the_plan.scene_count - len(outputs.scenes)
    return f"{n} of {the_plan.scene_count} scene(s) have no output yet" if n else None


@click.command()
@click.option(
    "--method",
    type=click.Choice(["max", "median", "mean"]),
    required=True,
    help="Per-pixel reduction over time.",
)
@click.option(
    "--period",
    metavar="START/END",
    default=None,
    help="Dates kept, both inclusive (2023-12-01/2023-12-31) [default: each tile's first and last date].",
)
@click.option(
    "--jobs", type=int, default=25, show_default=True, help="Jobs (tile groups; one instance each)."
)
@click.option(
    "--memory-mb", type=int, default=None, help="The worker's budget for one window's stack [default: 256]."
)
@with_options(_stage2_options)
@friendly_errors
def composite(method, period, jobs, memory_mb, **o) -> None:
    """Stage 2: temporal composites per MGRS tile of the run's per-scene outputs, as Processing jobs.

    Tiles are grouped into --jobs jobs; each job's ManifestFile lists both files (<id>_ndvi.tif, <id>_ndvi.json) of
    every date of its tiles and runs on one instance (FullyReplicated): ShardedByS3Key would split a tile's dates
    across instances. The container runs `ndvi-worker composite --input ... --output ... --method ...`.
    """
    from launcher.ndvi.products import MAX_JOBS, plan_composites

    _check_int("--jobs", jobs, 1, MAX_JOBS)
    _check_int("--memory-mb", memory_mb, 8, 1_000_000)
    args = ["--method", method]
    if period is not None:
        try:
            from ndvi_worker.composite import parse_period

            parse_period(period)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        args += ["--period", period.strip()]
    if o["dtype"]:
        args += ["--dtype", o["dtype"]]
    if memory_mb is not None:
        args += ["--memory-mb", str(memory_mb)]
    _stage2(
        "composite",
        o,
        lambda p, out: plan_composites(p, out, args, jobs, _created(), o["volume_gb"]),
        _scenes_missing,
    )


@click.command()
@click.option(
    "--source",
    type=click.Choice(["auto", "scenes", "composites"]),
    default="auto",
    show_default=True,
    help="Mosaic the per-scene outputs or the latest composites (auto: composites when the plan has some).",
)
@click.option("--resolution", type=float, default=None, help="Pixel size in degrees [default: 0.01].")
@click.option(
    "--bbox", metavar="W,S,E,N", default=None, help="Extent in degrees [default: the inputs' extent]."
)
@with_options(_stage2_options)
@friendly_errors
def mosaic(source, resolution, bbox, **o) -> None:
    """Stage 2: the EPSG:4326 mosaic of the run (with its STAC collection and offline viewer) as one Processing job.

    Its ManifestFile lists the STAC items of every per-scene output of stage 1, or of every composite of the latest
    composite round (with its retries), and nothing else: the container runs `ndvi-worker mosaic --input ...
    --output ... --assets-root s3://<the manifest's prefix>`, which reads each COG's overviews in place from S3.
    """
    from launcher.ndvi.products import composite_done, latest_composite_family, plan_mosaic

    args: list[str] = []
    try:
        from ndvi_worker.mosaic import check_resolution, parse_bbox

        if resolution is not None:
            check_resolution(resolution)
            args += ["--resolution", repr(float(resolution))]
        if bbox is not None:
            parse_bbox(bbox)
            args += ["--bbox", bbox.strip()]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if o["dtype"]:
        args += ["--dtype", o["dtype"]]

    def chosen(the_plan) -> str:
        if source != "auto":
            return source
        return "composites" if latest_composite_family(the_plan) is not None else "scenes"

    def needs(the_plan, outputs) -> str | None:
        if chosen(the_plan) == "scenes":
            return _scenes_missing(the_plan, outputs)
        family = latest_composite_family(the_plan)
        if family is None:
            return None  # plan_mosaic says what to do
        wanted = [t for j in family.jobs for t in j.tiles]
        n = len(set(wanted) - set(composite_done(the_plan, outputs, family)))
        return (
            f"{n} of {len(wanted)} tile(s) of composite round {family.round} have no composite yet"
            if n
            else None
        )

    _stage2(
        "mosaic",
        o,
        lambda p, out: plan_mosaic(p, out, chosen(p), args, _created(), o["volume_gb"]),
        needs,
    )


def _resume_products(
    the_plan, plan_path, jobs, submit_opts, dry_run, no_submit, force, skip_preflight, console
) -> None:
    """`resume` once stage 1 is complete: the latest stage-2 round's jobs never submitted, else a retry round."""
    import dataclasses

    from launcher.aws import client
    from launcher.ndvi import products as pr
    from launcher.ndvi import store
    from launcher.ndvi.status import describe_all, scan
    from launcher.ndvi.submit import build_product_requests
    from launcher.secrets import redact_request

    s3 = client("s3")
    plan_dir = _plan_file(plan_path).parent
    outputs = scan(s3, the_plan)
    todo = pr.product_resume(the_plan, outputs, describe_all(client("sagemaker"), the_plan, plan_dir))
    if todo is None:
        console.print("nothing to resume (stage 2 written too)")
        return
    if todo.active and not force:
        raise click.ClickException(
            f"{len(todo.active)} {todo.kind} job(s) still running ({', '.join(todo.active[:3])}): wait for them "
            "(`launcher watch`), or pass --force"
        )
    submission, secrets = None, {}
    if not no_submit:
        image, role, instance_type, volume_gb, max_runtime, env = submit_opts
        submission, given = _submission(the_plan, image, role, instance_type, None, max_runtime, env, ())
        secrets = _secret_values(submission.env_from_caller, given, console, "launcher resume", dry_run)
    if todo.unsubmitted:
        new_plan, manifests = the_plan, {}
        round_ = pr.family_rounds(the_plan, todo.original)[-1]
        new_jobs = todo.unsubmitted
        console.print(f"{todo.kind} round {round_.round}: {len(new_jobs)} job(s) never submitted")
    else:
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        if todo.kind == "composite":
            n = jobs or len(todo.original.jobs)
            new_plan, round_, manifests = pr.plan_composites(
                the_plan,
                outputs,
                todo.original.args,
                n,
                created,
                tiles=todo.missing,
                retry_of=todo.original.round,
            )
            console.print(
                f"composite round {round_.round} (retry of {todo.original.round}): {len(todo.missing)} tile(s) "
                f"in {len(round_.jobs)} job(s)"
            )
        else:
            new_plan, round_, manifests = pr.plan_mosaic(
                the_plan,
                outputs,
                todo.original.source,
                todo.original.args,
                created,
                retry_of=todo.original.round,
            )
            console.print(f"mosaic round {round_.round} (retry of {todo.original.round})")
        new_jobs = round_.jobs
    if dry_run:
        if submission is not None:
            requests = build_product_requests(new_plan, round_, new_jobs, submission, secrets)
            click.echo(
                json.dumps([redact_request(r, submission.env_from_caller) for r in requests], indent=2)
            )
        return
    requests = None
    if submission is not None:
        requests = build_product_requests(new_plan, round_, new_jobs, submission, secrets)
    if manifests:
        store.upload_manifests(s3, new_plan, manifests)
        store.save_manifests(manifests, plan_dir)
    if submission is not None and new_plan.submission is None:
        new_plan = dataclasses.replace(new_plan, submission=submission)
    store.save_plan(new_plan, _plan_file(plan_path))
    if submission is not None:
        _submit_jobs(new_plan, new_jobs, submission, secrets, False, skip_preflight, console, requests)
    else:
        names = " ".join(f"--job {j.name}" for j in new_jobs)
        console.print(f"--no-submit: `launcher local --plan {plan_path} {names}` runs them here")


COMMANDS = (search, plan, upload, submit, status, watch, resume, local, composite, mosaic)
