"""Segmentation metrics (pure numpy / shapely): confusion matrix, mIoU, pixel accuracy, SpaceNet building F1.

- mIoU is the mean IoU over the classes that occur (in the labels or the predictions) of the evaluated
  pixels; pixels labelled 255 are ignored. Pixel accuracy = correct / labelled pixels.
- SpaceNet F1 (the SpaceNet 6 metric): building polygons of the prediction are matched greedily to ground
  truth polygons at IoU >= 0.5, each ground truth at most once; buildings under 80 px are ignored on both
  sides. precision = TP / proposals, recall = TP / ground truth, F1 their harmonic mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

SPACENET_MIN_AREA = 80.0
SPACENET_IOU = 0.5


def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """K x K counts, rows = true class, columns = predicted class; labels 255 (or >= K) are skipped."""
    label = np.asarray(label).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    keep = (label >= 0) & (label < num_classes)
    idx = label[keep] * num_classes + np.clip(pred[keep], 0, num_classes - 1)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU of each class; NaN for a class absent from both labels and predictions."""
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def mean_iou(cm: np.ndarray) -> float:
    ious = iou_per_class(cm)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else 0.0


def pixel_accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else 0.0


# ----------------------------------------------------------------------------------------------- SpaceNet
def mask_polygons(mask: np.ndarray, value: int = 1, min_area: float = 0.0) -> list:
    """Polygons (pixel coordinates, shapely) of the connected regions of ``mask == value``."""
    from rasterio import features
    from shapely.geometry import shape

    binary = (np.asarray(mask) == value).astype(np.uint8)
    if not binary.any():
        return []
    polys = []
    for geom, v in features.shapes(binary, mask=binary.astype(bool), connectivity=4):
        if v != 1:
            continue
        poly = shape(geom)
        if poly.area >= min_area:
            polys.append(poly)
    return polys


@dataclass(frozen=True)
class F1Result:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: F1Result) -> F1Result:
        return F1Result(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def as_dict(self) -> dict:
        return {
            "f1": self.f1,
            "precision": self.precision,
            "recall": self.recall,
            "true_positives": self.tp,
            "false_positives": self.fp,
            "false_negatives": self.fn,
        }


def _valid(polys: Iterable, min_area: float) -> list:
    out = []
    for p in polys:
        if not p.is_valid:
            p = p.buffer(0)
        if not p.is_empty and p.area >= min_area:
            out.append(p)
    return out


def spacenet_f1(
    proposals: Sequence,
    ground_truth: Sequence,
    iou_threshold: float = SPACENET_IOU,
    min_area: float = SPACENET_MIN_AREA,
) -> F1Result:
    """Greedy one-to-one matching of proposals to ground truth polygons (SpaceNet's scoring)."""
    from shapely.strtree import STRtree

    props = _valid(proposals, min_area)
    truth = _valid(ground_truth, min_area)
    if not truth:
        return F1Result(0, len(props), 0)
    tree = STRtree(truth)
    used = np.zeros(len(truth), dtype=bool)
    tp = 0
    for prop in props:
        best, best_iou = -1, 0.0
        for j in tree.query(prop):
            j = int(j)
            if used[j]:
                continue
            inter = prop.intersection(truth[j]).area
            if inter <= 0:
                continue
            iou = inter / (prop.area + truth[j].area - inter)
            if iou > best_iou:
                best, best_iou = j, iou
        if best >= 0 and best_iou >= iou_threshold:
            used[best] = True
            tp += 1
    return F1Result(tp, len(props) - tp, int((~used).sum()))
