"""The HTTP contract of `serve`, in-process (Flask test client) with real tiny MXNet models."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest

from segmentation_trainer import codecs
from segmentation_trainer.serving.app import create_app
from segmentation_trainer.serving.config import ServeConfig
from segmentation_trainer.serving.model import LoadedModel, load_model_dir

pytest.importorskip("mxnet")


@pytest.fixture(scope="module")
def sar_model_dir(tmp_path_factory):
    """A tiny 4-band (SAR-like) DeepLab, 2 classes, crop 64, nodata 0."""
    from segmentation_trainer.export import write_tiny_model_dir

    directory = tmp_path_factory.mktemp("sar-model")
    write_tiny_model_dir(
        directory, num_classes=2, bands=4, crop_size=64, nodata=0.0, mean=[0.5] * 4, std=[0.3] * 4
    )
    return directory


@pytest.fixture(scope="module")
def rgb_model_dir(tmp_path_factory):
    from segmentation_trainer.export import write_tiny_model_dir

    directory = tmp_path_factory.mktemp("rgb-model")
    write_tiny_model_dir(
        directory, num_classes=3, bands=3, crop_size=48, class_names=["background", "building", "road"],
        mean=[120.0] * 3, std=[60.0] * 3,
    )  # fmt: skip
    return directory


def make_client(model_dir, **config):
    app = create_app(ServeConfig(model_dir=model_dir, **config))
    holder = app.extensions["earthmon.model"]
    assert holder.wait(60) and holder.ready, holder.error
    return app.test_client(), holder.model


@pytest.fixture(scope="module")
def sar(sar_model_dir):
    return make_client(sar_model_dir)


@pytest.fixture(scope="module")
def rgb(rgb_model_dir):
    return make_client(rgb_model_dir)


RNG = np.random.default_rng(11)


def npy_bytes(array) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def sar_image(height, width):
    return RNG.random((4, height, width), dtype=np.float32)


def geotiff_bytes(array, nodata=None):
    from rasterio.crs import CRS
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    transform = from_origin(594000.0, 5757000.0, 0.5, 0.5)
    count, height, width = array.shape
    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff", width=width, height=height, count=count, dtype=array.dtype.name,
            crs=CRS.from_epsg(32631), transform=transform, nodata=nodata,
        ) as dst:  # fmt: skip
            dst.write(array)
        return mem.read(), transform


def pil_bytes(array, fmt):
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt)
    return out.getvalue()


def decode_png(body):
    from PIL import Image

    img = Image.open(io.BytesIO(body))
    assert img.format == "PNG" and img.mode == "P"
    return np.asarray(img)


def _codec_tests():
    """test_serve_codecs.py loaded by path (works whether or not tests/segmentation_trainer is a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("test_serve_codecs.py")
    spec = importlib.util.spec_from_file_location("earthmon_serve_codec_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode_probabilities(body):
    """The built-in's response layout, read with the protobuf runtime (see test_serve_codecs)."""
    reference_record_class = _codec_tests().reference_record_class
    (payload,) = codecs.read_recordio(body)
    rec = reference_record_class()()
    rec.ParseFromString(payload)
    shape = list(rec.features["shape"].int32_tensor.values)
    return np.array(rec.features["target"].float32_tensor.values, np.float32).reshape(shape)


def post(client, body, content_type, accept=None, **headers):
    if accept is not None:
        headers["Accept"] = accept
    return client.post("/invocations", data=body, headers={"Content-Type": content_type, **headers})


# ----------------------------------------------------------------------------------------------- health
def test_ping_is_503_while_loading_then_200(sar_model_dir):
    release = threading.Event()

    def slow_loader():
        release.wait(30)
        return load_model_dir(sar_model_dir)

    app = create_app(ServeConfig(model_dir=sar_model_dir, model_wait_s=0.05), loader=slow_loader)
    client = app.test_client()
    assert client.get("/ping").status_code == 503
    busy = post(client, npy_bytes(sar_image(8, 8)), "application/x-npy")
    assert busy.status_code == 503 and "loading" in busy.json["error"]
    release.set()
    assert app.extensions["earthmon.model"].wait(60)
    assert client.get("/ping").status_code == 200


def test_ping_reports_a_model_that_failed_to_load(tmp_path):
    app = create_app(ServeConfig(model_dir=tmp_path))  # an empty directory
    app.extensions["earthmon.model"].wait(30)
    client = app.test_client()
    ping = client.get("/ping")
    # the loader's message and the directory are logged, not answered (red-team F13)
    assert ping.status_code == 500 and "failed to load" in ping.json["error"]
    assert "not a model directory" not in ping.json["error"] and str(tmp_path) not in ping.json["error"]
    response = post(client, npy_bytes(sar_image(8, 8)), "application/x-npy")
    assert response.status_code == 503 and "failed to load" in response.json["error"]


def test_execution_parameters_follow_the_environment(tmp_path):
    env = {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "20", "SAGEMAKER_BATCH_STRATEGY": "multi_record"}
    config = ServeConfig.from_env(env, model_dir=tmp_path, workers=3)
    app = create_app(config, loader=lambda: LoadedModel(lambda b: b, {}))
    body = app.test_client().get("/execution-parameters").json
    assert body == {"MaxConcurrentTransforms": 3, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 20}
    assert config.max_payload_bytes == 20 * 1024 * 1024


def test_config_from_env_and_errors(tmp_path):
    config = ServeConfig.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path), "SAGEMAKER_BIND_TO_PORT": "9123"})
    assert config.model_dir == tmp_path / "model" and config.port == 9123
    assert config.workers >= 1 and config.threads_per_worker >= 1
    with pytest.raises(ValueError, match="SAGEMAKER_BIND_TO_PORT"):
        ServeConfig.from_env({"SAGEMAKER_BIND_TO_PORT": "http"})
    with pytest.raises(ValueError, match="SAGEMAKER_BATCH_STRATEGY"):
        ServeConfig.from_env({"SAGEMAKER_BATCH_STRATEGY": "ALL"})


