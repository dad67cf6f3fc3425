"""Sliding-window inference (segmentation_trainer.predict), on forward callables and pure arrays."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation_trainer.predict import (
    PredictionConfig,
    Predictor,
    class_mask,
    normalise,
    sliding_window_probabilities,
    softmax,
    window_starts,
)

RNG = np.random.default_rng(7)
WEIGHTS = RNG.normal(size=(3, 4)).astype(np.float32)  # 3 classes from 4 bands


def pointwise(batch: np.ndarray) -> np.ndarray:
    """A per-pixel linear classifier (a 1x1 convolution): whole-image output is exactly defined."""
    return np.einsum("kc,nchw->nkhw", WEIGHTS, batch)


class FixedSizeNet:
    """Refuses any input but its crop size (like GluonCV DeepLab/PSP) and records the batches it saw."""

    def __init__(self, size: tuple[int, int]):
        self.size = size
        self.batches: list[tuple[int, ...]] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.shape[2:] == self.size, f"got {batch.shape}"
        assert batch.dtype == np.float32
        self.batches.append(batch.shape)
        return pointwise(batch)


@pytest.mark.parametrize(
    ("length", "window", "stride", "expected"),
    [
        (100, 100, 66, [0]),
        (50, 100, 66, [0]),
        (101, 100, 66, [0, 1]),
        (240, 100, 50, [0, 50, 100, 140]),
        (300, 100, 100, [0, 100, 200]),
    ],
)
def test_window_starts(length, window, stride, expected):
    assert window_starts(length, window, stride) == expected


def whole_image_probabilities(image: np.ndarray) -> np.ndarray:
    return softmax(pointwise(image[None]).copy(), axis=1)[0]


@pytest.mark.parametrize(
    "shape",
    [(4, 32, 32), (4, 97, 53), (4, 20, 75), (4, 13, 9), (4, 32, 33), (4, 150, 150)],
    ids=["exact", "non-square-larger", "short-and-wide", "smaller-than-window", "odd", "many-windows"],
)
def test_sliding_window_equals_whole_image(shape):
    image = RNG.normal(size=shape).astype(np.float32)
    net = FixedSizeNet((32, 32))
    probs = sliding_window_probabilities(net, image, 32, overlap=1 / 3, batch_size=3)
    assert probs.shape == (3, *shape[1:]) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, whole_image_probabilities(image), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert all(b[0] <= 3 for b in net.batches)


def test_windows_cover_everything_with_overlap_and_rectangular_windows():
    net = FixedSizeNet((16, 24))
    image = RNG.normal(size=(4, 40, 70)).astype(np.float32)
    probs = sliding_window_probabilities(net, image, (16, 24), overlap=0.5, batch_size=100)
    np.testing.assert_allclose(probs, whole_image_probabilities(image), rtol=1e-5, atol=1e-6)
    # rows 0, 8, 16, 24 (24 = 40 - 16) and columns 0, 12, 24, 36, 46 (46 = 70 - 24): 20 windows, one batch
    assert net.batches == [(20, 4, 16, 24)]


def test_overlapping_windows_average_probabilities():
    """A position-dependent network: overlapping regions get the mean of the windows' softmax outputs."""
    calls = []

    def net(batch):
        calls.append(batch.copy())
        logits = np.zeros((batch.shape[0], 2, *batch.shape[2:]), np.float32)
        logits[:, 1] = batch[:, 0] * 0 + np.arange(batch.shape[0])[:, None, None]  # window i: logit i
        return logits

    image = np.zeros((1, 4, 6), np.float32)
    probs = sliding_window_probabilities(net, image, (4, 4), overlap=0.5, batch_size=8)
    # windows at x = 0, 2: column 2-3 are covered by both (logits 0 and 1)
    p0, p1 = softmax(np.array([[0.0, 0.0]]))[0, 1], softmax(np.array([[0.0, 1.0]]))[0, 1]
    np.testing.assert_allclose(probs[1, :, :2], p0, rtol=1e-6)
    np.testing.assert_allclose(probs[1, :, 2:4], (p0 + p1) / 2, rtol=1e-6)
    np.testing.assert_allclose(probs[1, :, 4:], p1, rtol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-6)


def test_small_image_is_padded_with_the_normalised_mean():
    seen = []

    def net(batch):
        seen.append(batch.copy())
        return pointwise(batch)

    image = np.ones((4, 5, 3), np.float32)
    sliding_window_probabilities(net, image, 8)
    (batch,) = seen
    assert batch.shape == (1, 4, 8, 8)
    assert (
        (batch[0, :, :5, :3] == 1).all()
        and (batch[0, :, 5:, :] == 0).all()
        and (batch[0, :, :, 3:] == 0).all()
    )


def test_wrong_network_output_is_reported():
    with pytest.raises(ValueError, match="network returned shape"):
        sliding_window_probabilities(lambda b: b[:, :, :2, :2], np.zeros((1, 8, 8), np.float32), 8)


def test_normalise_per_band():
    image = np.stack([np.full((2, 2), 10.0), np.full((2, 2), 255.0)]).astype(np.uint8)
    out = normalise(image, mean=[5.0, 0.5], std=[5.0, 0.25], scale=1.0)
    np.testing.assert_allclose(out[0], 1.0)
    out = normalise(image, mean=[0.0, 0.5], std=[1.0, 0.25], scale=1 / 255)
    np.testing.assert_allclose(out[1], 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="bands"):
        normalise(image, [0.0], [1.0])


def test_predictor_checks_bands_and_handles_nan():
    cfg = PredictionConfig(num_classes=3, bands=4, crop_size=16, mean=(0.0,) * 4, std=(1.0,) * 4)
    predictor = Predictor(FixedSizeNet((16, 16)), cfg)
    with pytest.raises(ValueError, match="4 band"):
        predictor.probabilities(np.zeros((3, 16, 16), np.float32))
    image = RNG.normal(size=(4, 20, 30)).astype(np.float32)
    image[:, 0, 0] = np.nan
    probs = predictor.probabilities(image)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_class_mask_with_ignore():
    probs = np.array([[[0.9, 0.2]], [[0.1, 0.8]]], np.float32)
    np.testing.assert_array_equal(class_mask(probs), [[0, 1]])
    np.testing.assert_array_equal(class_mask(probs, ignore=np.array([[False, True]])), [[0, 255]])
