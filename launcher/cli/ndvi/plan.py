"""`launcher plan`: shard the items into balanced ManifestFile jobs and record the run in plan.json (uploaded to its
S3 prefix); `launcher upload`: upload a run planned with --no-upload."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import click

from launcher.cli.console import aws_hint, friendly_errors, gc_paused
from launcher.cli.console import console as _console


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
@click.option(
    "--seconds-per-scene",
    type=float,
    default=None,
    help="Processing time of one full scene on one instance, for the estimate [default: 4 s, the worker's steady "
    "state measured on a 2-vCPU machine over an S3-like link, taken as an ml.m5.xlarge's; see the README's "
    "planetary projection].",
)
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
@gc_paused
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
        seconds_per_scene=p.DEFAULT_SECONDS_PER_SCENE if seconds_per_scene is None else seconds_per_scene,
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
    else:
        where = f"copied in {len(to_write)} batch(es) of at most {p.MAX_ITEMS_PER_BATCH} (JSON Lines) "
        if no_upload:
            where += (
                f"to be written under {the_plan.s3_prefix}items/ (kept in {out / 'items'} until uploaded)"
            )
        else:
            where += f"under {the_plan.s3_prefix}items/"
    console.print(f"item JSONs {where}; outputs -> {the_plan.output_prefix}")
    console.print(
        f"estimate: {est.instance_hours:.1f} instance-hours, ${est.cost_usd:,.2f} at ${est.price_per_hour}/h, "
        f"about {est.wall_hours * 60:.0f} min if all jobs run at once ({est.seconds_per_scene:g} s per scene, "
        f"{est.startup_seconds:g} s start-up per job)"
    )
    fewest = p.fewest_instances(the_plan.scene_count, est.seconds_per_scene, p.DEADLINE_SECONDS)
    if fewest:
        n_jobs, per_job = p.layout_for(fewest, instances_per_job)
        hours = p.estimate(
            [(n, per_job) for n in p.even_split(the_plan.scene_count, n_jobs)],
            est.price_per_hour,
            est.seconds_per_scene,
        )
        console.print(
            f"fewest instances to finish within {p.DEADLINE_SECONDS / 60:.0f} min: {fewest}; as --jobs {n_jobs} "
            f"--instances-per-job {per_job}: {hours.instance_hours:.1f} instance-hours, ${hours.cost_usd:,.2f}, "
            f"about {hours.wall_hours * 60:.0f} min"
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
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("uploading item JSONs", total=sum(len(b) for b in to_write.values()))
            store.upload_run(s3, the_plan, manifests, to_write, on_batch=lambda n: bar.advance(task, n))
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
@gc_paused
def upload(plan_path) -> None:
    """Upload a run planned with --no-upload: its item JSONs, manifests and plan.json, to its S3 prefix."""
    from launcher.ndvi import store
    from launcher.ndvi.store import load_plan, plan_file

    console = _console()
    the_plan = load_plan(plan_path)
    manifests, batches = store.local_run_files(the_plan, plan_file(plan_path).parent)
    _upload(console, the_plan, manifests, batches, planning=False)
    console.print(
        f"uploaded {sum(len(b) for b in batches.values())} item JSON(s) in {len(batches)} batch(es), "
        f"{len(manifests)} manifest(s) and plan.json to {the_plan.s3_prefix}"
    )
