"""`launcher submit`: one Processing job per manifest of the plan."""

from __future__ import annotations

import click

from launcher.cli.console import console as _console
from launcher.cli.console import friendly_errors, with_options
from launcher.cli.ndvi.jobs import SUBMIT_OPTIONS, secret_values, submission_settings, submit_jobs


@click.command()
@click.option("--plan", "plan_path", required=True, help="DIR/plan.json from `launcher plan`.")
@with_options(SUBMIT_OPTIONS)
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
    from launcher.ndvi.store import load_plan, plan_file

    console = _console()
    the_plan = load_plan(plan_path)
    submission, given = submission_settings(
        the_plan, image, role, instance_type, volume_gb, max_runtime, env, worker_args
    )
    jobs = list(the_plan.jobs) if round_ is None else the_plan.jobs_of_round(round_)
    if not jobs:
        raise click.UsageError(f"no jobs in round {round_} of the plan (rounds: {the_plan.rounds})")
    secrets = secret_values(submission.env_from_caller, given, console, "launcher submit", dry_run)
    if not dry_run:
        import dataclasses

        from launcher.ndvi.submit import build_requests

        build_requests(the_plan, jobs, submission, secrets)  # invalid settings are never recorded
        # recorded before sending, so `resume` knows them even if this submission is interrupted
        store.save_plan(dataclasses.replace(the_plan, submission=submission), plan_file(plan_path))
    submit_jobs(the_plan, jobs, submission, secrets, dry_run, skip_preflight, console)
