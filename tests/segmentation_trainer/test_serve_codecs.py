"""Request/response encodings of the server (segmentation_trainer.codecs): pure, no network needed."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest

from segmentation_trainer import codecs


# ----------------------------------------------------------------------------------------------- negotiation
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("image/jpeg", codecs.JPEG),
        ("image/jpg", codecs.JPEG),
        ("IMAGE/PNG", codecs.PNG),
        ("image/tiff; charset=binary", codecs.TIFF),
        ("application/x-npy", codecs.NPY),
    ],
)
def test_content_types(header, expected):
    assert codecs.parse_content_type(header) == expected


@pytest.mark.parametrize("header", [None, "", "text/csv", "application/json", "image/gif"])
def test_unsupported_content_type_is_415(header):
    with pytest.raises(codecs.UnsupportedMediaType) as info:
        codecs.parse_content_type(header)
    assert info.value.status == 415
    assert "image/jpeg" in str(info.value)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, codecs.PNG),
        ("", codecs.PNG),
        ("*/*", codecs.PNG),
        ("image/png", codecs.PNG),
        ("application/x-recordio-protobuf", codecs.RECORDIO_PROTOBUF),
        ("application/x-protobuf", codecs.PROTOBUF),
        ("image/tiff", codecs.TIFF),
        ("application/json", codecs.JSON),
        ("text/html, application/json;q=0.9, image/png;q=0.5", codecs.JSON),
        ("image/png;q=0.1, image/tiff", codecs.TIFF),
        ("text/csv, */*;q=0.1", codecs.PNG),
    ],
)
def test_accept_negotiation(header, expected):
    assert codecs.negotiate_accept(header) == expected


@pytest.mark.parametrize("header", ["text/csv", "image/gif", "application/json;q=0"])
def test_unsupported_accept_is_406(header):
    with pytest.raises(codecs.NotAcceptable) as info:
        codecs.negotiate_accept(header)
    assert info.value.status == 406
    assert "image/png" in str(info.value)


# ----------------------------------------------------------------------------------------------- decoding
def _pil_bytes(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array, mode=mode).save(out, format=fmt)
    return out.getvalue()


def test_decode_png_rgb_exact():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = codecs.decode_request(_pil_bytes(rgb, "PNG"), codecs.PNG, bands=3)
    assert image.array.shape == (3, 5, 7)
    np.testing.assert_array_equal(image.array, np.moveaxis(rgb, -1, 0))
    assert image.crs is None and image.transform is None


def test_decode_gray_png_to_rgb_and_to_one_band():
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7)
    body = _pil_bytes(gray, "PNG")
    as_rgb = codecs.decode_request(body, codecs.PNG, bands=3)
    assert as_rgb.array.shape == (3, 5, 7)
    np.testing.assert_array_equal(as_rgb.array[1], gray)
    as_gray = codecs.decode_request(body, codecs.PNG, bands=1)
    np.testing.assert_array_equal(as_gray.array[0], gray)


def test_decode_16bit_png_keeps_values():
    values = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    image = codecs.decode_request(_pil_bytes(values, "PNG"), codecs.PNG, bands=1)
    assert image.array.shape == (1, 3, 4)
    np.testing.assert_array_equal(image.array[0], values)


def test_decode_jpeg():
    rgb = np.full((16, 24, 3), 120, dtype=np.uint8)
    image = codecs.decode_request(_pil_bytes(rgb, "JPEG"), codecs.JPEG, bands=3)
    assert image.array.shape == (3, 16, 24)
    assert np.abs(image.array.astype(int) - 120).max() <= 2


def test_decode_npy_layouts():
    chw = np.random.default_rng(1).random((4, 6, 9), dtype=np.float32)

    def npy(a):
        out = io.BytesIO()
        np.save(out, a)
        return out.getvalue()

    np.testing.assert_array_equal(codecs.decode_request(npy(chw), codecs.NPY, bands=4).array, chw)
    hwc = np.moveaxis(chw, 0, -1)
    np.testing.assert_array_equal(codecs.decode_request(npy(hwc), codecs.NPY, bands=4).array, chw)
    np.testing.assert_array_equal(codecs.decode_request(npy(chw[None]), codecs.NPY, bands=4).array, chw)
    np.testing.assert_array_equal(codecs.decode_request(npy(chw[0]), codecs.NPY, bands=1).array, chw[:1])
    with pytest.raises(codecs.BadRequest, match="shape"):
        codecs.decode_request(npy(np.zeros((2, 2, 2, 2, 2))), codecs.NPY, bands=4)
    with pytest.raises(codecs.BadRequest, match="numeric"):
        codecs.decode_request(npy(np.array(["a", "b"])), codecs.NPY)


def test_decode_geotiff_keeps_bands_dtype_and_georeferencing(tmp_path):
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    data = np.random.default_rng(2).random((4, 10, 12), dtype=np.float32)
    transform = from_origin(594000.0, 5757000.0, 0.5, 0.5)
    path = tmp_path / "sar.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=12, height=10, count=4, dtype="float32",
        crs=CRS.from_epsg(32631), transform=transform, nodata=0,
    ) as dst:  # fmt: skip
        dst.write(data)
    image = codecs.decode_request(path.read_bytes(), codecs.TIFF, bands=4)
    np.testing.assert_array_equal(image.array, data)
    assert image.array.dtype == np.float32
    assert image.crs.to_epsg() == 32631
    assert image.transform == transform
    assert image.nodata == 0


@pytest.mark.parametrize(
    ("media", "body"),
    [
        (codecs.JPEG, b"\xff\xd8\xff\xe0 this is not a jpeg"),
        (codecs.PNG, b"\x89PNG\r\n\x1a\n truncated"),
        (codecs.TIFF, b"II*\x00 garbage"),
        (codecs.NPY, b"\x93NUMPY garbage"),
        (codecs.PNG, b"plain text"),
    ],
)
def test_corrupt_bodies_are_400(media, body):
    with pytest.raises(codecs.BadRequest) as info:
        codecs.decode_request(body, media, bands=3)
    assert info.value.status == 400


def test_truncated_png_is_400(monkeypatch):
    from PIL import ImageFile

    # gluoncv.data sets LOAD_TRUNCATED_IMAGES=True process-wide when the model zoo is imported: still a 400
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    body = _pil_bytes(np.zeros((64, 64, 3), np.uint8) + 7, "PNG")
    with pytest.raises(codecs.BadRequest):
        codecs.decode_request(body[: len(body) // 2], codecs.PNG, bands=3)


def test_png_sent_as_jpeg_is_400():
    body = _pil_bytes(np.zeros((4, 4, 3), np.uint8), "PNG")
    with pytest.raises(codecs.BadRequest, match="body is a PNG"):
        codecs.decode_request(body, codecs.JPEG, bands=3)


def test_empty_body_is_400():
    with pytest.raises(codecs.BadRequest, match="empty"):
        codecs.decode_request(b"", codecs.PNG)


def test_too_many_pixels_is_413_before_decoding():
    body = _pil_bytes(np.zeros((100, 100, 3), np.uint8), "PNG")
    with pytest.raises(codecs.PayloadTooLarge) as info:
        codecs.decode_request(body, codecs.PNG, bands=3, max_pixels=99 * 100)
    assert info.value.status == 413


# ----------------------------------------------------------------------------------------------- encoding
def test_png_is_indexed_class_ids():
    from PIL import Image

    mask = np.array([[0, 1, 1], [2, 0, 255]], dtype=np.uint8)
    img = Image.open(io.BytesIO(codecs.encode_png(mask, 3)))
    assert img.format == "PNG" and img.mode == "P" and img.size == (3, 2)
    np.testing.assert_array_equal(np.asarray(img), mask)


def test_geotiff_response_keeps_crs_and_transform():
    import rasterio
    from rasterio.crs import CRS
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    mask = np.random.default_rng(3).integers(0, 2, (300, 280), dtype=np.uint8)
    transform = from_origin(594000.0, 5757000.0, 0.5, 0.5)
    body = codecs.encode_geotiff(mask, CRS.from_epsg(32631), transform, ["background", "building"])
    with MemoryFile(body) as mem, mem.open() as src:
        assert src.crs.to_epsg() == 32631
        assert src.transform == transform
        assert src.dtypes == ("uint8",) and src.nodata == 255
        np.testing.assert_array_equal(src.read(1), mask)
        assert json.loads(src.tags(1)["class_names"]) == ["background", "building"]
    assert rasterio  # imported for the driver registry


def test_summary_counts_buildings_and_fractions():
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[1:11, 1:11] = 1  # 100 px building
    mask[15:18, 15:18] = 1  # 9 px: below a minimum of 80
    mask[0, 19] = 255
    summary = codecs.summarize(mask, 2, ["background", "building"], building_class=1, min_building_pixels=80)
    assert summary["valid_pixels"] == 399 and summary["ignored_pixels"] == 1
    assert summary["classes"][1] == {"id": 1, "name": "building", "pixels": 109, "fraction": 109 / 399}
    assert sum(c["fraction"] for c in summary["classes"]) == pytest.approx(1.0)
    assert summary["building_count"] == 1
    assert codecs.summarize(mask, 2, None, building_class=1)["building_count"] == 2


# ----------------------------------------------------------------------------------------- RecordIO protobuf
def reference_record_class():
    """aialgs.data.Record built from SageMaker's record.proto by the protobuf runtime (a reference)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(
        name="earthmon_test_record.proto", package="aialgs.data", syntax="proto2"
    )
    FD = descriptor_pb2.FieldDescriptorProto
    packed = descriptor_pb2.FieldOptions(packed=True)
    for name, vtype in (("Float32Tensor", FD.TYPE_FLOAT), ("Int32Tensor", FD.TYPE_INT32)):
        m = f.message_type.add(name=name)
        m.field.add(name="values", number=1, label=FD.LABEL_REPEATED, type=vtype, options=packed)
        m.field.add(name="keys", number=2, label=FD.LABEL_REPEATED, type=FD.TYPE_UINT64, options=packed)
        m.field.add(name="shape", number=3, label=FD.LABEL_REPEATED, type=FD.TYPE_UINT64, options=packed)
    value = f.message_type.add(name="Value")
    value.oneof_decl.add(name="value")
    for name, number, tname in (("float32_tensor", 2, "Float32Tensor"), ("int32_tensor", 7, "Int32Tensor")):
        value.field.add(
            name=name, number=number, label=FD.LABEL_OPTIONAL, type=FD.TYPE_MESSAGE,
            type_name=f".aialgs.data.{tname}", oneof_index=0,
        )  # fmt: skip
    record = f.message_type.add(name="Record")
    entry = record.nested_type.add(
        name="FeaturesEntry", options=descriptor_pb2.MessageOptions(map_entry=True)
    )
    entry.field.add(name="key", number=1, label=FD.LABEL_OPTIONAL, type=FD.TYPE_STRING)
    entry.field.add(
        name="value", number=2, label=FD.LABEL_OPTIONAL, type=FD.TYPE_MESSAGE, type_name=".aialgs.data.Value"
    )
    record.field.add(
        name="features", number=1, label=FD.LABEL_REPEATED, type=FD.TYPE_MESSAGE,
        type_name=".aialgs.data.Record.FeaturesEntry",
    )  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("aialgs.data.Record"))


