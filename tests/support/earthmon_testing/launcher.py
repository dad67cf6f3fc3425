"""Shared helpers of the launcher tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from earthmon_testing import DATA as _DATA
from earthmon_testing import free_port, require  # noqa: F401  (re-exported for the tests)

ITEMS = _DATA / "stac-items"
SEARCH_RESPONSES = ITEMS / "search-responses"
#: The real Earth Search items the launcher tests plan and search with (24 v1 items, one v0 item).
LAUNCHER_ITEM_IDS = (
    "S2A_13TDE_20231008_0_L2A",
    "S2B_20EPT_20250731_0_L2A",
    "S2B_21MZV_20231110_0_L2A",
    "S2B_21NXJ_20231110_0_L2A",
    "S2B_21PXK_20231110_0_L2A",
    "S2B_21PYP_20231110_0_L2A",
    "S2B_21PZT_20231110_0_L2A",
    "S2B_22NCN_20231110_0_L2A",
    "S2B_22NCP_20231110_0_L2A",
    "S2B_22PDS_20231110_0_L2A",
    "S2B_22PDT_20231110_0_L2A",
    "S2B_22PDU_20231110_0_L2A",
    "S2B_24MUA_20250731_0_L2A",
    "S2B_24MUV_20250731_0_L2A",
    "S2B_24MVV_20250731_0_L2A",
    "S2B_24MWV_20250731_0_L2A",
    "S2B_24MXV_20250731_0_L2A",
    "S2B_25LBG_20240809_0_L2A",
    "S2B_25LCG_20240809_0_L2A",
    "S2B_25LCH_20240809_0_L2A",
    "S2B_25LDJ_20240809_0_L2A",
    "S2B_25LDK_20240809_0_L2A",
    "S2B_25MCS_20240809_0_L2A",
    "S2B_25MEP_20240809_0_L2A",
)
V0_ITEM = ITEMS / "earth-search-v0" / "S2B_55GDP_20241003_0_L2A.json"


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def fixture_items() -> list[dict[str, Any]]:
    """Real Earth Search items from the fixture tree (24 v1, then one v0)."""
    v1 = [load_json(ITEMS / "earth-search-v1" / f"{item_id}.json") for item_id in LAUNCHER_ITEM_IDS]
    return [*v1, load_json(V0_ITEM)]


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
