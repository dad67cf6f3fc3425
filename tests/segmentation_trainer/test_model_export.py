"""Networks (GluonCV parameter names, any size, any bands, pretrained weights) and model directories
(load_model, symbol export, ONNX export matching MXNet, the built-in algorithm's artifacts)."""

from __future__ import annotations

import json

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from segmentation_trainer.export import load_model, read_metadata, write_tiny_model_dir  # noqa: E402
from segmentation_trainer.model import NetworkConfig, build_network, feature_size, tiny_network  # noqa: E402


@pytest.mark.parametrize("algorithm", ["deeplab", "fcn", "psp"])
def test_parameter_names_and_shapes_are_gluoncvs(algorithm):
    from gluoncv.model_zoo.deeplabv3 import DeepLabV3
    from gluoncv.model_zoo.fcn import FCN
    from gluoncv.model_zoo.pspnet import PSPNet

    ours = build_network(NetworkConfig(num_classes=5, algorithm=algorithm), initialize=False)
    cls = {"deeplab": DeepLabV3, "fcn": FCN, "psp": PSPNet}[algorithm]
    theirs = cls(nclass=5, backbone="resnet50", aux=True, pretrained_base=False)
    a = {k: v.shape for k, v in ours._collect_params_with_prefix().items()}
    b = {k: v.shape for k, v in theirs._collect_params_with_prefix().items()}
    assert a == b


@pytest.mark.parametrize("algorithm", ["deeplab", "fcn", "psp"])
@pytest.mark.parametrize("bands", [1, 3, 4])
def test_any_input_size_and_band_count(algorithm, bands):
    net = tiny_network(num_classes=3, bands=bands, algorithm=algorithm)
    net.hybridize()
    for shape in [(2, bands, 64, 64), (1, bands, 37, 53), (1, bands, 17, 90)]:
        out = net(mx.nd.random.uniform(shape=shape))
        assert len(out) == 2  # main + auxiliary logits
        assert out[0].shape == (shape[0], 3) + shape[2:]
        assert out[1].shape == out[0].shape


def test_feature_size_matches_the_backbone():
    net = tiny_network(2, 3)
    for size in (17, 31, 64, 241):
        c3, c4 = net.base_forward(mx.nd.zeros((1, 3, size, size + 5)))
        assert c4.shape[2:] == (feature_size(size), feature_size(size + 5))


def test_pretrained_backbone_file_and_band_adaptation(tmp_path):
    from gluoncv.model_zoo.resnetv1b import resnet50_v1s

    clf = resnet50_v1s(pretrained=False)
    clf.initialize(mx.init.Xavier())
    clf(mx.nd.zeros((1, 3, 32, 32)))
    path = tmp_path / "resnet50_v1s-imagenet.params"
    clf.save_parameters(str(path))
    net = build_network(NetworkConfig(num_classes=2, bands=4), pretrained_backbone=path)
    rgb = clf.conv1[0].weight.data().asnumpy()
    stem = net.conv1[0].weight.data().asnumpy()
    assert stem.shape == (64, 4, 3, 3)
    assert np.allclose(stem, np.repeat(rgb.mean(axis=1, keepdims=True), 4, axis=1) * 0.75, atol=1e-7)
    assert np.array_equal(
        net.layer4[2].conv3.weight.data().asnumpy(), clf.layer4[2].conv3.weight.data().asnumpy()
    )
    assert net.head.collect_params().values().__iter__().__next__().lr_mult == 10
    with pytest.raises(ValueError, match="does not fit backbone 'resnet-101'.*resnet101_v1s"):
        build_network(NetworkConfig(num_classes=2, backbone="resnet-101"), pretrained_backbone=path)
    with pytest.raises(ValueError, match="not found"):
        build_network(NetworkConfig(num_classes=2), pretrained_backbone=tmp_path / "missing.params")


@pytest.mark.parametrize("algorithm,crop", [("deeplab", 64), ("fcn", 40), ("psp", 48)])
def test_onnx_export_matches_mxnet(tmp_path, algorithm, crop):
    import onnxruntime as ort

    md = write_tiny_model_dir(
        tmp_path, num_classes=3, bands=4, crop_size=crop, algorithm=algorithm, onnx=True
    )
    assert md["onnx"]["file"] == "model.onnx", md["onnx"]
    net, metadata = load_model(tmp_path)
    x = np.random.default_rng(0).normal(size=(2, 4, crop, crop)).astype(np.float32)
    expected = net(mx.nd.array(x))[0].asnumpy()
    import onnx

    model = onnx.load(str(tmp_path / "model.onnx"))
    # the weights are constants (initializers only), so ONNX Runtime folds and fuses them
    assert [i.name for i in model.graph.input] == ["data"]
    assert len(model.graph.initializer) > 10
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {metadata["onnx"]["input_name"]: x})
    assert got.shape == (2, 3, crop, crop)
    assert np.abs(got - expected).max() < 1e-4
    assert session.get_inputs()[0].shape[1:] == [4, crop, crop]


