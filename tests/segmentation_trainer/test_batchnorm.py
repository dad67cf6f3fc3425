"""Batch-norm statistics re-estimated before validation (segmentation_trainer.fit.recalibrate_batchnorm): after
it, evaluation (running statistics) computes what training mode (batch statistics) computes."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from segmentation_trainer.fit import (  # noqa: E402
    batchnorm_layers,
    bn_calibration_batches,
    recalibrate_batchnorm,
)
from segmentation_trainer.hyperparameters import parse_hyperparameters  # noqa: E402
from segmentation_trainer.model import tiny_network  # noqa: E402


def _without_dropout(net):
    from mxnet.gluon import nn

    def walk(block):
        if isinstance(block, nn.Dropout):
            block._rate = 0.0
        for child in block._children.values():
            walk(child)

    walk(net)
    return net


def _train_a_little(net, x, y, steps=3):
    from mxnet import autograd

    trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.05, "momentum": 0.9})
    loss = mx.gluon.loss.SoftmaxCrossEntropyLoss(axis=1)
    for _ in range(steps):
        with autograd.record():
            out = net(x)
            value = loss(out[0], y) + loss(out[1], y)
        value.backward()
        trainer.step(x.shape[0])


@pytest.mark.parametrize("hybridize", [True, False])
def test_eval_mode_equals_train_mode_after_recalibration(hybridize):
    from mxnet import autograd

    mx.random.seed(0)
    net = _without_dropout(tiny_network(num_classes=2, bands=3))
    if hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    rng = np.random.default_rng(0)
    x = mx.nd.array(rng.normal(3.0, 2.0, size=(4, 3, 32, 32)).astype(np.float32))
    y = mx.nd.array(rng.integers(0, 2, size=(4, 32, 32)).astype(np.float32))
    _train_a_little(net, x, y)
    with autograd.train_mode():
        train_mode = net(x)[0].asnumpy()
    before = net(x)[0].asnumpy()  # running statistics: lagging the weights
    assert np.abs(before - train_mode).max() > 1e-2
    used = recalibrate_batchnorm(net, [(x.asnumpy(), None)] * 5, [mx.cpu()])
    assert used == 5
    after = net(x)[0].asnumpy()
    scale = np.abs(train_mode).max()
    assert np.abs(after - train_mode).max() < 1e-3 * max(scale, 1.0)
    assert len(batchnorm_layers(net)) > 10


def test_calibration_batches_setting():
    def hp(**extra):
        return parse_hyperparameters({"num_classes": "2", "num_training_samples": "8", **extra})

    assert bn_calibration_batches(hp(), 100) == 8
    assert bn_calibration_batches(hp(), 12) == 3
    assert bn_calibration_batches(hp(), 2) == 1
    assert bn_calibration_batches(hp(earthmon_bn_recalibration_batches="0"), 100) == 0
    assert bn_calibration_batches(hp(earthmon_bn_recalibration_batches="20"), 4) == 20


def test_native_scale_batches_are_unscaled_crops():
    from segmentation_trainer.data import Dataset, Pair, label_lut, native_scale_batches

    class InMemory(Dataset):
        def load(self, index):
            image = np.full((3, 40, 30), float(index), np.float32)
            return image, np.full((40, 30), index % 2, np.uint8)

    ds = InMemory([Pair(None, None)] * 5, label_lut(None), [0.0] * 3, [1.0] * 3)
    batches = list(native_scale_batches(ds, 4, 32, np.random.default_rng(0), 3))
    assert len(batches) == 3
    data, label = batches[0]
    assert data.shape == (4, 3, 32, 32) and label.shape == (4, 32, 32)
    # the 30 px wide images are padded (0 = the mean, label 255), never rescaled
    for img, lab in zip(data, label, strict=True):
        assert set(np.unique(img[:, :, :30])) <= set(range(5)) and (img[:, :, 30:] == 0).all()
        assert (lab[:, 30:] == 255).all()
