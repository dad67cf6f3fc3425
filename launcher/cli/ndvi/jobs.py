"""What the commands that send or run jobs share (submit, resume, local, composite, mosaic): the submission settings
and secrets from the options, sending the requests (the quota preflight first), running them on this machine, and
the options `submit` and `resume` have in common."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import click


def created() -> str:
    """Now, as a round's `created` time."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def submission_settings(the_plan, image, role, instance_type, volume_gb, max_runtime, env, worker_args):
    """The submission settings (the plan's, overridden by the options) and the secret values given on this
    command line (used for this invocation only, never stored)."""
    from launcher.ndvi.submit import merge_submission
    from launcher.secrets import parse_env_options

    options = parse_env_options(env)
    submission = merge_submission(
        the_plan, options, image, role, instance_type, volume_gb, max_runtime, worker_args
    )
    return submission, options.given


def secret_values(names, given, console, when: str, dry_run: bool = False) -> dict[str, str]:
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


def submit_jobs(
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


SUBMIT_OPTIONS = [
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


def run_locally(
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