# ----------------------------------------------------------------------------------------------- requests
@pytest.mark.parametrize("accept", [None, "image/png", "*/*"])
def test_png_response_is_a_class_mask_of_the_input_size(rgb, accept):
    client, _ = rgb
    image = RNG.integers(0, 256, (37, 90, 3), dtype=np.uint8)  # non-square, odd, between 1 and 2 crops
    response = post(client, pil_bytes(image, "PNG"), "image/png", accept)
    assert response.status_code == 200 and response.mimetype == "image/png"
    mask = decode_png(response.data)
    assert mask.shape == (37, 90) and mask.max() < 3


def test_jpeg_request(rgb):
    client, _ = rgb
    image = RNG.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    response = post(client, pil_bytes(image, "JPEG"), "image/jpeg", "application/json")
    assert response.status_code == 200
    summary = response.json
    assert (summary["height"], summary["width"]) == (100, 120)
    assert [c["name"] for c in summary["classes"]] == ["background", "building", "road"]
    assert sum(c["pixels"] for c in summary["classes"]) == 100 * 120
    assert sum(c["fraction"] for c in summary["classes"]) == pytest.approx(1.0)
    assert summary["building_class"] == 1 and summary["building_count"] >= 0


@pytest.mark.parametrize("accept", ["application/x-recordio-protobuf", "application/x-protobuf"])
def test_probabilities_sum_to_one(sar, accept):
    client, _ = sar
    response = post(client, npy_bytes(sar_image(70, 150)), "application/x-npy", accept)
    assert response.status_code == 200 and response.mimetype == accept
    probs = decode_probabilities(response.data)
    assert probs.shape == (1, 2, 70, 150)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()


def test_window_sized_image_equals_the_whole_image_network(sar, sar_model_dir):
    """Where one window covers the image, the served probabilities are the network's own softmax."""
    import mxnet as mx

    from segmentation_trainer.export import load_model
    from segmentation_trainer.predict import softmax

    client, _ = sar
    image = sar_image(64, 64)
    served = decode_probabilities(
        post(client, npy_bytes(image), "application/x-npy", "application/x-protobuf").data
    )
    net, metadata = load_model(sar_model_dir)
    logits = net(mx.nd.array(metadata.normalise(image)[None]))[0].asnumpy()
    np.testing.assert_allclose(served[0], softmax(logits)[0], rtol=1e-4, atol=1e-5)


