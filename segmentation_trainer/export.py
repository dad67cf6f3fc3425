"""Model artifacts: write a model directory after training, and load one back for inference.

A model directory (``/opt/ml/model``, tarred by SageMaker to ``model.tar.gz``) holds:

- ``hyperparams.json``   the hyperparameters of the job (string values), as the built-in algorithm writes them
- ``model_algo-1``       Gluon parameters of the final network (GluonCV names: loads into GluonCV's models)
- ``model_best.params``  Gluon parameters of the epoch with the best validation mIoU (the final one without
                         validation data); this is the network that is served and exported
- ``model-symbol.json`` + ``model-0000.params``  the hybridized graph of the best network, any input size
                         (``mx.gluon.SymbolBlock.imports``; first output = logits)
- ``model.onnx``         the best network in ONNX (onnx's default opset), FIXED input height and width = ``crop_size``
                         (the MXNet exporter has no converter for size-agnostic resizing), dynamic batch;
                         input ``data`` float32 N x bands x crop x crop normalised, output logits N x K x crop x crop
- ``metadata.json``      what inference needs (:data:`METADATA_KEYS`): classes, bands, normalisation, crop size,
                         network structure, metrics, versions

``load_model(model_dir)`` returns ``(net, metadata)``: ``net(x)`` takes float32 NCHW normalised input of any
size and returns a tuple whose first element is the logits (NCHW, same height and width);
``metadata`` is a :class:`ModelMetadata` (a dict) with ``metadata.normalise(array)``.
It also loads a model directory written by SageMaker's built-in algorithm (``hyperparams.json`` +
``model_algo-1``, RGB, ImageNet normalisation on [0, 1] so ``input_scale`` = 1/255).

For tests: ``write_tiny_model_dir(directory, num_classes=2, bands=4)`` writes a complete directory with a
small untrained network (see :func:`segmentation_trainer.model.tiny_network`) in about a second.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segmentation_trainer import pixels
from segmentation_trainer.contract import IGNORE_LABEL
from segmentation_trainer.model import NetworkConfig

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
BUILTIN_PARAMS = "model_algo-1"
BEST_PARAMS = "model_best.params"
HYPERPARAMS_FILE = "hyperparams.json"
SYMBOL_PREFIX = "model"
ONNX_FILE = "model.onnx"

FORMAT_VERSION = 1
# ImageNet statistics on [0, 1]: what GluonCV (and so the built-in algorithm) normalises RGB images with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

METADATA_KEYS = (
    "format_version",
    "algorithm",
    "backbone",
    "num_classes",
    "class_names",
    "bands",
    "band_names",
    "aux",
    "mean",
    "std",
    "input_scale",
    "nodata",
    "crop_size",
    "base_size",
    "ignore_label",
    "input_format",
    "params_file",
    "symbol",
    "onnx",
    "metrics",
    "trained_with",
)


class ModelMetadata(dict):
    """The metadata dict, plus ``normalise``. Keys: :data:`METADATA_KEYS`."""

    def normalise(self, array: np.ndarray) -> np.ndarray:
        """Raw pixels (H, W, C), (C, H, W) or (H, W) for one band -> float32 (C, H, W) ready for the network.

        ``(array * input_scale - mean) / std`` per band; pixels that are nodata in every band or not finite in
        some band become 0 in every band (the training mean), exactly as in training. A 3-dimensional array is taken as
        channels-first when its first axis has ``bands`` entries, else channels-last.
        """
        return normalise(array, self)

    def network_config(self) -> NetworkConfig:
        return NetworkConfig(
            num_classes=int(self["num_classes"]),
            algorithm=self["algorithm"],
            backbone=self["backbone"],
            bands=int(self["bands"]),
            aux=bool(self.get("aux", True)),
        )


def to_chw(array: np.ndarray, bands: int) -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) -> (C, H, W), checking the band count."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3:
        if a.shape[0] != bands and a.shape[-1] == bands:
            a = np.moveaxis(a, -1, 0)
    else:
        raise ValueError(f"an image must have 2 or 3 dimensions, not shape {a.shape}")
    if a.shape[0] != bands:
        raise ValueError(f"the model takes {bands} band(s); the image has shape {np.asarray(array).shape}")
    return a


def normalise(array: np.ndarray, metadata: Mapping[str, Any]) -> np.ndarray:
    """See :meth:`ModelMetadata.normalise`: the model's statistics applied by the one rule of
    :func:`segmentation_trainer.pixels.normalise` (the rule training used)."""
    a = to_chw(array, int(metadata["bands"]))
    return pixels.normalise(
        a,
        metadata["mean"],
        metadata["std"],
        scale=float(metadata.get("input_scale", 1.0)),
        nodata=metadata.get("nodata"),
    )


def build_metadata(
    network: NetworkConfig,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    crop_size: int,
    base_size: int | None = None,
    class_names: Sequence[str] | None = None,
    band_names: Sequence[str] | None = None,
    input_scale: float = 1.0,
    nodata: float | None = None,
    input_format: str = "geotiff",
    metrics: Mapping[str, Any] | None = None,
) -> ModelMetadata:
    """The metadata of a model (pure). ``onnx``, ``symbol`` and ``params_file`` are filled by the writer."""
    if len(mean) != network.bands or len(std) != network.bands:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for {network.bands} bands")
    names = list(class_names) if class_names else [f"class_{i}" for i in range(network.num_classes)]
    if len(names) != network.num_classes:
        raise ValueError(f"{len(names)} class names for {network.num_classes} classes")
    return ModelMetadata(
        format_version=FORMAT_VERSION,
        algorithm=network.algorithm,
        backbone=network.backbone,
        num_classes=network.num_classes,
        class_names=names,
        bands=network.bands,
        band_names=list(band_names) if band_names else [f"band_{i + 1}" for i in range(network.bands)],
        aux=network.aux,
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        input_scale=float(input_scale),
        nodata=None if nodata is None else float(nodata),
        crop_size=int(crop_size),
        base_size=int(base_size) if base_size else int(crop_size),
        ignore_label=IGNORE_LABEL,
        input_format=input_format,
        params_file=BEST_PARAMS,
        symbol=None,
        onnx=None,
        metrics=dict(metrics or {}),
        trained_with=_versions(),
    )


def _versions() -> dict:
    out = {}
    for module in ("mxnet", "gluoncv"):
        try:
            out[module] = __import__(module).__version__
        except Exception:  # pragma: no cover - reported, never fatal
            out[module] = None
    try:
        from importlib.metadata import version

        out["earthmon"] = version("earthmon")
    except Exception:
        out["earthmon"] = None
    return out


# ----------------------------------------------------------------------------------------------- writing
def _inference_network(metadata: ModelMetadata, params_file: Path, ctx, fixed_size: tuple[int, int] | None):
    """A fresh network with ``params_file`` loaded, aux head off (first output only), hybridized."""
    from segmentation_trainer.model import build_network

    net = build_network(metadata.network_config(), ctx=ctx, initialize=False)
    net.load_parameters(str(params_file), ctx=ctx, cast_dtype=True, dtype_source="current")
    net.aux = False
    if fixed_size is not None:
        net.fix_input_size(*fixed_size)
    net.hybridize(static_alloc=False)
    return net


def _quiet_forward(net, x):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is not used by any computation.*")
        return net(x)


def export_symbol(metadata: ModelMetadata, params_file: Path, directory: Path) -> str:
    """``model-symbol.json`` + ``model-0000.params`` (size-agnostic graph, aux head dropped)."""
    import mxnet as mx

    ctx = mx.cpu()
    net = _inference_network(metadata, params_file, ctx, None)
    crop = int(metadata["crop_size"])
    _quiet_forward(net, mx.nd.zeros((1, int(metadata["bands"]), crop, crop), ctx=ctx))
    net.export(str(directory / SYMBOL_PREFIX), epoch=0)
    return f"{SYMBOL_PREFIX}-symbol.json"


def export_onnx(metadata: ModelMetadata, params_file: Path, directory: Path) -> dict:
    """``model.onnx`` with input size fixed to the crop size (dynamic batch). Returns its description."""
    import mxnet as mx

    ctx = mx.cpu()
    crop = int(metadata["crop_size"])
    bands = int(metadata["bands"])
    net = _inference_network(metadata, params_file, ctx, (crop, crop))
    _quiet_forward(net, mx.nd.zeros((1, bands, crop, crop), ctx=ctx))
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "fixed"
        net.export(str(prefix), epoch=0)
        out = directory / ONNX_FILE
        mx.onnx.export_model(
            f"{prefix}-symbol.json",
            f"{prefix}-0000.params",
            in_shapes=[(1, bands, crop, crop)],
            in_types=[np.float32],
            onnx_file_path=str(out),
            dynamic=True,
            dynamic_input_shapes=[(None, bands, crop, crop)],
        )
    import onnx

    model = constant_weights(onnx.load(str(out), load_external_data=False))
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, out)
    return {
        "file": ONNX_FILE,
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "input_name": "data",
        "input_shape": ["N", bands, crop, crop],
        "output_shape": ["N", int(metadata["num_classes"]), crop, crop],
        "note": "fixed height and width (crop_size); tile larger images (see segmentation_trainer.predict)",
    }


def constant_weights(model):
    """``model`` (an ``onnx.ModelProto``, changed in place and returned) with its weights as constants.

    MXNet's exporter lists every initializer (weights, batch-norm statistics) among the graph's inputs too, as
    IR version 3 required; ONNX Runtime then treats them as inputs a caller could override: "appear in graph
    inputs and will not be treated as constant", so no constant folding and no batch-norm or bias fusion into
    the convolutions. Dropping them from the inputs (IR >= 4 allows initializers that are not inputs) makes them
    constants; the data input and the outputs are unchanged.
    """
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(inputs)
        model.ir_version = max(model.ir_version, 4)
    return model


def save_model_dir(
    net,
    metadata: ModelMetadata,
    directory: str | Path,
    *,
    best_params: str | Path | None = None,
    hyperparameters: Mapping[str, str] | None = None,
    symbol: bool = True,
    onnx: bool = True,
) -> ModelMetadata:
    """Write a complete model directory (see the module docstring) and return the metadata written.

    ``net`` is the final network (saved as ``model_algo-1``); ``best_params`` the best epoch's parameter file
    (default: the final network). A failing ONNX export is logged and recorded in the metadata
    (``onnx: {"error": ...}``), never fatal: the MXNet artifacts are what the built-in algorithm produces.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = ModelMetadata(metadata)
    final = directory / BUILTIN_PARAMS
    net.save_parameters(str(final))
    best = directory / BEST_PARAMS
    if best_params is not None and Path(best_params).resolve() != best.resolve():
        shutil.copyfile(best_params, best)
    elif best_params is None:
        shutil.copyfile(final, best)
    metadata["params_file"] = BEST_PARAMS
    if hyperparameters is not None:
        _write_json(directory / HYPERPARAMS_FILE, {str(k): str(v) for k, v in hyperparameters.items()})
    if symbol:
        metadata["symbol"] = export_symbol(metadata, best, directory)
    if onnx:
        try:
            metadata["onnx"] = export_onnx(metadata, best, directory)
        except Exception as exc:  # noqa: BLE001 - the exporter raises anything; the model stays usable
            log.warning("ONNX export failed (the MXNet artifacts are complete): %s", exc)
            metadata["onnx"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    _write_json(directory / METADATA_FILE, metadata)
    return metadata


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_tiny_model_dir(
    directory: str | Path,
    num_classes: int = 2,
    bands: int = 4,
    crop_size: int = 64,
    algorithm: str = "deeplab",
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    nodata: float | None = None,
    onnx: bool = False,
    seed: int = 0,
) -> ModelMetadata:
    """A complete model directory with a small untrained network, for tests (about a second on a CPU)."""
    import mxnet as mx

    from segmentation_trainer.model import tiny_network

    mx.random.seed(seed)
    net = tiny_network(num_classes=num_classes, bands=bands, algorithm=algorithm)
    net(mx.nd.zeros((1, bands, crop_size, crop_size)))
    if class_names is None and num_classes == 2:
        class_names = ["background", "building"]
    metadata = build_metadata(
        net.config,
        mean=mean if mean is not None else [0.0] * bands,
        std=std if std is not None else [1.0] * bands,
        crop_size=crop_size,
        class_names=class_names,
        nodata=nodata,
    )
    return save_model_dir(net, metadata, directory, onnx=onnx)


# ----------------------------------------------------------------------------------------------- loading
class ModelDirError(ValueError):
    """A model directory whose files are unusable or point outside it; the message says what to fix."""


def _read_json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{path} is not readable JSON ({exc}): re-extract model.tar.gz") from None
    if not isinstance(value, dict):
        raise ModelDirError(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value


def read_metadata(model_dir: str | Path) -> ModelMetadata:
    """The metadata of a model directory (ours, or one written by the built-in algorithm)."""
    model_dir = Path(model_dir)
    path = model_dir / METADATA_FILE
    if path.is_file():
        metadata = ModelMetadata(_read_json_object(path))
        missing = [
            k for k in ("num_classes", "algorithm", "backbone", "bands", "mean", "std") if k not in metadata
        ]
        if missing:
            raise ModelDirError(f"{path} lacks {', '.join(missing)}: it was not written by this trainer")
        return metadata
    builtin = model_dir / HYPERPARAMS_FILE
    if builtin.is_file() and (model_dir / BUILTIN_PARAMS).is_file():
        hp = _read_json_object(builtin)
        if "num_classes" not in hp:
            raise ModelDirError(f"{builtin} lacks num_classes")
        try:
            return _builtin_metadata(hp)
        except (TypeError, ValueError) as exc:
            raise ModelDirError(f"{builtin} holds an invalid value: {exc}") from None
    present = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else "no such directory"
    raise FileNotFoundError(
        f"{model_dir} is not a model directory: no {METADATA_FILE} (this trainer) nor {HYPERPARAMS_FILE} + "
        f"{BUILTIN_PARAMS} (the built-in algorithm); found: {present}. Extract model.tar.gz there first."
    )


def _builtin_metadata(hp: Mapping[str, Any]) -> ModelMetadata:
    """Metadata for an artifact of SageMaker's built-in algorithm (RGB JPG, ImageNet normalisation)."""
    backbone = str(hp.get("backbone", "resnet-50"))
    algorithm = str(hp.get("algorithm", "fcn"))
    num_classes = int(hp["num_classes"])
    metadata = build_metadata(
        NetworkConfig(num_classes=num_classes, algorithm=algorithm, backbone=backbone, bands=3, aux=True),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        input_scale=1.0 / 255.0,
        crop_size=int(hp.get("crop_size", 240)),
        base_size=int(hp.get("base_size", 520)),
        band_names=["red", "green", "blue"],
        input_format="jpg",
    )
    metadata["params_file"] = BUILTIN_PARAMS
    metadata["source"] = "sagemaker-builtin"
    return metadata


def inside(root: Path, name: object, what: str) -> Path:
    """``root / name`` resolved (symbolic links followed), refusing anything that leaves ``root``."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ModelDirError(f"{what} must be a file name inside {root}, not {name!r}")
    base = root.resolve()
    path = (base / name).resolve()
    if not path.is_relative_to(base):
        raise ModelDirError(
            f"{what} {name!r} points outside {root}: it must name a file inside the model directory "
            f"(e.g. {BEST_PARAMS}); re-export the model or fix {METADATA_FILE}"
        )
    return path


def params_path(model_dir: str | Path, metadata: Mapping[str, Any]) -> Path:
    """The parameter file of a model directory: ``params_file`` of the metadata (kept inside the directory),
    else the built-in's ``model_algo-1``."""
    model_dir = Path(model_dir)
    named = metadata.get("params_file") or BEST_PARAMS
    params = inside(model_dir, named, f"{METADATA_FILE} params_file")
    if not params.is_file():
        params = inside(model_dir, BUILTIN_PARAMS, "the built-in parameter file")
    if not params.is_file():
        raise FileNotFoundError(f"{model_dir}: no parameter file ({named}, {BUILTIN_PARAMS})")
    return params


def load_model(model_dir: str | Path, ctx=None):
    """``(net, metadata)`` of a model directory; ``net`` on ``ctx`` (default: the first GPU, else the CPU).

    ``net(x)``: float32 NCHW normalised input (``metadata.normalise``), any height and width; returns a tuple,
    first element the logits NCHW at the input's size. The auxiliary head is switched off.
    """
    from segmentation_trainer.devices import default_context
    from segmentation_trainer.model import build_network

    model_dir = Path(model_dir)
    metadata = read_metadata(model_dir)
    ctx = ctx if ctx is not None else default_context()
    params = params_path(model_dir, metadata)
    try:
        config = metadata.network_config()
    except (TypeError, ValueError) as exc:
        raise ModelDirError(
            f"{model_dir / METADATA_FILE} describes no network this trainer builds: {exc}"
        ) from None
    net = build_network(config, ctx=ctx, initialize=False)
    try:
        net.load_parameters(str(params), ctx=ctx, cast_dtype=True, dtype_source="current")
    except AssertionError:
        if not config.aux:
            raise
        # an artifact trained without the auxiliary head
        net = build_network(
            NetworkConfig(config.num_classes, config.algorithm, config.backbone, config.bands, aux=False),
            ctx=ctx,
            initialize=False,
        )
        net.load_parameters(str(params), ctx=ctx, cast_dtype=True, dtype_source="current")
    net.aux = False
    return net, metadata
