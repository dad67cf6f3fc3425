"""Sliding-window inference on arrays: pure given a network.

The networks of this image (GluonCV DeepLabV3 and PSP) are built for a fixed input size, the training
``crop_size``, so images of any other size are predicted window by window:

- an image smaller than the window (in either axis) is padded at the bottom/right with zeros of the
  normalised input (the training mean) and the prediction cropped back;
- a larger image is covered by overlapping windows (stride = ``overlap`` fraction of the window, the last
  window aligned to the far edge so no padding is needed); the softmax probabilities of overlapping windows
  are averaged, so every pixel's probabilities sum to 1;
- non-square images and odd sizes work the same way.

``forward`` is any callable taking a float32 batch (N, C, h, w) and returning logits (N, K, h, w) as numpy;
:func:`mxnet_forward` wraps a Gluon network into one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from segmentation_trainer.pixels import normalise

Forward = Callable[[np.ndarray], np.ndarray]


class DeadlineExceeded(Exception):
    """Prediction stopped because its deadline passed (checked between window batches)."""

    def __init__(self, message: str, done: int = 0, total: int = 0):
        super().__init__(message)
        self.done = done
        self.total = total


class Deadline:
    """A point in time (monotonic clock) a prediction must finish by; :meth:`check` is called between window
    batches and raises :class:`DeadlineExceeded` once it has passed (cooperative cancellation: a forward
    pass already running is never interrupted)."""

    def __init__(
        self, seconds: float, clock: Callable[[], float] = time.monotonic, start: float | None = None
    ):
        self.seconds = float(seconds)
        self.clock = clock
        self.start = clock() if start is None else start
        self.at = self.start + self.seconds

    def remaining(self) -> float:
        return self.at - self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def check(self, done: int = 0, total: int = 0) -> None:
        if self.clock() >= self.at:
            raise DeadlineExceeded(
                f"stopped after {self.elapsed():.1f} s with {done} of {total} windows predicted", done, total
            )


def window_offsets(
    height: int, width: int, window: int | tuple[int, int], overlap: float = 1 / 3
) -> list[tuple[int, int]]:
    """Top-left corners of the windows :func:`sliding_window_probabilities` runs on an image (H, W)."""
    win_h, win_w = (window, window) if isinstance(window, int) else window
    padded_h, padded_w = max(height, win_h), max(width, win_w)
    stride_h = max(1, int(round(win_h * (1 - overlap))))
    stride_w = max(1, int(round(win_w * (1 - overlap))))
    return [
        (y, x)
        for y in window_starts(padded_h, win_h, stride_h)
        for x in window_starts(padded_w, win_w, stride_w)
    ]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` covering ``length`` (last one aligned to the end)."""
    if window < 1 or stride < 1:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive")
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax in float32."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


