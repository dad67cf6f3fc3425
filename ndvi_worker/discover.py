"""Finding the STAC items in an input folder: ``*.json`` / ``*.geojson`` (an item, an ItemCollection or a list of
items) and ``*.jsonl`` / ``*.ndjson`` (one item per line), recursively. Other JSON is skipped with a log line;
unreadable or malformed files become failed entries, so they are reported, never silently dropped."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ndvi_worker.stac import items_in_document

log = logging.getLogger(__name__)

JSON_SUFFIXES = {".json", ".geojson"}
LINES_SUFFIXES = {".jsonl", ".ndjson"}


@dataclass(frozen=True)
class InputItem:
    """One input: an item dict read from ``location`` or the reason it could not be read."""

    source: str  # path relative to the input folder, with '#N' for the N-th item of a file
    location: str  # absolute path of the file (relative hrefs resolve against it)
    item: dict | None = None
    error: str | None = None


def parse_document(text: str, source: str, location: str, lines: bool) -> list[InputItem] | None:
    """Pure: the items (or errors) in a document's text; ``None`` when it is JSON but holds no STAC items."""
    if lines:
        out: list[InputItem] = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError as exc:
                out.append(InputItem(f"{source}#{n}", location, error=f"malformed JSON on line {n}: {exc}"))
                continue
            items = items_in_document(doc)
            if items is None:
                out.append(InputItem(f"{source}#{n}", location, error=f"line {n} is not a STAC item"))
            else:
                out.extend(InputItem(f"{source}#{n}", location, item=i) for i in items)
        return out
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return [InputItem(source, location, error=f"malformed JSON: {exc}")]
    items = items_in_document(doc)
    if items is None:
        return None
    if len(items) == 1:
        return [InputItem(source, location, item=items[0])]
    return [InputItem(f"{source}#{n}", location, item=i) for n, i in enumerate(items, start=1)]


def find_items(input_dir: Path) -> list[InputItem]:
    """Every item under ``input_dir`` (sorted by path, so every run sees the same order)."""
    found: list[InputItem] = []
    files = sorted(
        p
        for p in input_dir.rglob("*")
        if p.is_file() and p.suffix.lower() in JSON_SUFFIXES | LINES_SUFFIXES and not p.name.startswith(".")
    )
    for path in files:
        source = str(path.relative_to(input_dir))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            found.append(InputItem(source, str(path), error=f"cannot read file: {exc}"))
            continue
        entries = parse_document(text, source, str(path.resolve()), path.suffix.lower() in LINES_SUFFIXES)
        if entries is None:
            log.info("skipping %s: JSON but not a STAC item or item collection", source)
            continue
        found.extend(entries)
    return found
