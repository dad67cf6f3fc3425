"""An interactive map (folium) of the planned scene footprints, coloured by job."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from launcher.ndvi.items import cloud_cover, footprint
from launcher.ndvi.plan import Plan

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def job_colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def feature_collection(plan: Plan, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pure: one GeoJSON feature per planned scene with its job, colour and cloud cover."""
    by_id = {str(item["id"]): item for item in items}
    features = []
    for job in plan.jobs:
        colour = job_colour(job.index)
        for scene in job.scenes:
            item = by_id.get(scene.item_id)
            geometry = footprint(item) if item else None
            if geometry is None:
                continue
            features.append(
                {
                    "type": "Feature",
                    "geometry": geometry,
                    "properties": {
                        "item_id": scene.item_id,
                        "tile": scene.tile,
                        "job": job.name,
                        "colour": colour,
                        "cloud_cover": cloud_cover(item) if item else None,
                    },
                }
            )
    return {"type": "FeatureCollection", "features": features}


def write_map(plan: Plan, items: Sequence[dict[str, Any]], path: str) -> int:
    """Write plan.html; returns the number of footprints drawn."""
    import folium

    fc = feature_collection(plan, items)
    m = folium.Map(location=[20, 0], zoom_start=2, tiles="OpenStreetMap")
    folium.GeoJson(
        fc,
        name=f"{plan.run_id}: {len(fc['features'])} scenes in {len(plan.jobs)} jobs",
        style_function=lambda f: {
            "color": f["properties"]["colour"],
            "fillColor": f["properties"]["colour"],
            "weight": 1,
            "fillOpacity": 0.35,
        },
        tooltip=folium.GeoJsonTooltip(fields=["item_id", "tile", "job", "cloud_cover"]),
    ).add_to(m)
    folium.LayerControl().add_to(m)
    m.save(path)
    return len(fc["features"])
