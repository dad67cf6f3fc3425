"""``segmentation-trainer`` / ``python -m segmentation_trainer``: train | serve | prepare-sn6 | evaluate | generate-sn6.

Thin: arguments -> the orchestration modules, imported inside each command so ``--help`` is instant.
``train`` with no options is the SageMaker training contract (``docker run IMAGE train``); ``serve`` is the
inference contract (``docker run IMAGE serve``, see :mod:`segmentation_trainer.serving`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
from pathlib import Path

import click

DEBUG_ENV = "EARTHMON_DEBUG"  # =1: let unexpected errors show their traceback


class InputError(click.ClickException):
    """Bad input (options, data, model): one line, exit status 2 like click's usage errors."""

    exit_code = 2


def _one_line_errors(fn):
    """No traceback for any input: expected problems are :class:`InputError` (exit 2); anything else becomes one
    line naming the error (exit 1), its traceback only with EARTHMON_DEBUG=1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except _input_errors() as exc:
            raise InputError(_flat(exc)) from None
        except OSError as exc:
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            raise click.ClickException(
                f"{exc.strerror or exc}{where}: check the path and its permissions"
            ) from None
        except Exception as exc:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            raise click.ClickException(
                f"{type(exc).__name__}: {_flat(exc)} (set {DEBUG_ENV}=1 for the traceback)"
            ) from None

    return wrapper


_INPUT_ERRORS = (  # (module, class): errors that mean the user's input is wrong
    ("segmentation_trainer.contract", "ContractError"),
    ("segmentation_trainer.data", "DataError"),
    ("segmentation_trainer.export", "ModelDirError"),
    ("segmentation_trainer.hyperparameters", "HyperparameterError"),
    ("segmentation_trainer.sn6", "PrepareError"),
)


def _input_errors() -> tuple[type[BaseException], ...]:
    """The input-error classes of the modules loaded so far (an error of a module not imported cannot occur;
    importing them here would load MXNet for every command)."""
    loaded = tuple(getattr(sys.modules[m], n) for m, n in _INPUT_ERRORS if m in sys.modules)
    return (*loaded, FileNotFoundError, NotADirectoryError)


def _flat(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """DeepLab-v3 / FCN / PSP segmentation (MXNet + GluonCV): a drop-in for SageMaker's built-in Semantic
    Segmentation algorithm that also takes float multi-band GeoTIFFs (SpaceNet 6 SAR)."""


@cli.command()
@click.option(
    "--base-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="root of the SageMaker paths (default: $SAGEMAKER_BASE_DIR or /opt/ml): input/config/"
    "hyperparameters.json, input/data/<channel>/, model/, output/, checkpoints/",
)
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
@_one_line_errors
def train(base_dir: Path | None, verbose: bool) -> None:
    """Run a training job under the SageMaker training contract.

    Reads the hyperparameters (the built-in algorithm's names) and the channels train, train_annotation,
    validation, validation_annotation, label_map, and optionally pretrained (backbone weights) and model
    (model.tar.gz of an earlier job, for incremental training). Writes the model to model/, the failure reason to
    output/failure, checkpoints every epoch to checkpoints/ (a restarted job resumes). Metric lines use the
    built-in's format (validation:mIOU, validation:pixel_accuracy).

    Script mode: when the hyperparameter sagemaker_program (or SAGEMAKER_PROGRAM) names a script, the SageMaker
    training toolkit runs that script instead (its code from sagemaker_submit_directory or the 'code' channel),
    with the SM_* variables and the hyperparameters as arguments; its exit status is the job's.
    """
    _logging(verbose)
    from segmentation_trainer.contract import TrainingPaths
    from segmentation_trainer.job import run_job

    paths = TrainingPaths.resolve(base_dir)
    sys.exit(run_job(paths))


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False
)
@click.pass_context
@_one_line_errors
def serve(ctx: click.Context) -> None:
    """Serve a model over HTTP (SageMaker inference contract; `serve --help` for the options)."""
    from segmentation_trainer.serving.server import main as serve_main

    sys.exit(serve_main(list(ctx.args)))


@cli.command("prepare-sn6")
@click.option(
    "--src", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="SN6 root"
)
@click.option(
    "--dst", required=True, type=click.Path(file_okay=False, path_type=Path), help="output directory"
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["geotiff", "jpg"]),
    default="geotiff",
    show_default=True,
    help="geotiff: float32, all 4 polarisations (this trainer); jpg: 8-bit HH/(HV+VH)/2/VV, log-scaled and "
    "stretched between the 0.5 and 99.5 percentiles (the built-in algorithm)",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="share of tiles for validation",
)
@click.option(
    "--orient/--no-orient",
    default=True,
    show_default=True,
    help="rotate tiles imaged from the south by 180 degrees (SAR_orientations.txt), georeference kept",
)
@_one_line_errors
def prepare_sn6_cmd(src: Path, dst: Path, fmt: str, val_fraction: float, orient: bool) -> None:
    """Convert SpaceNet 6 (SAR-Intensity tiles + building polygons) into the training channel layout.

    Writes DST/train, train_annotation, validation, validation_annotation, label_map (0 background,
    1 building, 255 nodata), buildings.json and prepare_report.json. The split is by location: no validation
    tile overlaps a training tile.
    """
    _logging()
    from segmentation_trainer.sn6 import PrepareOptions, prepare_sn6

    report = prepare_sn6(src, dst, PrepareOptions(fmt=fmt, val_fraction=val_fraction, orient=orient))
    split = report["split"]
    click.echo(
        f"prepared {report['written']['train']} training and {report['written']['validation']} validation tiles "
        f"({report['buildings']} buildings, {report['rotated']} rotated) in {dst}"
    )
    if split["excluded_overlapping_both_sides"]:
        click.echo(
            f"  {len(split['excluded_overlapping_both_sides'])} tiles straddle the split and were left out"
        )
    if report["failed"] or report["missing_annotation"]:
        click.echo(
            f"  {len(report['failed'])} tiles failed, {len(report['missing_annotation'])} had no annotation: "
            f"see {dst / 'prepare_report.json'}",
            err=True,
        )
    click.echo("  train with hyperparameters num_classes=2, class_names=background,building")


@cli.command("generate-sn6")
@click.option(
    "--dst", required=True, type=click.Path(file_okay=False, path_type=Path), help="output SN6 root"
)
@click.option(
    "--locations",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="separate areas of buildings",
)
@click.option(
    "--strips",
    type=click.IntRange(1, 100),
    default=4,
    show_default=True,
    help="acquisition strips (overlapping tiles)",
)
@click.option(
    "--tiles-per-side",
    type=click.IntRange(1, 100),
    default=2,
    show_default=True,
    help="tiles per location side",
)
@click.option(
    "--tile-size",
    type=click.IntRange(32, 4096),
    default=128,
    show_default=True,
    help="tile side in pixels (SN6: 900)",
)
@click.option(
    "--buildings",
    type=click.IntRange(0, 100000),
    default=40,
    show_default=True,
    help="buildings per location",
)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@_one_line_errors
def generate_sn6_cmd(dst, locations, strips, tiles_per_side, tile_size, buildings, seed) -> None:
    """Write SpaceNet 6-like data (speckled 4-band SAR tiles, buildings, orientations) for demos and tests."""
    from segmentation_trainer.synthetic import generate_sn6

    g = generate_sn6(dst, locations, strips, tiles_per_side, tile_size, buildings, seed=seed)
    click.echo(f"wrote {len(g.tiles)} SN6-like tiles under {g.root}")


@cli.command()
@click.option(
    "--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--split",
    default="validation",
    show_default=True,
    callback=lambda ctx, param, value: _split_name(value),
    help="images in DATA/<split>/ and <split>_annotation/",
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="also write the JSON here")
@_one_line_errors
def evaluate(model_dir: Path, data_dir: Path, split: str, output: Path | None) -> None:
    """Score a model directory: mIoU, pixel accuracy and the SpaceNet building F1 (IoU >= 0.5, >= 80 px), as JSON."""
    _logging()
    from segmentation_trainer.evaluate import evaluate as run_evaluate

    def progress(n, total):
        if n % 50 == 0 or n == total:
            click.echo(f"evaluate: {n}/{total}", err=True)

    result = run_evaluate(model_dir, data_dir, split, progress=progress)
    text = json.dumps(result, indent=2)
    if output:
        output.write_text(text + "\n")
    click.echo(text)


def _split_name(value: str) -> str:
    """A split is a folder name inside DATA (no path separators, no '..')."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value or "") or ".." in value:
        raise click.BadParameter(
            f"{value!r} is not a split name: give a folder name inside DATA, e.g. validation"
        )
    return value


def main() -> None:
    cli(prog_name="segmentation-trainer")


def train_entry() -> None:
    """``train`` inside the image (``docker run IMAGE train``): the contract, no arguments."""
    train.main(sys.argv[1:], prog_name="train")  # the subcommand itself: `train --help` reads "Usage: train"


def serve_entry() -> None:
    """``serve`` inside the image (``docker run IMAGE serve``)."""
    serve.main(sys.argv[1:], prog_name="serve")


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
