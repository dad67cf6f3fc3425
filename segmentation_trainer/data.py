"""Training data: channel readers (JPG/PNG as the built-in algorithm, GeoTIFF with any bands), label maps,
normalisation statistics, augmentation and batching.

Pure parts (label maps, statistics accumulation, augmentation) take and return numpy arrays; readers use
Pillow / rasterio (imported lazily).

Layout of a dataset (the built-in algorithm's): ``train/`` images, ``train_annotation/`` PNG masks with the
same base name (8-bit, one channel, pixel = class id, 255 = ignore), likewise ``validation/`` and
``validation_annotation/``, optional ``label_map/train_label_map.json`` and ``validation_label_map.json``.
Images are JPG/PNG (8-bit RGB or grey) or GeoTIFF (any number of bands, any dtype; the nodata value of the
file marks pixels that are set to the training mean).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segmentation_trainer.contract import IGNORE_LABEL
from segmentation_trainer.pixels import normalise, valid_mask  # noqa: F401  (valid_mask: part of data's API)

log = logging.getLogger(__name__)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
ANNOTATION_SUFFIXES = (".png", ".tif", ".tiff")
GEOTIFF_SUFFIXES = (".tif", ".tiff")


class DataError(ValueError):
    """The training data is missing or malformed; the message says which files and what to do."""


# ----------------------------------------------------------------------------------------------- pairing
@dataclass(frozen=True)
class Pair:
    image: Path
    annotation: Path

    @property
    def name(self) -> str:
        return self.image.stem


def _files(directory: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."):
            out.setdefault(p.stem, p)
    return out


def pair_channel(images_dir: Path, annotations_dir: Path) -> list[Pair]:
    """Image/annotation pairs matched by base name. Raises when an image has no annotation."""
    if not images_dir.is_dir():
        raise DataError(f"channel directory not found: {images_dir}")
    if not annotations_dir.is_dir():
        raise DataError(f"annotation channel not found: {annotations_dir} (needed for {images_dir.name})")
    images = _files(images_dir, IMAGE_SUFFIXES)
    annotations = _files(annotations_dir, ANNOTATION_SUFFIXES)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    missing = sorted(set(images) - set(annotations))
    if missing:
        raise DataError(
            f"{len(missing)} image(s) in {images_dir.name}/ have no annotation of the same base name in "
            f"{annotations_dir.name}/ (e.g. {', '.join(missing[:3])})"
        )
    extra = sorted(set(annotations) - set(images))
    if extra:
        log.warning(
            "%d annotation(s) without an image are ignored (e.g. %s)", len(extra), ", ".join(extra[:3])
        )
    return [Pair(images[k], annotations[k]) for k in sorted(images)]


# ----------------------------------------------------------------------------------------------- label maps
def label_lut(label_map: dict | None) -> np.ndarray:
    """A 256-entry lookup table: annotation pixel value -> class id (255 = ignore).

    ``{"scale": s}``: class = value / s for multiples of s (the built-in's ``scale``); ``{"map": {class:
    value}}``: the listed encoded values; values not covered are ignored. ``None``: identity.
    """
    lut = np.arange(256, dtype=np.uint8)
    if not label_map:
        return lut
    if "map" in label_map:
        lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
        for cls, value in dict(label_map["map"]).items():
            c, v = int(cls), int(value)
            if not (0 <= v <= 255 and 0 <= c <= 254):
                raise DataError(f"label map entry {cls}: {value} is out of range (class 0-254, value 0-255)")
            lut[v] = c
        return lut
    if "scale" in label_map:
        scale = float(label_map["scale"])
        if scale <= 0:
            raise DataError(f"label map scale must be positive, not {label_map['scale']}")
        values = np.arange(256)
        classes = values / scale
        ok = np.isclose(classes, np.round(classes)) & (classes <= 254)
        lut = np.where(ok, np.round(classes), IGNORE_LABEL).astype(np.uint8)
        lut[255] = IGNORE_LABEL
        return lut
    raise DataError(f"label map must have 'scale' or 'map', not {sorted(label_map)}")


def read_label_map(directory: Path | None, split: str) -> dict | None:
    if directory is None or not directory.is_dir():
        return None
    path = directory / f"{split}_label_map.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path.name} is not valid JSON: {exc}") from None


# ----------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class ImageInfo:
    bands: int
    dtype: str
    nodata: float | None
    band_names: tuple[str, ...] | None
    format: str  # geotiff | jpg


def read_image(path: Path) -> tuple[np.ndarray, float | None]:
    """(C, H, W) array in the file's dtype, and its nodata value (GeoTIFF) or None."""
    try:
        if path.suffix.lower() in GEOTIFF_SUFFIXES:
            import rasterio

            with rasterio.open(path) as src:
                return src.read(), src.nodata
        from PIL import Image

        with Image.open(path) as im:
            if im.mode not in ("L", "RGB", "I;16", "I", "F"):
                im = im.convert("RGB")
            a = np.asarray(im)
        return (a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)), None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def read_annotation(path: Path, lut: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class ids (255 = ignore) through the label map."""
    try:
        if path.suffix.lower() in GEOTIFF_SUFFIXES:
            import rasterio

            with rasterio.open(path) as src:
                a = src.read(1)
        else:
            from PIL import Image

            with Image.open(path) as im:
                a = np.asarray(im)
    except Exception as exc:
        raise DataError(f"cannot read annotation {path}: {exc}") from exc
    if a.ndim != 2:
        raise DataError(f"annotation {path.name} must have one channel (class ids), it has shape {a.shape}")
    if a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            raise DataError(f"annotation {path.name} has values outside 0-255")
        a = a.astype(np.uint8)
    return lut[a]


def image_info(path: Path) -> ImageInfo:
    if path.suffix.lower() in GEOTIFF_SUFFIXES:
        import rasterio

        try:
            with rasterio.open(path) as src:
                names = tuple(d for d in src.descriptions) if all(src.descriptions) else None
                return ImageInfo(src.count, src.dtypes[0], src.nodata, names, "geotiff")
        except Exception as exc:
            raise DataError(f"cannot read image {path}: {exc}") from exc
    a, _ = read_image(path)
    names = ("red", "green", "blue") if a.shape[0] == 3 else None
    return ImageInfo(a.shape[0], str(a.dtype), None, names, "jpg")


def image_shape(path: Path) -> tuple[int, int, int]:
    """(bands, height, width) from the file's header."""
    try:
        if path.suffix.lower() in GEOTIFF_SUFFIXES:
            import rasterio

            with rasterio.open(path) as src:
                return src.count, src.height, src.width
        from PIL import Image

        with Image.open(path) as im:
            return len(im.getbands()), im.height, im.width
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


# ----------------------------------------------------------------------------------------------- statistics
@dataclass
class BandStats:
    """Streaming per-band mean and standard deviation over valid pixels (Chan et al. merge)."""

    count: np.ndarray | None = None
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def add(self, image: np.ndarray, valid: np.ndarray) -> None:
        x = image[:, valid].astype(np.float64)
        n = x.shape[1]
        if n == 0:
            return
        mean = x.mean(axis=1)
        m2 = ((x - mean[:, None]) ** 2).sum(axis=1)
        if self.count is None:
            self.count, self.mean, self.m2 = np.full(len(mean), float(n)), mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.count = total

    def result(self) -> tuple[list[float], list[float]]:
        if self.count is None:
            raise DataError("no valid pixels to compute normalisation statistics from")
        std = np.sqrt(self.m2 / np.maximum(self.count, 1))
        std = np.where(std > 1e-12, std, 1.0)
        return [float(v) for v in self.mean], [float(v) for v in std]


def compute_stats(pairs: Sequence[Pair], max_images: int = 256, pixel_stride: int = 2) -> tuple[list, list]:
    """Per-band mean and std over (up to ``max_images``, evenly spaced) training images' valid pixels."""
    step = max(1, math.ceil(len(pairs) / max_images))
    stats = BandStats()
    for pair in pairs[::step]:
        image, nodata = read_image(pair.image)
        sub = image[:, ::pixel_stride, ::pixel_stride]
        stats.add(sub, valid_mask(sub, nodata))
    return stats.result()


# ----------------------------------------------------------------------------------------------- transforms
def _resize(image_hwc: np.ndarray, size_wh: tuple[int, int], nearest: bool) -> np.ndarray:
    import cv2

    # INTER_NEAREST_EXACT samples pixel centres as INTER_LINEAR does (INTER_NEAREST is shifted by half a pixel)
    interp = cv2.INTER_NEAREST_EXACT if nearest else cv2.INTER_LINEAR
    if image_hwc.ndim == 3 and image_hwc.shape[2] > 4:
        # cv2 handles up to 512 channels, but slices of 4 keep it on its fast paths
        parts = [
            cv2.resize(image_hwc[:, :, i : i + 4], size_wh, interpolation=interp)
            for i in range(0, image_hwc.shape[2], 4)
        ]
        parts = [p[:, :, None] if p.ndim == 2 else p for p in parts]
        return np.concatenate(parts, axis=2)
    out = cv2.resize(image_hwc, size_wh, interpolation=interp)
    if image_hwc.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


def random_scale_crop(
    image: np.ndarray,
    label: np.ndarray,
    base_size: int,
    crop_size: int,
    rng: np.random.Generator,
    flip: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The built-in's training transform on a normalised image (C, H, W) float32 and its label (H, W).

    Random left-right flip; rescale so the long side is ``base_size`` x U(0.5, 2.0) (aspect kept); pad to at
    least ``crop_size`` (image 0 = mean, label 255 = ignore); random ``crop_size`` square crop.
    Only left-right flips: an up-down flip would mirror SAR layover and shadows across the look direction.
    """
    c, h, w = image.shape
    if flip and rng.random() < 0.5:
        image = image[:, :, ::-1]
        label = label[:, ::-1]
    long_size = int(rng.integers(int(base_size * 0.5), int(base_size * 2.0) + 1))
    if h >= w:
        oh, ow = long_size, max(1, int(w * long_size / h + 0.5))
    else:
        ow, oh = long_size, max(1, int(h * long_size / w + 0.5))
    img = _resize(np.ascontiguousarray(np.moveaxis(image, 0, -1)), (ow, oh), nearest=False)
    lab = _resize(np.ascontiguousarray(label), (ow, oh), nearest=True)
    ph, pw = max(crop_size - oh, 0), max(crop_size - ow, 0)
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)))
        lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=IGNORE_LABEL)
    y = int(rng.integers(0, img.shape[0] - crop_size + 1))
    x = int(rng.integers(0, img.shape[1] - crop_size + 1))
    img = img[y : y + crop_size, x : x + crop_size]
    lab = lab[y : y + crop_size, x : x + crop_size]
    return np.ascontiguousarray(np.moveaxis(img, -1, 0)), np.ascontiguousarray(lab)


# ----------------------------------------------------------------------------------------------- datasets
@dataclass
class Dataset:
    """A split: pairs, its label lookup table and the normalisation it is read with (cached in memory)."""

    pairs: list[Pair]
    lut: np.ndarray
    mean: Sequence[float]
    std: Sequence[float]
    cache: bool = True
    _cache: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image (C, H, W) float32 and label (H, W) uint8 of sample ``index``."""
        hit = self._cache.get(index)
        if hit is not None:
            return hit
        pair = self.pairs[index]
        image, nodata = read_image(pair.image)
        label = read_annotation(pair.annotation, self.lut)
        if image.shape[1:] != label.shape:
            raise DataError(
                f"{pair.image.name} is {image.shape[2]}x{image.shape[1]} but its annotation is "
                f"{label.shape[1]}x{label.shape[0]}"
            )
        if len(self.mean) != image.shape[0]:
            raise DataError(f"{pair.image.name} has {image.shape[0]} bands, the model takes {len(self.mean)}")
        out = (normalise(image, self.mean, self.std, nodata=nodata), label)
        if self.cache:
            with self._lock:
                self._cache[index] = out
        return out


def cache_fits(pairs: Sequence[Pair], bands: int, limit_bytes: int) -> bool:
    """Whether the normalised float32 images of ``pairs`` fit in ``limit_bytes`` (from the first image)."""
    if not pairs:
        return True
    image, _ = read_image(pairs[0].image)
    per = bands * image.shape[1] * image.shape[2] * 5  # float32 image + uint8 label
    return per * len(pairs) <= limit_bytes


def training_batches(
    dataset: Dataset,
    batch_size: int,
    base_size: int,
    crop_size: int,
    rng: np.random.Generator,
    workers: int = 2,
    prefetch: int = 4,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of shuffled, augmented batches (data N x C x crop x crop, labels N x crop x crop).

    The last incomplete batch is dropped (as GluonCV's recipe does), unless the epoch has a single batch.
    Samples are read and augmented in ``workers`` threads (OpenCV and numpy release the GIL).
    """
    order = rng.permutation(len(dataset))
    n_batches = max(1, len(order) // batch_size)
    seeds = rng.integers(0, 2**31, size=len(order))

    def make(b: int):
        idx = order[b * batch_size : (b + 1) * batch_size]
        imgs, labs = [], []
        for i in idx:
            image, label = dataset.load(int(i))
            img, lab = random_scale_crop(image, label, base_size, crop_size, np.random.default_rng(seeds[i]))
            imgs.append(img)
            labs.append(lab)
        return np.stack(imgs), np.stack(labs)

    yield from _prefetched(make, n_batches, workers, prefetch)


def _prefetched(make, n: int, workers: int, prefetch: int):
    if workers <= 0:
        for b in range(n):
            yield make(b)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="batch") as pool:
        pending: queue.Queue = queue.Queue()
        submitted = 0
        while submitted < min(n, prefetch):
            pending.put(pool.submit(make, submitted))
            submitted += 1
        for _ in range(n):
            future = pending.get()
            if submitted < n:
                pending.put(pool.submit(make, submitted))
                submitted += 1
            yield future.result()


def validation_batches(dataset: Dataset, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Whole validation images, batched by shape (non-square and odd sizes are fine)."""
    by_shape: dict[tuple, list[int]] = {}
    for i, pair in enumerate(dataset.pairs):
        by_shape.setdefault(image_shape(pair.image), []).append(i)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            items = [dataset.load(i) for i in indices[start : start + batch_size]]
            yield np.stack([a for a, _ in items]), np.stack([b for _, b in items])


def native_scale_batches(
    dataset: Dataset, batch_size: int, crop_size: int, rng: np.random.Generator, batches: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``batches`` batches of random ``crop_size`` crops of training images at their own scale (no rescaling, no
    flip; smaller images padded with 0 = the mean): the inputs evaluation and inference see, for re-estimating
    batch-norm statistics (:func:`segmentation_trainer.fit.recalibrate_batchnorm`)."""
    order = rng.permutation(len(dataset))
    for b in range(batches):
        imgs, labs = [], []
        for k in range(batch_size):
            image, label = dataset.load(int(order[(b * batch_size + k) % len(order)]))
            c, h, w = image.shape
            ph, pw = max(crop_size - h, 0), max(crop_size - w, 0)
            if ph or pw:
                image = np.pad(image, ((0, 0), (0, ph), (0, pw)))
                label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_LABEL)
            y = int(rng.integers(0, image.shape[1] - crop_size + 1))
            x = int(rng.integers(0, image.shape[2] - crop_size + 1))
            imgs.append(image[:, y : y + crop_size, x : x + crop_size])
            labs.append(label[y : y + crop_size, x : x + crop_size])
        yield np.stack(imgs), np.stack(labs)