def sliding_window_probabilities(
    forward: Forward,
    image: np.ndarray,
    window: int | tuple[int, int],
    overlap: float = 1 / 3,
    batch_size: int = 4,
    deadline: Deadline | None = None,
) -> np.ndarray:
    """Class probabilities (K, H, W) float32 of a normalised image (C, H, W) by overlapping windows.

    ``overlap`` is the fraction of a window shared with its neighbour (0 = tiles edge to edge; GluonCV's
    evaluation uses a stride of 2/3 of the crop, i.e. overlap 1/3). ``deadline`` is checked before every
    batch of windows (:class:`DeadlineExceeded` once it has passed).
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    win_h, win_w = (window, window) if isinstance(window, int) else window
    channels, height, width = image.shape
    padded_h, padded_w = max(height, win_h), max(width, win_w)
    if (padded_h, padded_w) != (height, width):
        padded = np.zeros((channels, padded_h, padded_w), dtype=np.float32)
        padded[:, :height, :width] = image
    else:
        padded = np.ascontiguousarray(image, dtype=np.float32)
    offsets = window_offsets(height, width, (win_h, win_w), overlap)
    total: np.ndarray | None = None
    counts = np.zeros((padded_h, padded_w), dtype=np.float32)
    for first in range(0, len(offsets), max(1, batch_size)):
        if deadline is not None:
            deadline.check(first, len(offsets))
        chunk = offsets[first : first + max(1, batch_size)]
        batch = np.stack([padded[:, y : y + win_h, x : x + win_w] for y, x in chunk])
        logits = np.asarray(forward(batch), dtype=np.float32)
        if logits.ndim != 4 or logits.shape[0] != len(chunk) or logits.shape[2:] != (win_h, win_w):
            raise ValueError(
                f"network returned shape {logits.shape} for input {batch.shape}: "
                f"expected (N, K, {win_h}, {win_w})"
            )
        probs = softmax(logits.copy(), axis=1)
        if total is None:
            total = np.zeros((probs.shape[1], padded_h, padded_w), dtype=np.float32)
        for (y, x), p in zip(chunk, probs, strict=True):
            total[:, y : y + win_h, x : x + win_w] += p
            counts[y : y + win_h, x : x + win_w] += 1
    assert total is not None
    total /= counts
    return np.ascontiguousarray(total[:, :height, :width])


@dataclass(frozen=True)
class PredictionConfig:
    """What inference needs to know about a model (from its metadata)."""

    num_classes: int
    bands: int
    crop_size: int | tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1.0  # applied before mean/std (1/255 for 8-bit images when the stats are on [0, 1])
    overlap: float = 1 / 3
    batch_size: int = 4


class Predictor:
    """Raw image (C, H, W) -> class probabilities (K, H, W), given a forward callable and a config.

    ``normaliser`` (raw (C, H, W) -> normalised float32) defaults to :func:`normalise` with the config's
    statistics; the server passes the model's own (``ModelMetadata.normalise``, which also zeroes nodata).
    """

    def __init__(
        self,
        forward: Forward,
        config: PredictionConfig,
        normaliser: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        self.forward = forward
        self.config = config
        self.normaliser = normaliser

    def window_count(self, height: int, width: int) -> int:
        """How many windows (network inputs of the crop size) an image of (height, width) needs."""
        return len(window_offsets(height, width, self.config.crop_size, self.config.overlap))

    def probabilities(
        self, image: np.ndarray, scale: float | None = None, deadline: Deadline | None = None
    ) -> np.ndarray:
        cfg = self.config
        if image.ndim != 3 or image.shape[0] != cfg.bands:
            raise ValueError(
                f"the model takes {cfg.bands} band(s); the image has "
                f"{image.shape[0] if image.ndim == 3 else image.ndim} (shape {image.shape})"
            )
        if self.normaliser is not None and scale is None:
            x = np.asarray(self.normaliser(image), dtype=np.float32)
        else:
            x = normalise(image, cfg.mean, cfg.std, cfg.scale if scale is None else scale)
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        if deadline is not None:
            deadline.check(0, self.window_count(*image.shape[1:]))
        return sliding_window_probabilities(
            self.forward, x, cfg.crop_size, cfg.overlap, cfg.batch_size, deadline=deadline
        )


def class_mask(
    probabilities: np.ndarray, ignore: np.ndarray | None = None, ignore_value: int = 255
) -> np.ndarray:
    """Argmax class ids (H, W) uint8; ``ignore`` pixels (e.g. nodata) set to ``ignore_value``."""
    mask = probabilities.argmax(axis=0).astype(np.uint8)
    if ignore is not None:
        mask[ignore] = ignore_value
    return mask


def mxnet_forward(net, ctx=None) -> Forward:
    """Wrap a Gluon network (first output = logits) into a numpy forward callable."""
    import mxnet as mx

    ctx = ctx or mx.cpu()

    def forward(batch: np.ndarray) -> np.ndarray:
        out = net(mx.nd.array(batch, ctx=ctx, dtype="float32"))
        if isinstance(out, list | tuple):
            out = out[0]
        return out.asnumpy()

    return forward
