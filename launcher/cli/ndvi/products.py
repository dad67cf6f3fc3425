"""Stage 2: `launcher composite` (temporal composites per MGRS tile) and `launcher mosaic` (the run's EPSG:4326
mosaic), planned from the run's outputs as Processing jobs, submitted, run here (--local) or printed (--dry-run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from launcher.cli.console import console as _console
from launcher.cli.console import friendly_errors, with_options
from launcher.cli.ndvi.jobs import created, run_locally, secret_values, submission_settings, submit_jobs

STAGE2_OPTIONS = [
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
    from launcher.ndvi.store import load_plan, plan_file
    from launcher.ndvi.submit import build_product_requests
    from launcher.ndvi.watch import ACTIVE
    from launcher.secrets import parse_env_options, redact_request

    _check_int("--volume-gb", o["volume_gb"], 1, 16384)
    _check_int("--max-runtime", o["max_runtime"], 1, 777600)
    if o["no_docker"] and not o["run_local"]:
        raise click.UsageError("--no-docker goes with --local")
    console = _console()
    the_plan = load_plan(o["plan_path"])
    plan_dir = plan_file(o["plan_path"]).parent
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
        secrets = secret_values(names, options.given, console, when, o["dry_run"])
        if not o["no_docker"] and not o["dry_run"]:
            problem = runner.docker_problem()
            if problem:
                raise click.ClickException(
                    f"no Docker engine to run {submission.image} ({problem}): start Docker, or add --no-docker"
                )
    else:
        submission, given = submission_settings(
            the_plan, o["image"], o["role"], o["instance_type"], None, o["max_runtime"], o["env"], ()
        )
        names = list(submission.env_from_caller)
        secrets = secret_values(names, given, console, when, o["dry_run"])
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
    store.save_plan(new_plan, plan_file(o["plan_path"]))
    console.print(f"{kind} round {round_.round} recorded in {plan_file(o['plan_path'])}")
    if o["run_local"]:
        workdir = Path(o["workdir"]) if o["workdir"] else plan_dir / "local"
        runs = [(job, request, 1) for job, request in zip(round_.jobs, requests, strict=True)]
        failed = run_locally(
            s3, new_plan, runs, workdir, o["no_docker"], submission.image, extra_env, names, (), None, console
        )
        if failed:
            sys.exit(1)
        return
    submit_jobs(new_plan, round_.jobs, submission, secrets, False, o["skip_preflight"], console, requests)


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
@with_options(STAGE2_OPTIONS)
@friendly_errors
def composite(method, period, jobs, memory_mb, **o) -> None:
    """Stage 2: temporal composites per MGRS tile of the run's per-scene outputs, as Processing jobs.

    Tiles are grouped into --jobs jobs; each job's ManifestFile lists both files (<id>_ndvi.tif, <id>_ndvi.json) of
    every date of its tiles and runs on one instance (FullyReplicated): ShardedByS3Key would split a tile's dates
    across instances. The container runs `ndvi-worker composite --input ... --output ... --method ...`.
    """
    from launcher.ndvi.products import MAX_JOBS, composite_args, plan_composites, scenes_missing

    _check_int("--jobs", jobs, 1, MAX_JOBS)
    _check_int("--memory-mb", memory_mb, 8, 1_000_000)
    try:
        args = composite_args(method, period, o["dtype"], memory_mb)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _stage2(
        "composite",
        o,
        lambda p, out: plan_composites(p, out, args, jobs, created(), o["volume_gb"]),
        scenes_missing,
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
@with_options(STAGE2_OPTIONS)
@friendly_errors
def mosaic(source, resolution, bbox, **o) -> None:
    """Stage 2: the EPSG:4326 mosaic of the run (with its STAC collection and offline viewer) as one Processing job.

    Its ManifestFile lists the STAC items of every per-scene output of stage 1, or of every composite of the latest
    composite round (with its retries), and nothing else: the container runs `ndvi-worker mosaic --input ...
    --output ... --assets-root s3://<the manifest's prefix>`, which reads each COG's overviews in place from S3.
    """
    from launcher.ndvi.products import mosaic_args, mosaic_inputs_missing, mosaic_source, plan_mosaic

    try:
        args = mosaic_args(resolution, bbox, o["dtype"])
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _stage2(
        "mosaic",
        o,
        lambda p, out: plan_mosaic(p, out, mosaic_source(p, source), args, created(), o["volume_gb"]),
        lambda p, out: mosaic_inputs_missing(p, out, source),
    )
