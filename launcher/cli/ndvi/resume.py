"""`launcher resume`: a new round for the scenes without a valid output; once every scene has one, stage 2 (the
latest composite or mosaic round's jobs never submitted, else a retry round)."""

from __future__ import annotations

import json

import click

from launcher.cli.console import console as _console
from launcher.cli.console import friendly_errors, gc_paused, with_options
from launcher.cli.ndvi.jobs import SUBMIT_OPTIONS, created, secret_values, submission_settings, submit_jobs


@click.command()
@click.option("--plan", "plan_path", required=True, help="DIR/plan.json.")
@click.option("--jobs", type=int, default=None, help="Jobs for the new round [default: keep scenes per job].")
@with_options(SUBMIT_OPTIONS)
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
@gc_paused
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
    from launcher.ndvi.store import load_plan, plan_file

    if jobs is not None and jobs < 1:
        raise click.UsageError(f"--jobs must be >= 1, got {jobs}")
    console = _console()
    the_plan = load_plan(plan_path)
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
        submission, given = submission_settings(
            the_plan, image, role, instance_type, volume_gb, max_runtime, env, worker_args
        )
        secrets = secret_values(submission.env_from_caller, given, console, "launcher resume", dry_run)
    new_plan, new_jobs, manifests, batches = add_round(the_plan, missing, jobs)
    round_ = new_jobs[0].round
    console.print(f"round {round_}: {len(missing)} scene(s) in {len(new_jobs)} job(s)")
    if dry_run:
        if submission is not None:
            submit_jobs(new_plan, new_jobs, submission, secrets, True, True, console)
        return
    latest = the_plan.latest_scenes()  # a copied item as the last round's batch holds it (fixes go there)
    items = store.fetch_items(s3, [latest[m.item_id] for m in missing]) if batches else {}
    to_write = {uri: [items[i] for i in ids] for uri, ids in batches.items()}
    store.save_manifests(manifests, plan_file(plan_path).parent)
    store.save_items(to_write, plan_file(plan_path).parent)  # `launcher upload` can upload the run again
    store.upload_run(s3, new_plan, manifests, to_write)
    if submission is not None:
        new_plan = dataclasses.replace(new_plan, submission=submission)
    store.save_plan(new_plan, plan_file(plan_path))
    if submission is not None:
        submit_jobs(new_plan, new_jobs, submission, secrets, False, skip_preflight, console)


def _resume_products(
    the_plan, plan_path, jobs, submit_opts, dry_run, no_submit, force, skip_preflight, console
) -> None:
    """`resume` once stage 1 is complete: the latest stage-2 round's jobs never submitted, else a retry round."""
    import dataclasses

    from launcher.aws import client
    from launcher.ndvi import products as pr
    from launcher.ndvi import store
    from launcher.ndvi.status import describe_all, scan
    from launcher.ndvi.store import plan_file
    from launcher.ndvi.submit import build_product_requests
    from launcher.secrets import redact_request

    s3 = client("s3")
    plan_dir = plan_file(plan_path).parent
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
        submission, given = submission_settings(
            the_plan, image, role, instance_type, None, max_runtime, env, ()
        )
        secrets = secret_values(submission.env_from_caller, given, console, "launcher resume", dry_run)
    if todo.unsubmitted:
        new_plan, manifests = the_plan, {}
        round_ = pr.family_rounds(the_plan, todo.original)[-1]
        new_jobs = todo.unsubmitted
        console.print(f"{todo.kind} round {round_.round}: {len(new_jobs)} job(s) never submitted")
    else:
        new_plan, round_, manifests = pr.retry_round(the_plan, outputs, todo, jobs, created())
        retried = todo.original.round
        if todo.kind == "composite":
            console.print(
                f"composite round {round_.round} (retry of {retried}): {len(todo.missing)} tile(s) "
                f"in {len(round_.jobs)} job(s)"
            )
        else:
            console.print(f"mosaic round {round_.round} (retry of {retried})")
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
    store.save_plan(new_plan, plan_file(plan_path))
    if submission is not None:
        submit_jobs(new_plan, new_jobs, submission, secrets, False, skip_preflight, console, requests)
    else:
        names = " ".join(f"--job {j.name}" for j in new_jobs)
        console.print(f"--no-submit: `launcher local --plan {plan_path} {names}` runs them here")