def test_probabilities_record_decodes_with_the_reference_layout():
    rng = np.random.default_rng(4)
    probs = rng.random((3, 5, 7), dtype=np.float32)
    probs /= probs.sum(axis=0, keepdims=True)
    data = codecs.encode_probabilities(probs)
    # RecordIO framing: magic, length, payload padded to 4 bytes
    magic, length = struct.unpack_from("<II", data)
    assert magic == 0xCED7230A and len(data) == 8 + length + (-length) % 4
    (payload,) = codecs.read_recordio(data)
    rec = reference_record_class()()
    rec.ParseFromString(payload)
    # what the built-in's sample notebook reads
    values = np.array(rec.features["target"].float32_tensor.values, dtype=np.float32)
    shape = list(rec.features["shape"].int32_tensor.values)
    assert shape == [1, 3, 5, 7]
    assert list(rec.features["target"].float32_tensor.shape) == [1, 3, 5, 7]
    np.testing.assert_array_equal(values.reshape(shape)[0], probs)


def test_recordio_reads_with_mxnet(tmp_path):
    mx = pytest.importorskip("mxnet")
    probs = np.full((2, 3, 3), 0.5, dtype=np.float32)
    path = tmp_path / "response.rec"
    path.write_bytes(codecs.encode_probabilities(probs) * 2)  # two records back to back
    reader = mx.recordio.MXRecordIO(str(path), "r")
    first, second, end = reader.read(), reader.read(), reader.read()
    reader.close()
    assert first == second == codecs.read_recordio(codecs.encode_probabilities(probs))[0]
    assert end is None


