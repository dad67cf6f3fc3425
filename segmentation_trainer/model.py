"""Segmentation networks: GluonCV's DeepLabV3, FCN and PSPNet on a dilated ResNet, for any input size and bands.

The edge that builds MXNet networks (MXNet and GluonCV are imported lazily, inside the functions).

``build_network(NetworkConfig(...))`` returns a :class:`SegmentationNetwork` (a Gluon ``HybridBlock``) whose
``net(x)`` takes ``x`` float32 NCHW (normalised input) and returns a tuple whose first element is the logits,
NCHW with the input's height and width (the second, when ``aux`` is on, is the auxiliary FCN head's logits,
trained with weight 0.5 as in the built-in algorithm).

What differs from ``gluoncv.model_zoo.get_deeplab`` (and why):

- Any input size. GluonCV's heads resize to sizes fixed at construction (``crop_size``), so a trained model
  fails on other, non-square or odd sizes (a known pain of the built-in algorithm). Here every resize takes
  its size from the tensor itself (``BilinearResize2D(mode='like')``; the ASPP image pooling is a
  ``broadcast_like``). ``net.fix_input_size(h, w)`` switches to fixed sizes, which the ONNX exporter needs.
- Any number of input bands: when ``bands != 3`` the stem's first convolution is replaced; with pretrained
  RGB weights its kernel is the mean of the RGB kernels, repeated per band and scaled by ``3 / bands``.
- Pretrained backbone weights come from a local file (a ``pretrained`` channel or a path), never from a
  download: GluonCV's model store is gone. The file is an ImageNet classifier's parameters, as GluonCV
  saved them (e.g. ``resnet50_v1s-25a187fa.params``, from ``~/.mxnet/models`` of a machine that has them).
- The parameter names are GluonCV's (``conv1.0.weight``, ``layer3.5.conv2.weight``, ``head.aspp...``,
  ``auxlayer.block...``), so ``model_algo-1`` loads into ``gluoncv.model_zoo.DeepLabV3`` and back.

Backbones: ``resnet-50`` and ``resnet-101`` (the built-in's values; GluonCV's ``resnet50_v1s`` and
``resnet101_v1s``, dilated to output stride 8) and ``tiny``: a 4-block basic-block ResNet with narrow
heads (about 5 M parameters) that runs a forward pass on a 64 x 64 crop in milliseconds on a CPU.

Tests (and serving tests) use the tiny model::

    from segmentation_trainer.model import tiny_network
    net = tiny_network(num_classes=2, bands=4)            # initialised, on the CPU
    logits = net(mx.nd.zeros((1, 4, 64, 64)))[0]          # (1, 2, 64, 64)

and ``segmentation_trainer.export.save_model_dir(net, metadata, directory)`` writes a model directory that
``segmentation_trainer.export.load_model`` reads back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from segmentation_trainer.contract import ALGORITHMS, BACKBONES

AUX_WEIGHT = 0.5
HEAD_LR_MULT = 10.0  # GluonCV trains the freshly initialised heads with 10x the backbone's learning rate


@dataclass(frozen=True)
class NetworkConfig:
    """What defines a network's structure (stored in the model's metadata to rebuild it)."""

    num_classes: int
    algorithm: str = "deeplab"
    backbone: str = "resnet-50"
    bands: int = 3
    aux: bool = True

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {self.algorithm!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, not {self.backbone!r}")
        if not 2 <= int(self.num_classes) <= 254:
            raise ValueError(f"num_classes must be 2-254, not {self.num_classes}")
        if int(self.bands) < 1:
            raise ValueError(f"bands must be at least 1, not {self.bands}")


@dataclass(frozen=True)
class _BackboneSpec:
    c3_channels: int  # output channels of layer3 (the auxiliary head's input)
    c4_channels: int  # output channels of layer4 (the main head's input)
    head_channels: int  # DeepLab ASPP width / PSP block width
    stem_key: str  # parameter holding the first convolution's kernel


_SPECS = {
    "resnet-50": _BackboneSpec(1024, 2048, 256, "conv1.0.weight"),
    "resnet-101": _BackboneSpec(1024, 2048, 256, "conv1.0.weight"),
    "tiny": _BackboneSpec(256, 512, 32, "conv1.0.weight"),
}
_PSP_BLOCK_CHANNELS = {"resnet-50": 512, "resnet-101": 512, "tiny": 32}


def feature_size(size: int) -> int:
    """Height (or width) of the stride-8 feature map of an input of ``size`` pixels (three ceil halvings)."""
    for _ in range(3):
        size = math.ceil(size / 2)
    return size


def _make_backbone(name: str, norm_layer, norm_kwargs):
    from gluoncv.model_zoo.resnetv1b import BasicBlockV1b, ResNetV1b, resnet50_v1s, resnet101_v1s

    kwargs = {"dilated": True, "norm_layer": norm_layer, "norm_kwargs": norm_kwargs}
    if name == "resnet-50":
        return resnet50_v1s(pretrained=False, **kwargs)
    if name == "resnet-101":
        return resnet101_v1s(pretrained=False, **kwargs)
    return ResNetV1b(
        BasicBlockV1b,
        [1, 1, 1, 1],
        deep_stem=True,
        stem_width=16,
        avg_down=True,
        name_prefix="tiny_",
        **kwargs,
    )


def _blocks():
    """Build the block classes (they subclass MXNet's HybridBlock, so MXNet is imported here, lazily)."""
    from gluoncv.model_zoo.deeplabv3 import _ASPPConv
    from gluoncv.model_zoo.fcn import _FCNHead
    from gluoncv.model_zoo.pspnet import _PSP1x1Conv
    from mxnet.gluon import HybridBlock, nn
    from mxnet.gluon.contrib.nn import HybridConcurrent

    def norm_kw(norm_kwargs):
        return {} if norm_kwargs is None else norm_kwargs

    class SizeAware(HybridBlock):
        """A block that resizes either to the size of a tensor (default) or to a fixed size (export)."""

        _fixed: tuple[int, int] | None = None

        def resize(self, F, x, like, fixed):
            if fixed is None:
                return F.contrib.BilinearResize2D(x, like, mode="like")
            return F.contrib.BilinearResize2D(x, height=fixed[0], width=fixed[1])

    class AsppPooling(HybridBlock):
        def __init__(self, in_channels, out_channels, norm_layer, norm_kwargs):
            super().__init__()
            self.gap = nn.HybridSequential()
            with self.gap.name_scope():
                self.gap.add(nn.GlobalAvgPool2D())
                self.gap.add(
                    nn.Conv2D(in_channels=in_channels, channels=out_channels, kernel_size=1, use_bias=False)
                )
                self.gap.add(norm_layer(in_channels=out_channels, **norm_kw(norm_kwargs)))
                self.gap.add(nn.Activation("relu"))

        def hybrid_forward(self, F, x):
            # Bilinear upsampling of a 1 x 1 map is a broadcast: exact, and valid for any size.
            return F.broadcast_like(self.gap(x), x, lhs_axes=(2, 3), rhs_axes=(2, 3))

    class ASPP(HybridBlock):
        def __init__(self, in_channels, out_channels, atrous_rates, norm_layer, norm_kwargs):
            super().__init__()
            b0 = nn.HybridSequential()
            with b0.name_scope():
                b0.add(
                    nn.Conv2D(in_channels=in_channels, channels=out_channels, kernel_size=1, use_bias=False)
                )
                b0.add(norm_layer(in_channels=out_channels, **norm_kw(norm_kwargs)))
                b0.add(nn.Activation("relu"))
            branches = [b0]
            for rate in atrous_rates:
                branches.append(_ASPPConv(in_channels, out_channels, rate, norm_layer, norm_kwargs))
            branches.append(AsppPooling(in_channels, out_channels, norm_layer, norm_kwargs))
            self.concurent = HybridConcurrent(axis=1)  # GluonCV's spelling: keeps the parameter names
            with self.concurent.name_scope():
                for branch in branches:
                    self.concurent.add(branch)
            self.project = nn.HybridSequential()
            with self.project.name_scope():
                self.project.add(
                    nn.Conv2D(
                        in_channels=5 * out_channels, channels=out_channels, kernel_size=1, use_bias=False
                    )
                )
                self.project.add(norm_layer(in_channels=out_channels, **norm_kw(norm_kwargs)))
                self.project.add(nn.Activation("relu"))
                self.project.add(nn.Dropout(0.5))

        def hybrid_forward(self, F, x):
            return self.project(self.concurent(x))

    class DeepLabHead(HybridBlock):
        def __init__(self, in_channels, nclass, channels, norm_layer, norm_kwargs):
            super().__init__()
            with self.name_scope():
                self.aspp = ASPP(in_channels, channels, (12, 24, 36), norm_layer, norm_kwargs)
                self.block = nn.HybridSequential()
                self.block.add(
                    nn.Conv2D(
                        in_channels=channels, channels=channels, kernel_size=3, padding=1, use_bias=False
                    )
                )
                self.block.add(norm_layer(in_channels=channels, **norm_kw(norm_kwargs)))
                self.block.add(nn.Activation("relu"))
                self.block.add(nn.Dropout(0.1))
                self.block.add(nn.Conv2D(in_channels=channels, channels=nclass, kernel_size=1))

        def hybrid_forward(self, F, x):
            return self.block(self.aspp(x))

    class PyramidPooling(SizeAware):
        def __init__(self, in_channels, norm_layer, norm_kwargs):
            super().__init__()
            out_channels = in_channels // 4
            with self.name_scope():
                self.conv1 = _PSP1x1Conv(in_channels, out_channels, norm_layer, norm_kwargs)
                self.conv2 = _PSP1x1Conv(in_channels, out_channels, norm_layer, norm_kwargs)
                self.conv3 = _PSP1x1Conv(in_channels, out_channels, norm_layer, norm_kwargs)
                self.conv4 = _PSP1x1Conv(in_channels, out_channels, norm_layer, norm_kwargs)

        def hybrid_forward(self, F, x):
            feats = [x]
            fixed = self._fixed
            for conv, size in ((self.conv1, 1), (self.conv2, 2), (self.conv3, 3), (self.conv4, 6)):
                if fixed is not None and fixed[0] % size == 0 and fixed[1] % size == 0:
                    # the same bins as adaptive pooling when the size divides evenly; ONNX can export it
                    kernel = (fixed[0] // size, fixed[1] // size)
                    pooled = F.Pooling(x, kernel=kernel, stride=kernel, pool_type="avg")
                else:
                    pooled = F.contrib.AdaptiveAvgPooling2D(x, output_size=size)
                pooled = conv(pooled)
                feats.append(self.resize(F, pooled, x, self._fixed))
            return F.concat(*feats, dim=1)

    class PSPHead(HybridBlock):
        def __init__(self, in_channels, nclass, channels, norm_layer, norm_kwargs):
            super().__init__()
            self.psp = PyramidPooling(in_channels, norm_layer, norm_kwargs)
            with self.name_scope():
                self.block = nn.HybridSequential(prefix="")
                self.block.add(
                    nn.Conv2D(
                        in_channels=2 * in_channels,
                        channels=channels,
                        kernel_size=3,
                        padding=1,
                        use_bias=False,
                    )
                )
                self.block.add(norm_layer(in_channels=channels, **norm_kw(norm_kwargs)))
                self.block.add(nn.Activation("relu"))
                self.block.add(nn.Dropout(0.1))
                self.block.add(nn.Conv2D(in_channels=channels, channels=nclass, kernel_size=1))

        def hybrid_forward(self, F, x):
            return self.block(self.psp(x))

    class SegmentationNetwork(SizeAware):
        """Dilated ResNet + segmentation head (+ auxiliary FCN head on layer3). Outputs logits at input size."""

        def __init__(self, config: NetworkConfig, norm_layer=None, norm_kwargs=None):
            super().__init__()
            norm_layer = norm_layer or nn.BatchNorm
            spec = _SPECS[config.backbone]
            self.config = config
            self.aux = config.aux
            backbone = _make_backbone(config.backbone, norm_layer, norm_kwargs)
            # kept outside the registered children: it owns the classifier (fc) that pretrained files hold
            self._source = SimpleNamespace(backbone=backbone)
            with self.name_scope():
                self.conv1 = backbone.conv1
                self.bn1 = backbone.bn1
                self.relu = backbone.relu
                self.maxpool = backbone.maxpool
                self.layer1 = backbone.layer1
                self.layer2 = backbone.layer2
                self.layer3 = backbone.layer3
                self.layer4 = backbone.layer4
                nclass = config.num_classes
                if config.algorithm == "deeplab":
                    self.head = DeepLabHead(
                        spec.c4_channels, nclass, spec.head_channels, norm_layer, norm_kwargs
                    )
                elif config.algorithm == "psp":
                    channels = _PSP_BLOCK_CHANNELS[config.backbone]
                    self.head = PSPHead(spec.c4_channels, nclass, channels, norm_layer, norm_kwargs)
                else:
                    self.head = _FCNHead(
                        spec.c4_channels, nclass, norm_layer=norm_layer, norm_kwargs=norm_kwargs
                    )
                if config.aux:
                    self.auxlayer = _FCNHead(
                        spec.c3_channels, nclass, norm_layer=norm_layer, norm_kwargs=norm_kwargs
                    )

        def fix_input_size(self, height: int, width: int) -> None:
            """Resize to fixed sizes from now on (call before hybridize; the ONNX exporter needs it)."""
            self._fixed = (int(height), int(width))
            if isinstance(self.head, PSPHead):
                self.head.psp._fixed = (feature_size(height), feature_size(width))

        def base_forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            c3 = self.layer3(self.layer2(self.layer1(x)))
            return c3, self.layer4(c3)

        def hybrid_forward(self, F, x):
            c3, c4 = self.base_forward(x)
            outputs = [self.resize(F, self.head(c4), x, self._fixed)]
            if self.aux:
                outputs.append(self.resize(F, self.auxlayer(c3), x, self._fixed))
            return tuple(outputs)

        def head_blocks(self):
            return [self.head] + ([self.auxlayer] if self.config.aux else [])

    return SegmentationNetwork


_NETWORK_CLASS = None


def network_class():
    """The :class:`SegmentationNetwork` class (built on first use: importing it imports MXNet)."""
    global _NETWORK_CLASS
    if _NETWORK_CLASS is None:
        _NETWORK_CLASS = _blocks()
    return _NETWORK_CLASS


def build_network(
    config: NetworkConfig,
    ctx: Any = None,
    pretrained_backbone: str | Path | None = None,
    syncbn_devices: int = 0,
    initialize: bool = True,
):
    """A new network for ``config``, initialised on ``ctx`` (a Context or list of Contexts; default CPU).

    ``pretrained_backbone``: path of an ImageNet classifier's parameter file (GluonCV's ResNet v1s) loaded
    into the backbone before its stem is adapted to ``config.bands``. ``syncbn_devices`` > 1 uses
    SyncBatchNorm across that many devices (the ``syncbn`` hyperparameter).
    """
    import mxnet as mx
    from mxnet import init

    norm_layer, norm_kwargs = None, None
    if syncbn_devices > 1:
        norm_layer = mx.gluon.contrib.nn.SyncBatchNorm
        norm_kwargs = {"num_devices": syncbn_devices}
    net = network_class()(config, norm_layer=norm_layer, norm_kwargs=norm_kwargs)
    ctx = ctx if ctx is not None else mx.cpu()
    if pretrained_backbone is not None:
        load_backbone_weights(net, pretrained_backbone)  # then adapts the stem to config.bands
    else:
        _replace_stem(net, config.bands, None)
    if not initialize:
        return net
    if pretrained_backbone is None:
        _backbone_params(net).initialize(init.Xavier(magnitude=2), ctx=ctx)
    for block in net.head_blocks():
        block.initialize(init.Xavier(magnitude=2), ctx=ctx, force_reinit=True)
        block.collect_params().setattr("lr_mult", HEAD_LR_MULT)
    net.collect_params().reset_ctx(ctx)
    return net


def _backbone_params(net):
    params = net.collect_params()
    head_names = set()
    for block in net.head_blocks():
        head_names.update(block.collect_params().keys())
    from mxnet.gluon import ParameterDict

    out = ParameterDict()
    for name, param in params.items():
        if name not in head_names:
            out._params[name] = param
    return out


def _first_conv(net):
    stem = net.conv1
    return stem[0] if hasattr(stem, "__getitem__") else stem


def _replace_stem(net, bands: int, rgb_kernel):
    """Give the stem's first convolution ``bands`` input channels (from the RGB kernel when there is one)."""
    import mxnet as mx
    from mxnet.gluon import nn

    old = _first_conv(net)
    if rgb_kernel is None and bands == 3:
        return
    with net.conv1.name_scope():
        new = nn.Conv2D(
            channels=old._channels,
            kernel_size=old._kwargs["kernel"],
            strides=old._kwargs["stride"],
            padding=old._kwargs["pad"],
            use_bias=False,
            in_channels=bands,
        )
    if rgb_kernel is not None:
        import numpy as np

        w = rgb_kernel.asnumpy()
        if bands != 3:
            w = np.repeat(w.mean(axis=1, keepdims=True), bands, axis=1) * (3.0 / bands)
        new.initialize(ctx=mx.cpu())
        new.weight.set_data(mx.nd.array(w))
    net.conv1._children["0"] = new


def load_backbone_weights(net, path: str | Path) -> None:
    """Load an ImageNet classifier's parameters (GluonCV ResNet v1s) into ``net``'s backbone.

    Raises ``ValueError`` with what to do when the file is missing or is for another architecture.
    """
    import mxnet as mx

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pretrained backbone weights not found: {path}")
    backbone = net._source.backbone
    # the backbone still holds the original 3-band stem (the network's stem is replaced after loading)
    try:
        backbone.load_parameters(str(path), ctx=mx.cpu(), allow_missing=False, ignore_extra=True)
    except (AssertionError, mx.MXNetError, ValueError) as exc:
        raise ValueError(
            f"{path.name} does not fit backbone {net.config.backbone!r}: {str(exc).splitlines()[0][:300]} "
            f"(expected GluonCV's ImageNet weights for {net.config.backbone.replace('-', '')}_v1s)"
        ) from exc
    rgb = _first_conv(net).weight.data()
    if net.config.bands != 3:
        _replace_stem(net, net.config.bands, rgb)


def tiny_network(
    num_classes: int = 2, bands: int = 3, algorithm: str = "deeplab", aux: bool = True, ctx=None
):
    """A small, initialised network for tests and demos (same code paths, narrow 'tiny' backbone)."""
    config = NetworkConfig(
        num_classes=num_classes, algorithm=algorithm, backbone="tiny", bands=bands, aux=aux
    )
    return build_network(config, ctx=ctx)


def count_parameters(net) -> int:
    return int(sum(p.data().size for p in net.collect_params().values() if p._data is not None))
