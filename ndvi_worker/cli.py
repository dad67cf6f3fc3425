"""``ndvi-worker`` / ``python -m ndvi_worker``: arguments -> :class:`WorkerConfig` -> :func:`ndvi_worker.run.run`.

Exit status: 0 when every scene is done or skipped (an empty shard included), 1 when any scene failed (after all
the others were written), 2 for a usage error.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from ndvi_worker import __version__
from ndvi_worker.config import (
    COMPRESSIONS,
    DEFAULT_READ_CONCURRENCY,
    MAX_READ_CONCURRENCY,
    WorkerConfig,
    parse_mask_classes,
)
from ndvi_worker.contract import ProcessingPaths
from ndvi_worker.cpus import usable_cpus
from ndvi_worker.ndvi import DEFAULT_MASK_CLASSES
from ndvi_worker.products_cli import WithProductCommands  # routes `ndvi-worker composite|mosaic ...`

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _mask_classes(ctx, param, value):  # noqa: ARG001
    try:
        return parse_mask_classes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command(
    cls=WithProductCommands,
    context_settings=CONTEXT,
    epilog="Outputs per scene: <item id>_ndvi.tif (COG), _ndvi.json (STAC "
    "item), _ndvi.png (quicklook); per host: _reports/<host>.json. See README 'NDVI worker'.",
)
@click.option(
    "--input",
    "input_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder searched recursively for STAC items (*.json, *.geojson, *.jsonl, *.ndjson). "
    "[default: $SAGEMAKER_BASE_DIR/processing/input, i.e. /opt/ml/processing/input]",
)
@click.option(
    "--output",
    "output_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder the COGs, STAC items and reports are published to. "
    "[default: $SAGEMAKER_BASE_DIR/processing/output]",
)
@click.option(
    "--mask-classes",
    default=",".join(map(str, DEFAULT_MASK_CLASSES)),
    show_default=True,
    callback=_mask_classes,
    help="SCL classes masked out (0 no data is always masked; add 11 for snow).",
)
@click.option(
    "--boa-offset",
    type=click.Choice(["auto", "apply", "skip"]),
    default="auto",
    show_default=True,
    help="auto: the item's boa_offset_applied flag, then its processing baseline (>= 04.00 carries "
    "+1000 DN); apply / skip force (DN - 1000) / 10000 or DN / 10000.",
)
@click.option("--overwrite", is_flag=True, help="Recompute scenes whose valid output already exists.")
@click.option(
    "--on-error",
    type=click.Choice(["continue", "fail"]),
    default="continue",
    show_default=True,
    help="continue: report a failed scene and go on; fail: stop starting new scenes after one fails.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="Compute threads per scene (NDVI, overviews, COG compression); reads have their own, see "
    "--read-concurrency. [default: the CPUs this process may use: affinity, capped by a cgroup CPU quota]",
)
@click.option(
    "--scenes-in-flight",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Scenes processed at the same time (overlaps one scene's reads with another's writes).",
)
@click.option(
    "--read-concurrency",
    type=click.IntRange(1, MAX_READ_CONCURRENCY),
    default=DEFAULT_READ_CONCURRENCY,
    show_default=True,
    envvar="NDVI_READ_CONCURRENCY",
    show_envvar=True,
    help="Range requests in flight per scene, independent of --workers (reads wait on the network, the "
    "compute threads do not wait for them); memory stays bounded by a window of chunks.",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    default=None,
    help="An existing dask.distributed scheduler (tcp://host:8786): scenes become tasks on that "
    "cluster, whose workers must see the input and output folders.",
)
@click.option(
    "--dtype",
    type=click.Choice(["int16", "float32"]),
    default="int16",
    show_default=True,
    help="int16: NDVI x 10000, nodata -32768, scale 0.0001 in the file's metadata; float32: NDVI, "
    "nodata NaN.",
)
@click.option(
    "--compress",
    type=click.Choice(COMPRESSIONS, case_sensitive=False),
    default="ZSTD",
    show_default=True,
    help="COG compression (LERC_ZSTD needs --dtype float32).",
)
@click.option(
    "--level", type=int, default=1, show_default=True, help="Compression level (ZSTD 1-22, DEFLATE 1-9)."
)
@click.option(
    "--predictor",
    type=click.Choice(["none", "2", "3"]),
    default="none",
    show_default=True,
    help="TIFF predictor (2 horizontal differencing; 3 floating point): smaller files, slower writes.",
)
@click.option("--max-z-error", type=float, default=None, help="LERC maximum error (e.g. 0.0005).")
@click.option("--blocksize", type=int, default=512, show_default=True, help="COG internal tile size.")
@click.option(
    "--chunk-size",
    type=int,
    default=1024,
    show_default=True,
    help="Processing chunk (pixels per side), a multiple of --blocksize; memory ~ workers x chunk^2 x 20 B.",
)
@click.option("--no-quicklook", is_flag=True, help="Do not write the <item id>_ndvi.png preview.")
@click.option(
    "--staging-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Scratch folder, on the output's file system [default: .ndvi-staging-<host> beside --output].",
)
@click.option(
    "--retries",
    type=click.IntRange(1, 20),
    default=4,
    show_default=True,
    help="Attempts per read on transient errors (5xx, 429, timeouts), with exponential backoff.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.version_option(__version__, prog_name="ndvi-worker")
def main(
    input_dir,
    output_dir,
    mask_classes,
    boa_offset,
    overwrite,
    on_error,
    workers,
    scenes_in_flight,
    read_concurrency,
    scheduler,
    dtype,
    compress,
    level,
    predictor,
    max_z_error,
    blocksize,
    chunk_size,
    no_quicklook,
    staging_dir,
    retries,
    log_level,
):
    """Sentinel-2 L2A STAC items in, NDVI Cloud-Optimized GeoTIFFs out (SCL cloud masking, BOA offset rule).

    With no arguments it follows the SageMaker Processing contract: items from /opt/ml/processing/input,
    outputs to /opt/ml/processing/output (SAGEMAKER_BASE_DIR relocates /opt/ml). One bad scene is reported and
    the rest completes; reruns skip scenes whose valid output exists.
    """

    from ndvi_worker.run import run, setup_logging

    setup_logging(log_level)
    paths = ProcessingPaths.from_env()
    explicit_input = input_dir is not None
    explicit_paths = explicit_input or output_dir is not None
    input_dir = input_dir or paths.input_dir
    output_dir = output_dir or paths.output_dir
    if explicit_input and not input_dir.is_dir():
        raise click.BadParameter(
            f"{input_dir} is not a folder: give the folder holding the STAC items", param_hint="--input"
        )
    try:
        cfg = WorkerConfig(
            input_dir=input_dir,
            output_dir=output_dir,
            mask_classes=mask_classes,
            boa_offset=boa_offset,
            overwrite=overwrite,
            on_error=on_error,
            workers=workers or usable_cpus(),
            scenes_in_flight=scenes_in_flight,
            read_concurrency=read_concurrency,
            scheduler=scheduler,
            dtype=dtype,
            compress=compress.upper(),
            level=level,
            predictor=None if predictor == "none" else int(predictor),
            max_z_error=max_z_error,
            blocksize=blocksize,
            chunk_size=chunk_size,
            quicklook=not no_quicklook,
            staging_dir=staging_dir,
            retries=retries,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    _check_folders(input_dir, output_dir, staging_dir)
    sys.exit(_run_cli(run, cfg, paths, paths.under_contract(explicit_paths)))


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def _check_folders(input_dir: Path, output_dir: Path, staging_dir: Path | None) -> None:
    """Folder combinations that would mix outputs into inputs or scratch files into outputs: usage errors."""
    if _inside(output_dir, input_dir):
        raise click.BadParameter(
            f"{output_dir} is inside the input folder {input_dir}: its STAC items would be read back as inputs; "
            "choose an --output outside --input",
            param_hint="--output",
        )
    if staging_dir is not None and _inside(staging_dir, output_dir):
        raise click.BadParameter(
            f"{staging_dir} is inside the output folder: partial files would be published; choose a "
            "--staging-dir outside --output (on the same file system)",
            param_hint="--staging-dir",
        )


def _run_cli(run, cfg: WorkerConfig, paths: ProcessingPaths, contract: bool) -> int:
    """Run the shard; what stops it before or outside the scenes becomes one line on stderr, never a traceback:
    exit 2 for a setup problem (unwritable output, unreachable scheduler), 130/143 when interrupted, 1 for an
    unexpected error (its traceback is logged with --log-level DEBUG)."""
    import logging

    from ndvi_worker.run import SetupError
    from ndvi_worker.safety import redact

    try:
        return run(cfg, paths, contract=contract)
    except SetupError as exc:
        click.echo(f"ndvi-worker: error: {redact(str(exc))}", err=True)
        return 2
    except KeyboardInterrupt as exc:
        click.echo("ndvi-worker: interrupted; the per-host report lists the scenes finished so far", err=True)
        return 143 if str(exc) == f"signal {int(signal.SIGTERM)}" else 130
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        logging.getLogger("ndvi_worker").debug("unexpected error", exc_info=True)
        click.echo(
            f"ndvi-worker: error: {redact(f'{type(exc).__name__}: {exc}')} (rerun with --log-level DEBUG "
            "for the details)",
            err=True,
        )
        return 1


if __name__ == "__main__":
    main()
