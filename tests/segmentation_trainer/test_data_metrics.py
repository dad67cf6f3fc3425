"""Data channels (pairing, label maps, statistics, augmentation) and the metrics (mIoU, accuracy, SpaceNet F1)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import box

from segmentation_trainer import data, metrics


def _write_pair(d, name, image: np.ndarray, label: np.ndarray, split="train"):
    (d / split).mkdir(parents=True, exist_ok=True)
    (d / f"{split}_annotation").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(d / split / f"{name}.jpg", quality=100)
    Image.fromarray(label, "L").save(d / f"{split}_annotation" / f"{name}.png")


def test_pairing_by_base_name_and_errors(tmp_path):
    _write_pair(tmp_path, "a", np.zeros((8, 9, 3), np.uint8), np.zeros((8, 9), np.uint8))
    _write_pair(tmp_path, "b", np.zeros((8, 9, 3), np.uint8), np.zeros((8, 9), np.uint8))
    pairs = data.pair_channel(tmp_path / "train", tmp_path / "train_annotation")
    assert [p.name for p in pairs] == ["a", "b"]
    (tmp_path / "train_annotation" / "b.png").unlink()
    with pytest.raises(data.DataError, match="1 image.* have no annotation .*b"):
        data.pair_channel(tmp_path / "train", tmp_path / "train_annotation")
    with pytest.raises(data.DataError, match="annotation channel not found"):
        data.pair_channel(tmp_path / "train", tmp_path / "nothing")


def test_label_maps():
    assert (data.label_lut(None) == np.arange(256)).all()
    lut = data.label_lut({"scale": "3"})
    assert lut[0] == 0 and lut[3] == 1 and lut[6] == 2 and lut[4] == 255 and lut[255] == 255
    lut = data.label_lut({"map": {"0": 0, "1": 128}})
    assert lut[0] == 0 and lut[128] == 1 and lut[1] == 255
    with pytest.raises(data.DataError, match="'scale' or 'map'"):
        data.label_lut({"other": 1})


def test_band_stats_match_numpy_and_skip_nodata():
    rng = np.random.default_rng(0)
    a = rng.normal(5, 2, (3, 40, 50)).astype(np.float32)
    b = rng.normal(1, 3, (3, 30, 20)).astype(np.float32)
    b[:, :5] = 0  # nodata rows
    stats = data.BandStats()
    stats.add(a, data.valid_mask(a, None))
    stats.add(b, data.valid_mask(b, 0))
    mean, std = stats.result()
    allpix = np.concatenate([a.reshape(3, -1), b[:, 5:].reshape(3, -1)], axis=1)
    assert np.allclose(mean, allpix.mean(axis=1), atol=1e-5)
    assert np.allclose(std, allpix.std(axis=1), atol=1e-5)


def test_normalise_sets_invalid_pixels_to_the_mean():
    image = np.full((2, 3, 3), 4.0, np.float32)
    image[:, 0, 0] = 0  # nodata
    image[1, 2, 2] = np.nan
    out = data.normalise(image, [2.0, 2.0], [2.0, 1.0], nodata=0.0)
    assert out[0, 1, 1] == 1.0 and out[1, 1, 1] == 2.0
    assert (out[:, 0, 0] == 0).all() and (out[:, 2, 2] == 0).all()


@pytest.mark.parametrize("shape", [(4, 37, 91), (3, 200, 31), (1, 17, 17)])
def test_random_scale_crop_any_size(shape):
    rng = np.random.default_rng(1)
    image = rng.normal(size=shape).astype(np.float32)
    label = (rng.random(shape[1:]) > 0.5).astype(np.uint8)
    for _ in range(5):
        img, lab = data.random_scale_crop(image, label, base_size=64, crop_size=48, rng=rng)
        assert img.shape == (shape[0], 48, 48) and lab.shape == (48, 48)
        assert set(np.unique(lab)) <= {0, 1, 255}
        # padding is labelled ignore and the image there is the mean (0)
        assert (img[:, lab == 255] == 0).all()


def test_random_scale_crop_keeps_image_and_label_aligned():
    image = np.zeros((1, 64, 64), np.float32)
    image[0, 20:40, 10:30] = 1.0
    label = (image[0] > 0).astype(np.uint8)
    rng = np.random.default_rng(3)
    for _ in range(10):
        img, lab = data.random_scale_crop(image, label, 64, 48, rng)
        inside = lab == 1
        if inside.any():
            # nearest-neighbour labels and bilinear pixels sample the same centres
            assert (img[0][inside] >= 0.45).mean() > 0.97
            assert (img[0][lab == 0] <= 0.55).mean() > 0.97


def test_validation_batches_group_shapes(tmp_path):
    _write_pair(tmp_path, "a", np.zeros((8, 9, 3), np.uint8), np.zeros((8, 9), np.uint8), "validation")
    _write_pair(tmp_path, "b", np.zeros((11, 5, 3), np.uint8), np.ones((11, 5), np.uint8), "validation")
    _write_pair(tmp_path, "c", np.zeros((8, 9, 3), np.uint8), np.zeros((8, 9), np.uint8), "validation")
    pairs = data.pair_channel(tmp_path / "validation", tmp_path / "validation_annotation")
    ds = data.Dataset(pairs, data.label_lut(None), [0, 0, 0], [1, 1, 1])
    shapes = sorted(b[0].shape for b in data.validation_batches(ds, 4))
    assert shapes == [(1, 3, 11, 5), (2, 3, 8, 9)]


def test_dataset_rejects_mismatched_annotation(tmp_path):
    _write_pair(tmp_path, "a", np.zeros((8, 9, 3), np.uint8), np.zeros((9, 8), np.uint8))
    ds = data.Dataset(
        data.pair_channel(tmp_path / "train", tmp_path / "train_annotation"),
        data.label_lut(None),
        [0] * 3,
        [1] * 3,
    )
    with pytest.raises(data.DataError, match="is 9x8 but its annotation is 8x9"):
        ds.load(0)


def test_training_batches_are_an_epoch():
    class Fake:
        pairs = list(range(10))

        def __len__(self):
            return 10

        def load(self, i):
            return np.full((2, 30, 40), i, np.float32), np.zeros((30, 40), np.uint8)

    batches = list(data.training_batches(Fake(), 4, 40, 32, np.random.default_rng(0), workers=2))
    assert len(batches) == 2 and batches[0][0].shape == (4, 2, 32, 32) and batches[0][1].shape == (4, 32, 32)


# ----------------------------------------------------------------------------------------------- metrics
def test_confusion_miou_accuracy():
    label = np.array([[0, 0, 1, 1], [0, 255, 1, 2]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
    cm = metrics.confusion_matrix(pred, label, 3)
    assert cm.sum() == 7
    assert metrics.pixel_accuracy(cm) == pytest.approx(5 / 7)
    ious = metrics.iou_per_class(cm)
    assert ious == pytest.approx([2 / 3, 2 / 4, 1 / 2])
    assert metrics.mean_iou(cm) == pytest.approx((2 / 3 + 0.5 + 0.5) / 3)
    # a class absent from both labels and predictions does not count
    cm4 = metrics.confusion_matrix(pred, label, 4)
    assert metrics.mean_iou(cm4) == pytest.approx(metrics.mean_iou(cm))


def test_spacenet_f1_matching():
    truth = [
        box(0, 0, 10, 10),
        box(20, 0, 30, 10),
        box(40, 0, 50, 10),
        box(60, 0, 65, 5),
    ]  # last: 25 px, ignored
    proposals = [
        box(1, 0, 11, 10),  # IoU 0.82: TP
        box(21, 0, 31, 10),  # TP
        box(22, 0, 32, 10),  # overlaps the same building again: FP (one match per building)
        box(45, 0, 60, 10),  # IoU 5/150... below 0.5: FP; building 3 is then a FN
        box(80, 0, 84, 4),  # 16 px: ignored
    ]
    r = metrics.spacenet_f1(proposals, truth)
    assert (r.tp, r.fp, r.fn) == (2, 2, 1)
    assert r.precision == pytest.approx(0.5) and r.recall == pytest.approx(2 / 3)
    assert r.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert metrics.spacenet_f1([], []).f1 == 0.0


def test_mask_polygons_separate_components_and_keep_holes():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:12, 2:12] = 1
    mask[5:8, 5:8] = 0  # a courtyard
    mask[15:19, 20:29] = 1
    polys = metrics.mask_polygons(mask, 1)
    assert sorted(p.area for p in polys) == [36, 100 - 9]
    assert metrics.mask_polygons(mask, 1, min_area=50)[0].area == 91


def test_training_and_serving_normalise_the_same_pixels_the_same_way():
    """One rule (segmentation_trainer.pixels): what the trainer feeds the network and what a served model's
    metadata.normalise feeds it are identical, including a pixel that is nodata in one band only (kept) and in every
    band (zeroed), and a pixel that is NaN in one band (zeroed in every band)."""
    from segmentation_trainer.export import ModelMetadata

    rng = np.random.default_rng(3)
    image = rng.uniform(1, 100, size=(4, 8, 8)).astype(np.float32)
    image[2, 1, 1] = 0.0  # nodata in one band only: a valid pixel
    image[:, 2, 2] = 0.0  # nodata in every band
    image[3, 3, 3] = np.nan
    mean, std = [10.0, 20.0, 30.0, 40.0], [5.0, 5.0, 0.0, 2.0]
    trained = data.normalise(image, mean, std, nodata=0.0)
    served = ModelMetadata(bands=4, mean=mean, std=std, nodata=0.0).normalise(image)
    assert np.array_equal(trained, served)
    assert served[2, 1, 1] == -30.0  # (0 - 30) / 1: kept, std 0 counts as 1
    assert (served[:, 2, 2] == 0).all() and (served[:, 3, 3] == 0).all()
