"""Evaluate a model directory on a prepared dataset: mIoU, pixel accuracy, SpaceNet building F1 (JSON).

``evaluate(model_dir, data_dir)`` reads ``data_dir/<split>/`` images and ``<split>_annotation/`` masks (the
channel layout; ``label_map/<split>_label_map.json`` applies), predicts each whole image (the network takes
any size), and scores. Ground-truth buildings for the SpaceNet metric come from ``data_dir/buildings.json``
(written by ``prepare-sn6``: the real polygons, so touching buildings stay separate) or, without it, from the
connected components of the annotation. Predicted buildings are the connected components of the building
class outside nodata; both sides drop buildings under 80 pixels.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from segmentation_trainer.contract import IGNORE_LABEL
from segmentation_trainer.data import (
    DataError,
    label_lut,
    pair_channel,
    read_annotation,
    read_image,
    read_label_map,
)
from segmentation_trainer.metrics import (
    SPACENET_MIN_AREA,
    F1Result,
    confusion_matrix,
    iou_per_class,
    mask_polygons,
    mean_iou,
    pixel_accuracy,
    spacenet_f1,
)

log = logging.getLogger(__name__)


def building_class(metadata: dict) -> int | None:
    names = [str(n).lower() for n in metadata.get("class_names") or []]
    for i, n in enumerate(names):
        if "building" in n:
            return i
    return 1 if int(metadata.get("num_classes", 0)) == 2 else None


def _ground_truth(buildings: dict | None, name: str, label: np.ndarray, cls: int) -> list:
    if buildings is not None and name in buildings:
        from shapely import wkt

        return [wkt.loads(w) for w in buildings[name]]
    return mask_polygons(label, cls, min_area=SPACENET_MIN_AREA)


def _band_mismatch(metadata: dict, path: Path, got: int) -> str:
    names = metadata.get("band_names") or []
    fmt = metadata.get("input_format")
    trained = f"; trained on {fmt} images" if fmt else ""
    hint = "prepare-sn6 --format jpg" if fmt == "jpg" else "prepare-sn6 --format geotiff"
    return (
        f"the model takes {metadata['bands']} band(s) ({', '.join(map(str, names))}{trained}); {path} has {got}: "
        f"evaluate it on data prepared like its training data ({hint})"
    )


def evaluate(
    model_dir: str | Path, data_dir: str | Path, split: str = "validation", ctx=None, progress=None
) -> dict:
    import mxnet as mx

    from segmentation_trainer.export import load_model

    started = time.monotonic()
    data_dir = Path(data_dir)
    net, metadata = load_model(model_dir, ctx=ctx)
    ctx = ctx or net.collect_params().list_ctx()[0]
    net.hybridize()
    pairs = pair_channel(data_dir / split, data_dir / f"{split}_annotation")
    lut = label_lut(read_label_map(data_dir / "label_map", split))
    num_classes = int(metadata["num_classes"])
    cls = building_class(metadata)
    bpath = data_dir / "buildings.json"
    buildings = json.loads(bpath.read_text()) if bpath.is_file() else None
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    f1 = F1Result(0, 0, 0)
    bands = int(metadata["bands"])
    for n, pair in enumerate(pairs, 1):
        image, _ = read_image(pair.image)
        if image.shape[0] != bands:
            raise DataError(_band_mismatch(metadata, pair.image, image.shape[0]))
        label = read_annotation(pair.annotation, lut)
        x = metadata.normalise(image)
        out = net(mx.nd.array(x[None], ctx=ctx))[0]
        pred = out.argmax(axis=1)[0].asnumpy().astype(np.uint8)
        cm += confusion_matrix(pred, label, num_classes)
        if cls is not None:
            pred = pred.copy()
            pred[label == IGNORE_LABEL] = 0 if cls != 0 else 1
            proposals = mask_polygons(pred, cls, min_area=SPACENET_MIN_AREA)
            f1 = f1 + spacenet_f1(proposals, _ground_truth(buildings, pair.name, label, cls))
        if progress:
            progress(n, len(pairs))
    names = metadata.get("class_names") or [str(i) for i in range(num_classes)]
    ious = iou_per_class(cm)
    return {
        "model": str(model_dir),
        "data": str(data_dir / split),
        "images": len(pairs),
        "mIOU": mean_iou(cm),
        "pixel_accuracy": pixel_accuracy(cm),
        "iou_per_class": {str(names[i]): (None if np.isnan(v) else float(v)) for i, v in enumerate(ious)},
        "spacenet": (
            dict(
                f1.as_dict(), building_class=int(cls), ground_truth="buildings.json" if buildings else "mask"
            )
            if cls is not None
            else None
        ),
        "seconds": round(time.monotonic() - started, 2),
    }
