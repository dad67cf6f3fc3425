"""Shared helpers of the launcher tests (importable as `launcher_helpers`: tests/launcher is on sys.path)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from earthmon_testing import free_port, require  # noqa: F401  (re-exported for the tests)

DATA = Path(__file__).resolve().parents[1] / "data" / "launcher"


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def fixture_items() -> list[dict[str, Any]]:
    """The real Earth Search items copied into tests/data/launcher/items (v1, one v0)."""
    return [load_json(p) for p in sorted((DATA / "items").glob("*.json"))]


def extra_page_items() -> list[dict[str, Any]]:
    """Items built from real fixture items: for two tiles a second, different scene (another day or sequence),
    so dedupe has a real choice to make."""
    base = {i["id"]: i for i in fixture_items()}
    out = []
    a = copy.deepcopy(base["S2B_21PXK_20231110_0_L2A"])  # cloud 11.23
    a["id"] = "S2B_21PXK_20231110_1_L2A"
    a["properties"]["eo:cloud_cover"] = 3.5
    a["properties"]["s2:sequence"] = "1"
    out.append(a)
    b = copy.deepcopy(base["S2B_22NCN_20231110_0_L2A"])
    b["id"] = "S2A_22NCN_20231105_0_L2A"
    b["properties"]["datetime"] = "2023-11-05T14:10:00.000000Z"
    b["properties"]["eo:cloud_cover"] = 95.0
    out.append(b)
    out.append(base["S2B_21PXK_20231110_0_L2A"])
    out.append(base["S2B_22NCN_20231110_0_L2A"])
    out.append(base["S2B_21PYP_20231110_0_L2A"])
    return out


from launcher.ndvi.synthetic import synthetic_items  # noqa: E402,F401  (re-exported for the tests)
