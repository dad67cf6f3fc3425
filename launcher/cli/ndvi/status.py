"""`launcher status` and `launcher watch`: the run's jobs by state, scenes (and stage-2 products) done, failures and
cost so far."""

from __future__ import annotations

import json
import sys
import time

import click

from launcher.cli.console import console as _console
from launcher.cli.console import friendly_errors


def _gather(the_plan, plan_path: str):
    from launcher.aws import client
    from launcher.ndvi.status import gather
    from launcher.ndvi.store import plan_file

    return gather(client("s3"), client("sagemaker"), the_plan, plan_file(plan_path).parent)


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
    from launcher.ndvi.store import load_plan

    the_plan = load_plan(plan_path)
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

    from launcher.ndvi.store import load_plan

    if not interval > 0 or interval > 86400:
        raise click.UsageError(f"--interval must be within 0..86400 seconds (above 0), got {interval}")
    if timeout is not None and not timeout >= 0:
        raise click.UsageError(f"--timeout must be >= 0 seconds, got {timeout}")
    console = _console()
    the_plan = load_plan(plan_path)
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