def test_symbol_export_takes_any_size(tmp_path):
    md = write_tiny_model_dir(tmp_path, num_classes=2, bands=4, crop_size=64)
    assert md["symbol"] == "model-symbol.json"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = mx.gluon.SymbolBlock.imports(
            str(tmp_path / "model-symbol.json"), ["data"], str(tmp_path / "model-0000.params")
        )
    net, _ = load_model(tmp_path)
    x = mx.nd.random.uniform(shape=(1, 4, 45, 70))
    assert np.allclose(block(x).asnumpy(), net(x)[0].asnumpy(), atol=1e-5)


def test_metadata_and_normalise(tmp_path):
    write_tiny_model_dir(
        tmp_path, num_classes=2, bands=4, crop_size=64, mean=[1, 2, 3, 4], std=[1, 1, 2, 2], nodata=0
    )
    md = read_metadata(tmp_path)
    for key in ("num_classes", "bands", "mean", "std", "crop_size", "algorithm", "backbone", "class_names"):
        assert key in md
    assert md["class_names"] == ["background", "building"]
    hwc = np.full((5, 6, 4), 3.0, np.float32)
    hwc[0, 0] = 0  # nodata
    chw = md.normalise(hwc)
    assert chw.shape == (4, 5, 6) and chw.dtype == np.float32
    assert chw[:, 1, 1] == pytest.approx([2, 1, 0, -0.5])
    assert (chw[:, 0, 0] == 0).all()
    assert np.array_equal(md.normalise(np.moveaxis(hwc, -1, 0)), chw)
    with pytest.raises(ValueError, match="takes 4 band"):
        md.normalise(np.zeros((5, 6, 3)))
    on_disk = json.loads((tmp_path / "metadata.json").read_text())
    assert on_disk["mean"] == [1, 2, 3, 4]


def test_loads_the_builtin_algorithms_artifact(tmp_path):
    """hyperparams.json + model_algo-1 (GluonCV parameters) as the built-in algorithm writes them."""
    from gluoncv.model_zoo.deeplabv3 import DeepLabV3

    gluoncv_net = DeepLabV3(nclass=3, backbone="resnet50", aux=True, pretrained_base=False, crop_size=64)
    gluoncv_net.initialize(mx.init.Xavier())
    x = mx.nd.random.uniform(shape=(1, 3, 64, 64))
    expected = gluoncv_net(x)[0].asnumpy()
    gluoncv_net.save_parameters(str(tmp_path / "model_algo-1"))
    (tmp_path / "hyperparams.json").write_text(
        json.dumps({"algorithm": "deeplab", "backbone": "resnet-50", "num_classes": "3", "crop_size": "64"})
    )
    net, md = load_model(tmp_path)
    assert md["source"] == "sagemaker-builtin" and md["input_scale"] == pytest.approx(1 / 255)
    assert np.allclose(net(x)[0].asnumpy(), expected, atol=1e-4)
    assert net(mx.nd.zeros((1, 3, 50, 77)))[0].shape == (1, 3, 50, 77)  # GluonCV's own fails here


def test_not_a_model_directory(tmp_path):
    (tmp_path / "something.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a model directory.*something.txt"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "params_file",
    ["/etc/passwd", "../outside.params", "sub/../../outside.params", "link.params", "", 7, None],
)
def test_params_file_stays_inside_the_model_directory(tmp_path, params_file):
    """A hostile or mistaken metadata.json cannot make load_model read a file outside the model directory."""
    from segmentation_trainer.export import ModelDirError, params_path, write_tiny_model_dir

    model = tmp_path / "model"
    write_tiny_model_dir(model, bands=2, crop_size=32)
    (tmp_path / "outside.params").write_bytes((model / "model_best.params").read_bytes())
    (model / "link.params").symlink_to(tmp_path / "outside.params")
    metadata = json.loads((model / "metadata.json").read_text())
    metadata["params_file"] = params_file
    (model / "metadata.json").write_text(json.dumps(metadata))
    if params_file in (None, ""):  # absent or empty: the default file of the directory
        assert params_path(model, metadata) == (model / "model_best.params").resolve()
        load_model(model)
        return
    with pytest.raises(ModelDirError, match="params_file") as info:
        load_model(model)
    if isinstance(params_file, str):
        assert "outside" in str(info.value) and "inside the model directory" in str(info.value)


@pytest.mark.parametrize(
    ("content", "words"),
    [("{not json", "not readable JSON"), ("[1, 2]", "JSON object"), ('{"bands": 2}', "lacks num_classes")],
)
def test_broken_metadata_is_a_clear_error(tmp_path, content, words):
    from segmentation_trainer.export import ModelDirError

    (tmp_path / "metadata.json").write_text(content)
    with pytest.raises(ModelDirError, match=words):
        load_model(tmp_path)
