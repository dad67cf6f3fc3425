"""Training throughput: this trainer's loop vs GluonCV's reference segmentation recipe, same data, same run.

DeepLabV3 on ResNet-50 (aux head, SGD + poly schedule), from scratch, on CPU (or every GPU present), at crop 240
and 480. The data are SN6-like tiles rendered to 8-bit RGB JPG (the built-in algorithm's input), 520 px.

- "gluoncv-reference": the loop of GluonCV's scripts/segmentation/train.py (v0.10) as it runs by default:
  SegmentationDataset._sync_transform (PIL: mirror, random scale, pad, crop, blur) + ToTensor/Normalize in a
  gluon DataLoader, DataParallelModel + DataParallelCriterion(MixSoftmaxCrossEntropyLoss(aux_weight=0.5)),
  gluon.Trainer(sgd) with LRScheduler('poly'), model not hybridized (its default ``--mode``).
- "earthmon": segmentation_trainer.fit.fit (what the training job runs) on the same images.

Both: same batch size, one warm-up batch, then the timed batches; images/s = timed samples / timed seconds.
The loops alternate (``--repeats``); prints each run, the medians and the ratio earthmon / reference
(>= 1.0 = no slower), in wall-clock images/s and in CPU seconds per image (process + children: steadier than wall
time when other jobs share the CPUs).

    .venv-trainer/bin/python benchmarks/bench_train_throughput.py [--crops 240 480] [--batches 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def cpu_seconds() -> float:
    """CPU time of this process and its children (the reference's DataLoader workers are processes)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a worker that just exited
            total += sum(child.cpu_times()[:2])
    return total


def make_data(root: Path) -> Path:
    from segmentation_trainer.sn6 import PrepareOptions, prepare_sn6
    from segmentation_trainer.synthetic import generate_sn6

    generate_sn6(
        root / "sn6", locations=2, strips=3, tiles_per_side=2, tile_size=520, buildings_per_location=150
    )
    prepare_sn6(root / "sn6", root / "data", PrepareOptions(fmt="jpg", val_fraction=0.0, progress=False))
    return root / "data"


def reference_loop(data: Path, crop: int, batch: int, warmup: int, timed: int, ctxs) -> float:
    import mxnet as mx
    from gluoncv.data.segbase import SegmentationDataset
    from gluoncv.loss import MixSoftmaxCrossEntropyLoss
    from gluoncv.model_zoo.deeplabv3 import DeepLabV3
    from gluoncv.utils import LRScheduler
    from gluoncv.utils.parallel import DataParallelCriterion, DataParallelModel
    from mxnet import autograd, gluon
    from mxnet.gluon.data.vision import transforms
    from PIL import Image

    class InMemory(SegmentationDataset):
        NUM_CLASS = 2

        def __init__(self, pairs, transform):
            super().__init__(
                root=str(data),
                split="train",
                mode="train",
                transform=transform,
                base_size=520,
                crop_size=crop,
            )
            self.items = [(Image.open(i).convert("RGB"), Image.open(m)) for i, m in pairs]
            for im, m in self.items:
                im.load()
                m.load()

        def __getitem__(self, idx):
            img, mask = self._sync_transform(*self.items[idx])
            return self.transform(img), mask

        def _mask_transform(self, mask):
            a = np.array(mask).astype("int32")
            a[a == 255] = -1  # as GluonCV's VOC dataset maps its ignore value
            return mx.nd.array(a, mx.cpu(0)).astype("int32")

        def __len__(self):
            return len(self.items)

    images = sorted((data / "train").glob("*.jpg"))
    pairs = [(p, data / "train_annotation" / (p.stem + ".png")) for p in images]
    input_transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    )
    dataset = InMemory(pairs, input_transform)
    loader = gluon.data.DataLoader(dataset, batch, shuffle=True, last_batch="rollover", num_workers=2)
    model = DeepLabV3(
        nclass=2, backbone="resnet50", aux=True, pretrained_base=False, crop_size=crop, base_size=520
    )
    model.initialize(
        mx.init.Xavier(magnitude=2), ctx=ctxs
    )  # pretrained_base=False: the backbone needs init too
    net = DataParallelModel(model, ctxs, False)
    criterion = DataParallelCriterion(MixSoftmaxCrossEntropyLoss(True, aux_weight=0.5), ctxs, False)
    scheduler = LRScheduler(mode="poly", base_lr=0.001, nepochs=10, iters_per_epoch=len(loader), power=0.9)
    trainer = gluon.Trainer(
        model.collect_params(),
        "sgd",
        {"lr_scheduler": scheduler, "wd": 1e-4, "momentum": 0.9, "learning_rate": 0.001},
    )
    t_start = c_start = None
    seen = 0
    n = 0
    while n < warmup + timed:
        for data_batch, target in loader:
            if n == warmup:
                t_start = time.perf_counter()
                c_start = cpu_seconds()
            with autograd.record(True):
                outputs = net(data_batch.astype("float32", copy=False))
                losses = criterion(outputs, target)
                mx.nd.waitall()
                autograd.backward(losses)
            trainer.step(batch)
            for loss in losses:
                float(np.mean(loss.asnumpy()))
            n += 1
            if n > warmup:
                seen += data_batch.shape[0]
            if n >= warmup + timed:
                break
    return seen / (time.perf_counter() - t_start), (cpu_seconds() - c_start) / seen