def test_mask_agrees_with_probabilities_and_small_images_are_padded(sar):
    client, _ = sar
    image = sar_image(20, 33)  # smaller than the 64 crop in both axes
    body = npy_bytes(image)
    probs = decode_probabilities(post(client, body, "application/x-npy", "application/x-protobuf").data)[0]
    mask = decode_png(post(client, body, "application/x-npy", "image/png").data)
    np.testing.assert_array_equal(mask, probs.argmax(axis=0))


def test_geotiff_in_geotiff_out_keeps_georeferencing_and_nodata(sar):
    from rasterio.io import MemoryFile

    client, _ = sar
    image = sar_image(90, 130)
    image[:, :, :10] = 0  # a nodata border, as SN6 tiles have
    body, transform = geotiff_bytes(image, nodata=0)
    response = post(client, body, "image/tiff", "image/tiff")
    assert response.status_code == 200 and response.mimetype == "image/tiff"
    with MemoryFile(response.data) as mem, mem.open() as src:
        assert src.crs.to_epsg() == 32631 and src.transform == transform
        assert (src.height, src.width, src.count) == (90, 130, 1) and src.nodata == 255
        mask = src.read(1)
    assert (mask[:, :10] == 255).all() and (mask[:, 10:] < 2).all()


def test_nodata_from_the_model_applies_to_npy_requests(sar):
    client, _ = sar
    image = sar_image(40, 40)
    image[:, :5] = 0
    summary = post(client, npy_bytes(image), "application/x-npy", "application/json").json
    assert summary["ignored_pixels"] == 5 * 40 and summary["valid_pixels"] == 35 * 40


# ----------------------------------------------------------------------------------------------- errors
def test_unsupported_content_type_is_415(sar):
    response = post(sar[0], b"1,2,3", "text/csv")
    assert response.status_code == 415 and "image/tiff" in response.json["error"]


def test_unsupported_accept_is_406(sar):
    response = post(sar[0], npy_bytes(sar_image(8, 8)), "application/x-npy", "text/csv")
    assert response.status_code == 406 and "image/png" in response.json["error"]


def test_corrupt_image_is_400(sar, rgb):
    assert post(rgb[0], b"\xff\xd8\xff garbage", "image/jpeg").status_code == 400
    response = post(sar[0], b"II*\x00 not a tiff", "image/tiff")
    assert response.status_code == 400 and "TIFF" in response.json["error"]


def test_wrong_band_count_is_400(sar):
    response = post(sar[0], npy_bytes(RNG.random((3, 16, 16), dtype=np.float32)), "application/x-npy")
    assert response.status_code == 400 and "4 band" in response.json["error"]


def test_too_large_body_is_413(sar_model_dir, sar):
    _, model = sar
    app = create_app(ServeConfig(model_dir=sar_model_dir, max_payload_mb=0.01), loader=lambda: model)
    app.extensions["earthmon.model"].wait(10)
    response = post(app.test_client(), npy_bytes(sar_image(64, 64)), "application/x-npy")
    assert response.status_code == 413 and "SAGEMAKER_MAX_PAYLOAD_IN_MB" in response.json["error"]


def test_too_many_pixels_is_413(sar_model_dir, sar):
    _, model = sar
    app = create_app(ServeConfig(model_dir=sar_model_dir, max_pixels=1000), loader=lambda: model)
    app.extensions["earthmon.model"].wait(10)
    response = post(app.test_client(), npy_bytes(sar_image(40, 40)), "application/x-npy")
    assert response.status_code == 413 and "pixels" in response.json["error"]


def test_errors_are_json(sar):
    response = post(sar[0], b"", "image/png")
    assert response.status_code == 400 and response.mimetype == "application/json"
    assert json.loads(response.data)["error"].startswith("empty request body")
