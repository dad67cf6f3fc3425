"""The model workflow's commands: ``train``, ``tune``, ``deploy`` and ``predict`` (the segmentation model).

Thin: options -> typed specs -> pure request builders (:mod:`launcher.model.requests`, :mod:`launcher.model.tiles`)
-> the AWS edge (:mod:`launcher.aws` clients: adaptive retries, rate limit, ``AWS_ENDPOINT_URL``). ``--dry-run``
prints the requests instead of sending them; ``--local`` uses SageMaker SDK local mode (Docker).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import click

from launcher.aws import check_name
from launcher.cli.console import FiniteFloat, friendly_errors, pairs, print_json, with_options
from launcher.cli.console import console as _console

TERMINAL_TRAINING = {"Completed", "Failed", "Stopped"}
TERMINAL_TUNING = {"Completed", "Failed", "Stopped"}


def _sagemaker():
    from launcher.aws import client

    return client("sagemaker")


# ----------------------------------------------------------------------------------------------- shared options
TRAINING_OPTIONS = [
    click.option("--image", required=True, help="Training image URI (ECR), e.g. ACCOUNT.dkr.ecr.REGION..."),
    click.option("--role", required=True, help="IAM role ARN SageMaker assumes for the job."),
    click.option(
        "--channels",
        default=None,
        help="s3://BUCKET/PREFIX of prepared data: train/, validation/, train_annotation/, "
        "validation_annotation/ and, when present, label_map/, pretrained/, model/.",
    ),
    click.option(
        "--channel",
        "channel_pairs",
        multiple=True,
        metavar="NAME=URI",
        help="A channel explicitly (repeatable; overrides --channels for that name).",
    ),
    click.option("--hp", "hp_pairs", multiple=True, metavar="KEY=VALUE", help="Hyperparameter (repeatable)."),
    click.option("--output", default=None, help="s3:// output path [default: <channels>/output/]."),
    click.option(
        "--checkpoint", default=None, help="s3:// checkpoint URI [default: <output>/<job>/checkpoints/]."
    ),
    click.option("--instance-type", default="ml.g4dn.xlarge", show_default=True),
    click.option("--instance-count", type=int, default=1, show_default=True),
    click.option("--volume-gb", type=int, default=50, show_default=True),
    click.option("--max-runtime", type=int, default=24 * 3600, show_default=True, help="Seconds."),
    click.option("--spot/--no-spot", default=False, show_default=True, help="Managed spot training."),
    click.option("--max-wait", type=int, default=None, help="Spot: seconds to wait for capacity + run."),
    click.option(
        "--data-format",
        type=click.Choice(["jpg", "geotiff"]),
        default="jpg",
        show_default=True,
        help="Image channels' content: built-in JPG/PNG, or GeoTIFF (prepare-sn6 --format).",
    ),
    click.option("--name", default=None, help="Job name [default: a prefix and the time]."),
    click.option("--tag", "tag_pairs", multiple=True, metavar="KEY=VALUE", help="Tag (repeatable)."),
    click.option("--dry-run", is_flag=True, help="Print the request, send nothing."),
    click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the job to its end."),
]


def _training_spec(
    opts: Mapping[str, Any], discover: bool, script_mode: bool = False, metrics: tuple | None = None
):
    from launcher.aws import client
    from launcher.model.channels import existing_channels
    from launcher.model.requests import OPTIONAL_CHANNELS, REQUIRED_CHANNELS, TrainingSpec, channels_under
    from launcher.model.requests import parse_hyperparameters as parse_hp

    channels: dict[str, str] = {}
    if script_mode:
        if opts["channels"]:
            raise click.UsageError(
                "with --entry-point, name each channel your script reads: --channel NAME=s3://... (repeatable; "
                "--channels is the built-in model's data layout)"
            )
        if not opts["output"]:
            raise click.UsageError("with --entry-point, give --output s3://... (where the model and code go)")
    elif opts["channels"]:
        present = existing_channels(client("s3"), opts["channels"]) if discover else set()
        if discover:
            missing = [c for c in REQUIRED_CHANNELS if c not in present]
            if missing:
                raise click.ClickException(
                    f"{opts['channels']} has no {', '.join(m + '/' for m in missing)}: prepare the data first "
                    "(python -m segmentation_trainer prepare-sn6) and upload the whole folder"
                )
        channels = channels_under(opts["channels"], present & set(OPTIONAL_CHANNELS))
    channels.update(pairs(opts["channel_pairs"], "--channel"))
    if not channels and not script_mode:
        raise click.UsageError("give the data: --channels s3://BUCKET/PREFIX (or --channel NAME=URI ...)")
    output = opts["output"]
    if not output:
        if not opts["channels"]:
            raise click.UsageError("give --output s3://... (no --channels to derive it from)")
        output = opts["channels"].rstrip("/") + "/output/"
    return TrainingSpec(
        image=opts["image"],
        role=opts["role"],
        channels=channels,
        output_path=output,
        hyperparameters=parse_hp(opts["hp_pairs"]),
        instance_type=opts["instance_type"],
        instance_count=opts["instance_count"],
        volume_gb=opts["volume_gb"],
        max_runtime_s=opts["max_runtime"],
        spot=opts["spot"],
        max_wait_s=opts["max_wait"],
        checkpoint_s3_uri=opts["checkpoint"],
        data_format=opts["data_format"],
        tags=pairs(opts["tag_pairs"], "--tag"),
        script_mode=script_mode,
        metric_definitions=metrics,
    )


def _poll(
    describe: Callable[[], dict[str, Any]], status_key: str, terminal: set[str], interval: float, label
):
    console = _console()
    last = None
    with console.status(f"{label}: starting") as status:
        while True:
            desc = describe()
            state = desc.get(status_key)
            detail = desc.get("SecondaryStatus") or ""
            counters = desc.get("TrainingJobStatusCounters")
            text = f"{label}: {state}" + (f" / {detail}" if detail else "")
            if counters:
                text += " (" + ", ".join(f"{k} {v}" for k, v in counters.items() if v) + ")"
            if text != last:
                status.update(text)
                last = text
            if state in terminal:
                return desc
            time.sleep(interval)


# ----------------------------------------------------------------------------------------------- train
@click.command("train")
@with_options(TRAINING_OPTIONS)
@click.option(
    "--entry-point",
    default=None,
    metavar="PATH",
    help="Run your own training script in the image (script mode): its folder (or --source-dir) is uploaded as "
    "sourcedir.tar.gz under --output; channels are yours (--channel NAME=URI).",
)
@click.option(
    "--source-dir",
    default=None,
    metavar="DIR",
    help="The code folder uploaded with --entry-point [default: the script's folder]; a relative --entry-point is "
    "then a path inside it.",
)
@click.option(
    "--metric",
    "metric_specs",
    multiple=True,
    metavar="NAME=REGEX",
    help="With --entry-point: a metric your script logs (the regex captures the value; repeatable).",
)
@click.option("--local", is_flag=True, help="Run in SageMaker SDK local mode on this machine (Docker).")
@click.option("--poll", type=float, default=30.0, show_default=True, help="Seconds between status checks.")
@friendly_errors
def train(entry_point, source_dir, metric_specs, local: bool, poll: float, **opts: Any) -> None:
    """Train the segmentation model: a SageMaker training job of the training image.

    \b
    Example:
      launcher train --image URI --role ARN --channels s3://BUCKET/sn6/ \\
          --hp num_classes=2 --hp num_training_samples=2700 --hp algorithm=deeplab --spot

    The job logs metrics the built-in way; MetricDefinitions publish train:loss, validation:mIOU and
    validation:pixel_accuracy to CloudWatch. Checkpoints go to --checkpoint (spot restarts resume from them).

    \b
    Your own script in the same image (script mode, docs/training-image.md):
      launcher train --image URI --role ARN --entry-point src/fit.py --channel train=s3://BUCKET/tiles/ \\
          --output s3://BUCKET/runs/ --hp epochs=20 --metric 'val:loss=val_loss=([0-9.]+)'
    """
    from launcher.model import requests as mj

    script = archive = None
    metrics = None
    if entry_point is not None:
        from launcher.model.source import SCRIPT_HYPERPARAMETERS, pack, parse_metric, resolve_script

        script = resolve_script(entry_point, source_dir)
        archive = pack(
            script
        )  # refuses links leaving the folder and oversized folders, before anything is sent
        metrics = tuple(parse_metric(m) for m in metric_specs)
        reserved = sorted(
            k for k in mj.parse_hyperparameters(opts["hp_pairs"]) if k in SCRIPT_HYPERPARAMETERS
        )
        if reserved:
            raise click.UsageError(f"--hp {', '.join(reserved)}: set by --entry-point, do not give it")
    elif source_dir is not None or metric_specs:
        raise click.UsageError("--source-dir and --metric go with --entry-point (your own training script)")
    spec = _training_spec(
        opts, discover=not opts["dry_run"] and not local, script_mode=script is not None, metrics=metrics
    )
    name = check_name(opts["name"], 63, "job name") if opts["name"] else mj.job_name("segmentation")
    if local:
        from launcher.model.local_mode import estimator_arguments, train_local

        if opts["dry_run"]:
            print_json(estimator_arguments(spec, name, script))
            return
        model_data = train_local(spec, name, script)
        click.echo(model_data)
        return
    if script is not None:
        import dataclasses

        from launcher.model.source import SOURCE_ARCHIVE, script_hyperparameters

        submit_uri = f"{spec.output_path.rstrip('/')}/{name}/source/{SOURCE_ARCHIVE}"
        spec = dataclasses.replace(
            spec, hyperparameters={**spec.hyperparameters, **script_hyperparameters(script, submit_uri)}
        )
    request = mj.training_job_request(spec, name)
    if opts["dry_run"]:
        print_json(request)
        if script is not None:
            _console().print(
                f"would upload {script.source_dir} ({len(archive)} bytes packed) to {submit_uri}"
            )
        return
    sm = _sagemaker()
    if script is not None:
        from launcher.aws import client, parse_s3_uri

        target = parse_s3_uri(submit_uri)
        client("s3").put_object(Bucket=target.bucket, Key=target.key, Body=archive)
        _console().print(f"uploaded {script.source_dir} to {submit_uri}")
    sm.create_training_job(**request)
    _console().print(f"created training job {name}")
    if not opts["wait"]:
        click.echo(name)
        return
    desc = _poll(
        lambda: sm.describe_training_job(TrainingJobName=name),
        "TrainingJobStatus",
        TERMINAL_TRAINING,
        poll,
        name,
    )
    report = {
        "training_job": name,
        "status": desc.get("TrainingJobStatus"),
        "model_data": (desc.get("ModelArtifacts") or {}).get("S3ModelArtifacts"),
        "final_metrics": {m["MetricName"]: m["Value"] for m in desc.get("FinalMetricDataList", [])},
        "billable_seconds": desc.get("BillableTimeInSeconds"),
    }
    print_json(report)
    if desc.get("TrainingJobStatus") != "Completed":
        raise click.ClickException(
            f"training job {name} {desc.get('TrainingJobStatus')}: {desc.get('FailureReason')}"
        )


# ----------------------------------------------------------------------------------------------- tune
@click.command("tune")
@with_options(TRAINING_OPTIONS)
@click.option(
    "--range",
    "range_specs",
    multiple=True,
    metavar="NAME=MIN:MAX[:log|:int] | NAME=A,B",
    help="Tuned range (repeatable; replaces the default range of that name). Defaults: learning_rate 1e-4:1e-1:log, "
    "mini_batch_size 4:64:int, momentum 0.9:0.999, optimizer sgd,adam,nag,rmsprop,adagrad, "
    "weight_decay 1e-5:1e-3:log.",
)
@click.option("--only-ranges", is_flag=True, help="Tune only the --range parameters (drop the defaults).")
@click.option(
    "--objective",
    type=click.Choice(["validation:mIOU", "validation:pixel_accuracy"]),
    default="validation:mIOU",
    show_default=True,
)
@click.option("--max-jobs", type=int, default=10, show_default=True)
@click.option("--max-parallel", type=int, default=2, show_default=True)
@click.option("--strategy", type=click.Choice(["Bayesian", "Random", "Hyperband"]), default="Bayesian")
@click.option("--early-stopping", is_flag=True, help="Let SageMaker stop unpromising training jobs.")
@click.option("--poll", type=float, default=60.0, show_default=True, help="Seconds between status checks.")
@friendly_errors
def tune(
    range_specs, only_ranges, objective, max_jobs, max_parallel, strategy, early_stopping, poll, **opts
) -> None:
    """Tune hyperparameters: a tuning job maximising validation:mIOU, then report the best training job."""
    from launcher.model import requests as mj

    spec = _training_spec(opts, discover=not opts["dry_run"])
    custom = [mj.parse_range(r) for r in range_specs]
    names = {r.name for r in custom}
    ranges = custom if only_ranges else [r for r in mj.DEFAULT_RANGES if r.name not in names] + custom
    if not ranges:
        raise click.UsageError("nothing to tune: give --range or drop --only-ranges")
    name = (
        check_name(opts["name"], mj.TUNING_JOB_NAME_MAX, "tuning job name")
        if opts["name"]
        else mj.job_name("seg-tune", max_length=mj.TUNING_JOB_NAME_MAX)
    )
    request = mj.tuning_job_request(
        spec, name, ranges, objective, max_jobs, max_parallel, strategy, early_stopping=early_stopping
    )
    if opts["dry_run"]:
        print_json(request)
        return
    sm = _sagemaker()
    sm.create_hyper_parameter_tuning_job(**request)
    _console().print(f"created tuning job {name} ({max_jobs} training jobs, {max_parallel} at a time)")
    if not opts["wait"]:
        click.echo(name)
        return

    def describe() -> dict[str, Any]:
        return sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)

    desc = _poll(describe, "HyperParameterTuningJobStatus", TERMINAL_TUNING, poll, name)
    report = mj.best_job_report(desc)
    print_json(report)
    if report["status"] != "Completed":
        raise click.ClickException(f"tuning job {name} {report['status']}: {desc.get('FailureReason')}")
    if not report["best_training_job"]:
        _console().print("[yellow]no best training job reported (did any job log validation:mIOU?)[/]")


# ----------------------------------------------------------------------------------------------- deploy
@click.command("deploy")
@click.option("--name", required=True, help="Endpoint name (also the model and endpoint config names).")
@click.option("--image", required=True, help="Image URI (the training image serves too).")
@click.option("--role", required=True, help="IAM role ARN for the model.")
@click.option("--model-data", default=None, help="s3://.../model.tar.gz (or use --training-job).")
@click.option("--training-job", default=None, help="Take the model.tar.gz of this completed training job.")
@click.option("--instance-type", default="ml.m5.xlarge", show_default=True)
@click.option("--instance-count", type=int, default=1, show_default=True)
@click.option(
    "--env",
    "env_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Serving setting (e.g. EARTHMON_WINDOW_BATCH=8).",
)
@click.option("--tag", "tag_pairs", multiple=True, metavar="KEY=VALUE", help="Tag (repeatable).")
@click.option(
    "--local", is_flag=True, help="Serve with SageMaker SDK local mode on localhost:8080 until Ctrl-C."
)
@click.option("--dry-run", is_flag=True, help="Print the requests, send nothing.")
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait until the endpoint is InService."
)
@click.option("--poll", type=float, default=30.0, show_default=True)
@friendly_errors
def deploy(name, image, role, model_data, training_job, instance_type, instance_count, env_pairs, tag_pairs, local,
           dry_run, wait, poll) -> None:  # fmt: skip
    """Host the model: CreateModel, CreateEndpointConfig and CreateEndpoint (all named NAME)."""
    from launcher.model import requests as mj

    if bool(model_data) == bool(training_job):
        raise click.UsageError(
            "give exactly one of --model-data s3://.../model.tar.gz or --training-job NAME"
        )
    environment = pairs(env_pairs, "--env")
    if training_job and not dry_run:
        desc = _sagemaker().describe_training_job(TrainingJobName=training_job)
        if desc.get("TrainingJobStatus") != "Completed":
            raise click.ClickException(
                f"training job {training_job} is {desc.get('TrainingJobStatus')}, not Completed"
            )
        model_data = desc["ModelArtifacts"]["S3ModelArtifacts"]
    elif training_job:
        model_data = f"s3://<model.tar.gz of {training_job}>/model.tar.gz"
    if local:
        from launcher.model.local_mode import deploy_local, model_arguments

        if dry_run:
            from launcher.secrets import redact_request

            print_json(redact_request(model_arguments(image, model_data, role, environment)))
            return
        _console().print("serving on http://localhost:8080 (SDK local mode); Ctrl-C stops it")
        deploy_local(image, model_data, role, environment)
        return
    spec = mj.DeploySpec(
        name=name,
        image=image,
        model_data=model_data,
        role=role,
        instance_type=instance_type,
        instance_count=instance_count,
        environment=environment,
        tags=pairs(tag_pairs, "--tag"),
    )
    requests = mj.deploy_requests(spec)
    if dry_run:
        from launcher.secrets import redact_request

        print_json(redact_request(requests))
        return
    sm = _sagemaker()
    from launcher.aws import error_code, error_message

    try:
        existing = sm.describe_endpoint(EndpointName=name)
    except Exception as exc:
        if not (error_code(exc) == "ValidationException" and "Could not find" in error_message(exc)):
            raise
        existing = None
    if existing:
        raise click.ClickException(
            f"endpoint {name} already exists ({existing.get('EndpointStatus')}): pick another --name, or delete it "
            f"(aws sagemaker delete-endpoint --endpoint-name {name})"
        )
    sm.create_model(**requests["CreateModel"])
    sm.create_endpoint_config(**requests["CreateEndpointConfig"])
    sm.create_endpoint(**requests["CreateEndpoint"])
    _console().print(f"created model, endpoint config and endpoint {name}")
    if not wait:
        click.echo(name)
        return
    desc = _poll(
        lambda: sm.describe_endpoint(EndpointName=name), "EndpointStatus", {"InService", "Failed"}, poll, name
    )
    if desc.get("EndpointStatus") != "InService":
        raise click.ClickException(
            f"endpoint {name} {desc.get('EndpointStatus')}: {desc.get('FailureReason')}"
        )
    click.echo(name)


# ----------------------------------------------------------------------------------------------- predict
@click.command("predict")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output mask GeoTIFF.")
@click.option("--endpoint", default=None, help="SageMaker endpoint name.")
@click.option("--url", default=None, help="Or a server's base URL (e.g. http://localhost:8080 for `serve`).")
@click.option("--local", is_flag=True, help="Or the SDK local-mode endpoint of `launcher deploy --local`.")
@click.option(
    "--content-type",
    type=click.Choice(["image/tiff", "application/x-npy"]),
    default="image/tiff",
    show_default=True,
    help="How tiles are sent.",
)
@click.option(
    "--accept", type=click.Choice(["image/png", "image/tiff"]), default="image/png", show_default=True
)
@click.option(
    "--max-payload-mb",
    type=FiniteFloat(0, 1024),
    default=6.0,
    show_default=True,
    help="Request size limit per tile (MB, at most 1024; real-time endpoints take 6).",
)
@click.option(
    "--margin",
    type=click.IntRange(0, 4096),
    default=64,
    show_default=True,
    help="Context pixels around each tile.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Requests in flight (1-64).",
)
@friendly_errors
def predict(
    image, out, endpoint, url, local, content_type, accept, max_payload_mb, margin, concurrency
) -> None:
    """Predict a class mask for IMAGE (any size: tiled under the payload limit and stitched), as a GeoTIFF
    keeping IMAGE's CRS and transform."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from launcher.model import predict as mp

    if sum(bool(x) for x in (endpoint, url, local)) != 1:
        raise click.UsageError("give exactly one of --endpoint NAME, --url URL or --local")
    if endpoint:
        from launcher.aws import client

        invoke = mp.endpoint_invoker(client("sagemaker-runtime"), endpoint)
    elif url:
        invoke = mp.url_invoker(url)
    else:
        invoke = mp.local_invoker()
    columns = (TextColumn("tiles"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_console(), transient=True) as progress:
        task = progress.add_task("tiles", total=None)

        def on_tile(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        summary = mp.predict_file(
            image, out, invoke, content_type, accept, max_payload_mb, margin, concurrency, on_tile=on_tile
        )
    print_json(summary.as_dict())


COMMANDS = (train, tune, deploy, predict)
