"""`launcher search`: the scenes of an area and time range (a STAC API, or SageMaker geospatial), one per MGRS tile,
written as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import click

from launcher.cli.console import aws_hint, friendly_errors
from launcher.cli.console import console as _console


@click.command()
@click.option("--stac-url", default=None, help="STAC API root [default: Earth Search v1].")
@click.option("--collection", default="sentinel-2-l2a", show_default=True, help="STAC collection id.")
@click.option(
    "--bbox", default=None, help="Area as W,S,E,N degrees (use --bbox=-179,... for negative values)."
)
@click.option(
    "--intersects",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Area as a GeoJSON file (geometry, Feature or one-feature FeatureCollection).",
)
@click.option(
    "--datetime", "datetime_", default=None, help="Time range START/END, e.g. 2023-12-01/2023-12-07."
)
@click.option("--max-cloud", type=float, default=None, help="Keep scenes with eo:cloud_cover below this (%).")
@click.option(
    "--dedupe",
    type=click.Choice(["least-cloudy", "first", "latest"]),
    default="least-cloudy",
    show_default=True,
    help="Which scene to keep per MGRS tile.",
)
@click.option(
    "--source",
    type=click.Choice(["stac", "sagemaker-geospatial"]),
    default="stac",
    show_default=True,
    help="Search a STAC API, or SageMaker geospatial's SearchRasterDataCollection (us-west-2 only, closed to new "
    "customers).",
)
@click.option("--page-size", type=int, default=500, show_default=True, help="Items per page requested.")
@click.option(
    "--max-items",
    type=int,
    default=None,
    help="Stop after this many items (before dedupe) [default: all, and more than 500000 is an error].",
)
@click.option(
    "--max-pages",
    type=click.IntRange(1),
    default=2000,
    show_default=True,
    help="A STAC search with more pages is an error (raise it for a bigger search).",
)
@click.option(
    "--out", "out", type=click.Path(dir_okay=False, writable=True), required=True, help="Output JSONL."
)
@friendly_errors
def search(
    stac_url, collection, bbox, intersects, datetime_, max_cloud, dedupe, source, page_size, max_items, max_pages,
    out,
) -> None:  # fmt: skip
    """Search scenes (all pages), keep one per MGRS tile, write them as JSON lines.

    A STAC search stays on the API's origin (a next link elsewhere stops it with an error), stops when a next
    link repeats, and is bounded: --max-pages pages, 500000 items unless --max-items, 64 MiB and 300 s per page.
    """
    from launcher.errors import ResponseError
    from launcher.ndvi import search as s

    if bbox is None and intersects is None:
        raise click.UsageError("give an area: --bbox=W,S,E,N or --intersects FILE")
    url = stac_url or s.EARTH_SEARCH_V1
    if source == "stac" and not url.startswith(("http://", "https://")):
        raise click.UsageError(f"--stac-url must be the http(s):// root of a STAC API, got {url!r}")
    if max_items is not None and max_items < 1:
        raise click.UsageError(f"--max-items must be >= 1, got {max_items}")
    out_dir = Path(out).resolve().parent
    if not out_dir.is_dir():
        raise click.UsageError(f"--out {out}: the folder {out_dir} does not exist (create it first)")
    try:
        if datetime_ is not None:
            s.check_datetime(datetime_)
        geometry = None
        if intersects:
            try:
                doc = json.loads(Path(intersects).read_text(encoding="utf-8"))
            except (UnicodeDecodeError, RecursionError):
                raise ValueError(f"--intersects {intersects} is not a GeoJSON text file") from None
            if not isinstance(doc, dict):
                raise ValueError(
                    f"--intersects {intersects}: expected a GeoJSON object, got {type(doc).__name__}"
                )
            geometry = s.geometry_from_geojson(doc)
        query = s.SearchQuery(
            collection=collection,
            bbox=s.parse_bbox(bbox) if bbox else None,
            intersects=geometry,
            datetime=datetime_,
            max_cloud=max_cloud,
            page_size=page_size,
            max_items=max_items,
        )
        if source == "sagemaker-geospatial":
            s.geospatial_request(query)  # its own limits (closed range, a polygon), before anything is sent
    except (ValueError, json.JSONDecodeError) as exc:
        raise click.UsageError(str(exc)) from None
    console = _console()
    notes: list[str] = []
    with console.status("searching ...") as status:

        def on_page(pages: int, count: int) -> None:
            status.update(f"searching: {count} items from {pages} page(s)")

        if source == "stac":
            found = s.search_stac(url, query, on_page, max_pages=max_pages, notes=notes)
        else:
            found = s.search_geospatial(query, on_page)
        try:
            kept, stats = s.dedupe(found, dedupe, collection=collection)
        except ResponseError as exc:
            raise click.ClickException(f"the STAC search stopped: {exc}") from None
        except Exception as exc:
            if source == "stac" and aws_hint(exc) is None:
                raise click.ClickException(
                    f"the STAC search at {url} failed ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); "
                    "check --stac-url and the network, then run the search again"
                ) from None
            raise
    for note in notes:
        console.print(f"[yellow]{note}[/]")
    n = s.write_jsonl(kept, out)
    console.print(
        f"found {stats.searched} item(s)"
        + (f" from {url}" if source == "stac" else " (SageMaker geospatial)")
    )
    if stats.other_collection:
        console.print(f"  dropped {stats.other_collection} item(s) of other collections than {collection}")
    if stats.no_tile:
        console.print(f"  [yellow]{stats.no_tile} item(s) have no MGRS tile: kept each on its own[/]")
    console.print(
        f"kept {n} scene(s), one per MGRS tile ({dedupe}); {stats.duplicates} duplicate(s) dropped -> {out}"
    )