def earthmon_loop(data: Path, crop: int, batch: int, warmup: int, timed: int, ctxs) -> float:
    from segmentation_trainer.data import Dataset, compute_stats, label_lut, pair_channel
    from segmentation_trainer.fit import FitConfig, fit
    from segmentation_trainer.hyperparameters import parse_hyperparameters
    from segmentation_trainer.model import NetworkConfig, build_network

    pairs = pair_channel(data / "train", data / "train_annotation")
    mean, std = compute_stats(pairs)
    dataset = Dataset(pairs, label_lut({"scale": "1"}), mean, std, cache=True)
    hp = parse_hyperparameters(
        {
            "num_classes": "2",
            "num_training_samples": str(len(pairs)),
            "crop_size": str(crop),
            "base_size": "520",
            "mini_batch_size": str(batch),
            "epochs": "1",
            "use_pretrained_model": "False",
        }
    )
    net = build_network(NetworkConfig(num_classes=2, bands=3), ctx=ctxs)
    marks: list[tuple[float, int, float]] = []

    def on_batch(epoch, i, samples):
        marks.append((time.perf_counter(), samples, cpu_seconds()))

    config = FitConfig(
        hp=hp, workers=2, max_batches_per_epoch=warmup + timed, on_batch=on_batch, progress_every_s=1e9
    )
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        fit(net, dataset, None, ctxs, config, stop=threading.Event(), fp="bench")
    seen = sum(m[1] for m in marks[warmup:])
    return seen / (marks[-1][0] - marks[warmup - 1][0]), (marks[-1][2] - marks[warmup - 1][2]) / seen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, nargs="+", default=[240, 480])
    parser.add_argument(
        "--batch", type=int, nargs="+", default=None, help="batch per crop (default 4 at 240, 2 at 480)"
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per loop")
    parser.add_argument(
        "--repeats", type=int, default=2, help="interleaved runs of each loop (median reported)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    import mxnet as mx

    from segmentation_trainer.devices import contexts, describe

    ctxs = contexts()
    random.seed(0)
    mx.random.seed(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp))
        n_images = len(list((data / "train").glob("*.jpg")))
        print(
            f"device: {describe(ctxs)}; {n_images} JPG tiles of 520 px; DeepLabV3-ResNet50 + aux, from scratch",
            flush=True,
        )
        for k, crop in enumerate(args.crops):
            batch = args.batch[k] if args.batch else (4 if crop <= 240 else 2)
            names = ("gluoncv-reference", "earthmon")
            row = {
                "crop": crop,
                "batch": batch,
                "runs": {n: [] for n in names},
                "cpu_s_per_image": {n: [] for n in names},
            }
            for r in range(args.repeats):  # interleaved, so load from other processes hits both alike
                for name, loop in zip(names, (reference_loop, earthmon_loop), strict=True):
                    rate, cpu = loop(data, crop, batch, args.warmup, args.batches, ctxs)
                    row["runs"][name].append(rate)
                    row["cpu_s_per_image"][name].append(cpu)
                    print(
                        f"crop {crop} batch {batch} run {r + 1} {name:18s} {rate:7.3f} images/s, "
                        f"{cpu:6.2f} CPU s/image",
                        flush=True,
                    )
            for name in names:
                row[name] = float(np.median(row["runs"][name]))
                row[name + "_cpu"] = float(np.median(row["cpu_s_per_image"][name]))
            row["ratio"] = row["earthmon"] / row["gluoncv-reference"]
            row["cpu_ratio"] = row["gluoncv-reference_cpu"] / row["earthmon_cpu"]
            print(
                f"crop {crop}: median earthmon {row['earthmon']:.3f} vs reference {row['gluoncv-reference']:.3f} "
                f"images/s = {row['ratio']:.2f}x; CPU time per image: reference / earthmon = {row['cpu_ratio']:.2f}x",
                flush=True,
            )
            results.append(row)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
