"""`launcher local`: run a plan's jobs on this machine the way SageMaker would (sharded instances, their own /opt/ml
trees), in Docker or as processes, or through SageMaker SDK local mode."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from launcher.cli.console import console as _console
from launcher.cli.console import friendly_errors
from launcher.cli.ndvi.jobs import run_locally, secret_values


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
    from launcher.ndvi.store import load_plan, plan_file
    from launcher.secrets import parse_env_options

    if instances < 1 or instances > 100:
        raise click.UsageError(f"--instances must be within 1..100, got {instances}")
    if parallel is not None and parallel < 1:
        raise click.UsageError(f"--parallel must be >= 1, got {parallel}")
    runner.check_volumes(volumes)
    options = parse_env_options(env)
    console = _console()
    the_plan = load_plan(plan_path)
    product_names = [n for n in job_names if the_plan.product_job(n) is not None]
    ndvi_names = [n for n in job_names if n not in product_names]
    if sdk_local and product_names:
        raise click.UsageError(
            f"--sdk-local runs NDVI jobs only; {', '.join(product_names[:3])} "
            f"{'is a composite/mosaic job' if len(product_names) == 1 else 'are composite/mosaic jobs'}: run "
            "stage 2 with `launcher composite --local` / `launcher mosaic --local`, or drop --sdk-local"
        )
    jobs = runner.select_jobs(the_plan, ndvi_names, round_) if ndvi_names or not product_names else []
    submission = runner.local_submission(the_plan, image, role)
    names = runner.secret_names(submission, options)
    secrets = secret_values(names, options.given, console, "launcher local")
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

    workdir_path = Path(workdir) if workdir else plan_file(plan_path).parent / "local"
    runs = [(job, processing_request(the_plan, job, submission, secrets), instances) for job in jobs]
    for name in product_names:  # stage 2: one instance, as submitted
        product_round, product_job = the_plan.product_job(name)
        runs.append(
            (product_job, product_request(the_plan, product_round, product_job, submission, secrets), 1)
        )
    failed = run_locally(
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
