"""``ndvi-worker composite`` and ``ndvi-worker mosaic``: the thin CLI of the NDVI products (temporal composites per
MGRS tile, the planetary mosaic with its collection and offline viewer). See docs/products.md.

Exit status: 0 when everything was written (an empty input included), 1 when an input or a tile failed (the rest
is written anyway), 2 for a usage error (one line on stderr, no traceback).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from ndvi_worker.cpus import usable_cpus
from ndvi_worker.safety import shown

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


class ProductCommand(click.Command):
    """A click command whose usage errors are one line on stderr (``ndvi-worker composite: error: ...``),
    exit status 2, no traceback."""

    def main(self, args=None, prog_name=None, **extra):  # noqa: D102
        name = prog_name or f"ndvi-worker {self.name}"
        try:
            rv = super().main(args=args, prog_name=name, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo(f"{name}: aborted", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            click.echo(f"{name}: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo(f"{name}: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - bad input never ends in a traceback
            import logging

            logging.getLogger("ndvi_worker").debug("unexpected error", exc_info=True)
            click.echo(
                f"{name}: error: unexpected error ({type(exc).__name__}: {shown(exc, 300)}); "
                "run again with --log-level DEBUG for details, and report it",
                err=True,
            )
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _usage(param: str, exc: Exception) -> click.BadParameter:
    return click.BadParameter(str(exc), param_hint=param)


def _input_dir(value: Path) -> Path:
    if not value.is_dir():
        raise click.BadParameter(f"{value} is not a folder", param_hint="--input")
    return value


def _setup(log_level: str) -> None:
    from ndvi_worker.run import setup_logging

    setup_logging(log_level)
    os.environ.setdefault("GDAL_CACHEMAX", "64")


_common = [
    click.option(
        "--input",
        "input_dir",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder searched recursively for NDVI products: the worker's <id>_ndvi.json + <id>_ndvi.tif, "
        "or composites.",
    ),
    click.option(
        "--output",
        "output_dir",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder the products are written to.",
    ),
    click.option(
        "--dtype",
        type=click.Choice(["int16", "float32"]),
        default="int16",
        show_default=True,
        help="The worker's encodings: int16 NDVI x 10000, nodata -32768; float32 NDVI, nodata NaN.",
    ),
    click.option(
        "--workers",
        type=click.IntRange(1, 256),
        default=None,
        help="Threads. [default: the CPUs this process may use: affinity, capped by a cgroup CPU quota]",
    ),
    click.option(
        "--staging-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Scratch folder on the output's file system [default: .ndvi-staging-<host> beside --output].",
    ),
    click.option(
        "--log-level",
        type=click.Choice(["DEBUG", "INFO", "WARNING"], case_sensitive=False),
        default="INFO",
        show_default=True,
    ),
]


def common_options(fn):
    for option in reversed(_common):
        fn = option(fn)
    return fn


@click.command(
    "composite",
    cls=ProductCommand,
    context_settings=CONTEXT,
    epilog="Writes per tile <tile>_<start>_<end>_ndvi-<method>.tif (band 1 NDVI, band 2 valid observations, "
    "band 3 for max: day of the chosen observation, days since the period start), the .json STAC item and "
    "the .png quicklook; _reports/composite-<host>.json. See docs/products.md.",
)
@common_options
@click.option(
    "--method", type=click.Choice(["max", "median", "mean"]), required=True, help="Per-pixel reduction."
)
@click.option(
    "--period",
    metavar="START/END",
    default=None,
    help="Dates kept, both inclusive (2023-12-01/2023-12-31); names the outputs. [default: each tile's first "
    "and last date]",
)
@click.option(
    "--memory-mb",
    type=click.IntRange(8, 1_000_000),
    default=256,
    show_default=True,
    help="Budget for the windows' stacks across all dates being reduced at once, split between the threads (more "
    "dates: smaller windows).",
)
@click.option("--no-quicklook", is_flag=True, help="Do not write the PNG preview.")
def composite_command(
    input_dir, output_dir, dtype, workers, staging_dir, log_level, method, period, memory_mb, no_quicklook
):
    """Temporal NDVI composites per MGRS tile (max, median or mean of the valid observations of the period)."""
    from ndvi_worker.composite import parse_period

    _input_dir(input_dir)
    try:
        parsed = parse_period(period) if period is not None else None
    except ValueError as exc:
        raise _usage("--period", exc) from exc
    _setup(log_level)
    from ndvi_worker.products_io import CompositeOptions, run_composite

    opts = CompositeOptions(
        method=method,
        period=parsed,
        dtype=dtype,
        memory_mb=memory_mb,
        workers=workers or usable_cpus(),
        quicklook=not no_quicklook,
    )
    report, status = run_composite(input_dir, output_dir, opts, staging_dir)
    click.echo(
        f"composite: {len(report.done)} tiles written, {len(report.skipped)} inputs outside the period, "
        f"{len(report.failed)} problems",
        err=True,
    )
    for problem in report.failed:
        click.echo(f"  failed: {shown(problem.source, 300)}: {shown(problem.error, 500)}", err=True)
    return status


@click.command(
    "mosaic",
    cls=ProductCommand,
    context_settings=CONTEXT,
    epilog="Writes mosaic_ndvi.tif (COG, EPSG:4326), mosaic_ndvi.png (with a legend), collection.json (STAC) "
    "and index.html (offline viewer); _reports/mosaic-<host>.json. See docs/products.md.",
)
@common_options
@click.option(
    "--resolution", type=float, default=0.01, show_default=True, help="Pixel size in degrees (EPSG:4326)."
)
@click.option(
    "--bbox",
    metavar="W,S,E,N",
    default=None,
    help="Extent in degrees (-180,-90,180,90 for the globe). [default: the inputs' extent]",
)
@click.option("--png-max-width", type=click.IntRange(64, 65536), default=4096, show_default=True)
@click.option("--no-viewer", is_flag=True, help="Do not write index.html.")
@click.option(
    "--assets-root",
    metavar="URL",
    default=None,
    help="s3:// or https:// URL the input folder mirrors: relative COG hrefs of the items are read in place "
    "from it (their overviews only) instead of from the input folder, which then needs only the items. "
    "[default: hrefs resolve against each item's file]",
)
@click.option(
    "--inputs-href",
    metavar="PATH|URL",
    default=None,
    help="Where the input folder is published, seen from where the output folder is: a relative path (../) or "
    "an https:// URL. collection.json and index.html link the inputs under it, so the links hold once both "
    "folders are uploaded (the launcher sets it for SageMaker jobs). [default: the path between the folders here]",
)
def mosaic_command(
    input_dir,
    output_dir,
    dtype,
    workers,
    staging_dir,
    log_level,
    resolution,
    bbox,
    png_max_width,
    no_viewer,
    assets_root,
    inputs_href,
):
    """An EPSG:4326 NDVI mosaic of every product (from their overviews), its STAC collection and a viewer."""
    from ndvi_worker.mosaic import check_resolution, parse_bbox

    _input_dir(input_dir)
    try:
        check_resolution(resolution)
    except ValueError as exc:
        raise _usage("--resolution", exc) from exc
    try:
        parsed_bbox = parse_bbox(bbox) if bbox is not None else None
    except ValueError as exc:
        raise _usage("--bbox", exc) from exc
    if assets_root is not None:
        from ndvi_worker.safety import HrefError, check_assets_root

        try:
            assets_root = check_assets_root(assets_root)
        except HrefError as exc:
            raise _usage("--assets-root", exc) from exc
    if inputs_href is not None:
        from ndvi_worker.safety import HrefError, check_inputs_href

        try:
            inputs_href = check_inputs_href(inputs_href)
        except HrefError as exc:
            raise _usage("--inputs-href", exc) from exc
    _setup(log_level)
    from ndvi_worker.products_io import MosaicOptions, run_mosaic

    opts = MosaicOptions(
        resolution=resolution,
        bbox=parsed_bbox,
        dtype=dtype,
        workers=workers or usable_cpus(),
        png_max_width=png_max_width,
        viewer=not no_viewer,
        assets_root=assets_root,
        inputs_href=inputs_href,
    )
    report, status, stats = run_mosaic(input_dir, output_dir, opts, staging_dir)
    click.echo(f"mosaic: {json.dumps(stats)}", err=True)
    for problem in report.failed:
        click.echo(f"  failed: {shown(problem.source, 300)}: {shown(problem.error, 500)}", err=True)
    return status


SUBCOMMANDS = {"composite": composite_command, "mosaic": mosaic_command}


class WithProductCommands(click.Command):
    """The scene command (``ndvi-worker --input ...``) that also routes ``ndvi-worker composite ...`` and
    ``ndvi-worker mosaic ...`` to the product commands, and lists them in its help."""

    def main(self, args=None, prog_name=None, **extra):  # noqa: D102
        argv = list(sys.argv[1:] if args is None else args)
        if argv and argv[0] in SUBCOMMANDS:
            base = prog_name or "ndvi-worker"
            return SUBCOMMANDS[argv[0]].main(argv[1:], prog_name=f"{base} {argv[0]}", **extra)
        return super().main(args=args, prog_name=prog_name, **extra)

    def format_epilog(self, ctx, formatter):  # noqa: D102
        super().format_epilog(ctx, formatter)
        with formatter.section("Commands (ndvi-worker COMMAND --help)"):
            formatter.write_dl(
                [
                    ("composite", "temporal NDVI composites per MGRS tile (max, median, mean)"),
                    (
                        "mosaic",
                        "an EPSG:4326 mosaic of the products, its STAC collection and an offline viewer",
                    ),
                ]
            )