def test_read_recordio_rejects_bad_magic():
    with pytest.raises(ValueError, match="magic"):
        codecs.read_recordio(b"\x00" * 12)


def test_nodata_mask():
    array = np.array([[[0, 5], [0, 0]], [[0, 5], [7, 0]]], dtype=np.uint16)
    np.testing.assert_array_equal(
        codecs.DecodedImage(array, codecs.TIFF, nodata=0).nodata_mask(), [[True, False], [False, True]]
    )
    assert codecs.DecodedImage(array, codecs.TIFF, nodata=-9999).nodata_mask() is None
    assert codecs.DecodedImage(array, codecs.TIFF).nodata_mask() is None
    floats = np.full((2, 1, 2), np.nan, dtype=np.float32)
    floats[0, 0, 1] = 1
    np.testing.assert_array_equal(
        codecs.DecodedImage(floats, codecs.TIFF, nodata=float("nan")).nodata_mask(), [[True, False]]
    )


def test_tiff_codecs_never_load_cloud_credentials(monkeypatch):
    """GDAL reads a caller's bytes and writes answers with no AWS session: rasterio would otherwise build a boto3
    session from the container's environment on every request (the execution role's keys in GDAL's configuration,
    and 50-150 ms a request)."""
    import rasterio.session

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPLANTEDCANARY000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-canary-secret")
    built: list[str] = []
    original = rasterio.session.AWSSession.__init__

    def record(self, *args, **kwargs):
        built.append("AWSSession")
        original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.session.AWSSession, "__init__", record)
    mask = np.zeros((64, 64), dtype=np.uint8)
    body = codecs.encode_geotiff(mask)
    image = codecs.decode_request(body, codecs.TIFF, bands=1)
    assert image.array.shape[-2:] == (64, 64)
    assert built == []
