"""Finding the STAC items in an input folder: ``*.json`` / ``*.geojson`` (an item, an ItemCollection or a list of
items) and ``*.jsonl`` / ``*.ndjson`` (one item per line), recursively. Other JSON is skipped with a log line;
unreadable or malformed files become failed entries, so they are reported, never silently dropped.

Every document is untrusted: a JSON document (or one JSON Lines line) larger than :data:`MAX_DOCUMENT_BYTES`
(16 MiB) is refused unread, and one nested deeper than :data:`MAX_DEPTH` (or too deep or too large for the
parser) becomes a failed entry; the other files go on."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from ndvi_worker.stac import items_in_document

log = logging.getLogger(__name__)

JSON_SUFFIXES = {".json", ".geojson"}
LINES_SUFFIXES = {".jsonl", ".ndjson"}
#: Largest JSON document read (a whole ``.json`` file, or one line of a ``.jsonl`` file): an ItemCollection of
#: ~3000 Earth Search items; a STAC API page of 100 items is ~1 MB.
MAX_DOCUMENT_BYTES = 16 * 2**20
#: Deepest nesting accepted in a document (a STAC item is ~6 levels deep).
MAX_DEPTH = 64


@dataclass(frozen=True)
class InputItem:
    """One input: an item dict read from ``location`` or the reason it could not be read."""

    source: str  # path relative to the input folder, with '#N' for the N-th item of a file
    location: str  # absolute path of the file (relative hrefs resolve against it)
    item: dict | None = None
    error: str | None = None


def load_json(text: str) -> object:
    """Strict JSON (orjson: no NaN or Infinity, no lone surrogates, UTF-8 only; 2x `json.loads`, which decoding the
    8,581 items of the reference run took 2.4 s with) with the nesting capped: ValueError for anything malformed,
    too deep or too large."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise ValueError("nested too deeply for the JSON parser") from None
        hint = " (NaN and Infinity are not JSON: write null)" if "NaN" in text or "Infinity" in text else ""
        raise ValueError(f"{exc}{hint}") from None
    except MemoryError:
        raise ValueError("too large to decode") from None
    if _depth(text) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return doc


#: Every byte but JSON's brackets and quotes (deleted to get a document's skeleton).
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'{}[]"')
_STRING = re.compile(rb'"[^"]*"')
#: +1 for an opening bracket, -1 for a closing one (indexed by byte).
_STEP = np.zeros(256, np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


def _depth(text: str) -> int:
    """Nesting depth of a valid JSON text, from its skeleton: escaped backslashes and quotes dropped, then every byte
    but brackets and quotes, then strings (whose brackets do not nest), then the running sum of +1 / -1 per bracket.
    One pass of string and array operations in C: walking the parsed document in Python cost as much as parsing it
    (6 s for the 8,581 items of the reference run, now 0.6 s), and stays linear on hostile nesting."""
    if "\\" in text:
        text = text.replace("\\\\", "").replace('\\"', "")  # pairs from the left, as JSON reads them
    skeleton = text.encode("utf-8", "surrogatepass").translate(None, _NOT_STRUCTURE)
    # quotes alternate open/close: dropping two adjacent ones keeps every other quote's role, so empty strings go
    # first (cheap), then the few strings that hold brackets
    skeleton = _STRING.sub(b"", skeleton.replace(b'""', b""))
    if not skeleton:
        return 0
    return int(np.cumsum(_STEP[np.frombuffer(skeleton, np.uint8)], dtype=np.int64).max())


def parse_document(text: str, source: str, location: str, lines: bool) -> list[InputItem] | None:
    """Pure: the items (or errors) in a document's text; ``None`` when it is JSON but holds no STAC items."""
    if lines:
        out: list[InputItem] = []
        # lines end at "\n" only (as `readline` reads them): str.splitlines would also split inside strings at
        # U+2028, U+2029, U+0085 and other characters that JSON writers may leave unescaped
        for n, line in enumerate(text.split("\n"), start=1):
            out.extend(parse_line(line, n, source, location))
        return out
    try:
        doc = load_json(text)
    except ValueError as exc:
        return [InputItem(source, location, error=f"malformed JSON: {_short(exc)}")]
    items = items_in_document(doc)
    if items is None:
        return None
    if len(items) == 1:
        return [InputItem(source, location, item=items[0])]
    return [InputItem(f"{source}#{n}", location, item=i) for n, i in enumerate(items, start=1)]


def parse_line(line: str, n: int, source: str, location: str) -> list[InputItem]:
    """The items (or the error) of line ``n`` of a JSON Lines file; ``[]`` for a blank line."""
    if not line.strip():
        return []
    try:
        doc = load_json(line)
    except ValueError as exc:
        return [InputItem(f"{source}#{n}", location, error=f"malformed JSON on line {n}: {_short(exc)}")]
    items = items_in_document(doc)
    if items is None:
        return [InputItem(f"{source}#{n}", location, error=f"line {n} is not a STAC item")]
    return [InputItem(f"{source}#{n}", location, item=i) for i in items]


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_lines(path: Path, source: str, location: str) -> list[InputItem]:
    """A JSON Lines file read line by line (no size limit for the file; each line at most MAX_DOCUMENT_BYTES)."""
    out: list[InputItem] = []
    with path.open("rb") as f:
        n = 0
        while True:
            raw = f.readline(MAX_DOCUMENT_BYTES + 1)
            if not raw:
                break
            n += 1
            if len(raw) > MAX_DOCUMENT_BYTES and not raw.endswith(b"\n"):
                while (rest := f.readline(2**20)) and not rest.endswith(b"\n"):
                    pass  # skip the rest of the line
                out.append(
                    InputItem(f"{source}#{n}", location, error=f"line {n} is larger than {_mib()} (not read)")
                )
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                out.append(InputItem(f"{source}#{n}", location, error=f"line {n} is not UTF-8: {exc}"))
                continue
            out.extend(parse_line(line, n, source, location))
    return out


def _mib() -> str:
    return f"{MAX_DOCUMENT_BYTES / 2**20:g} MiB"


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
        location = str(path.resolve())
        try:
            if path.suffix.lower() in LINES_SUFFIXES:
                found.extend(_read_lines(path, source, location))
                continue
            size = path.stat().st_size
            if size > MAX_DOCUMENT_BYTES:
                found.append(
                    InputItem(
                        source, location, error=f"file is {size} bytes, larger than {_mib()} (not read)"
                    )
                )
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            found.append(InputItem(source, str(path), error=f"cannot read file: {exc}"))
            continue
        except MemoryError:
            found.append(InputItem(source, str(path), error="cannot read file: out of memory"))
            continue
        entries = parse_document(text, source, location, lines=False)
        if entries is None:
            log.info("skipping %s: JSON but not a STAC item or item collection", source)
            continue
        found.extend(entries)
    return found
