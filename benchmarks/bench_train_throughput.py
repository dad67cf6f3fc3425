"""Training throughput: this trainer's loop vs GluonCV's reference segmentation recipe, same data, same threads.

DeepLabV3 on ResNet-50 (aux head, SGD + poly schedule), from scratch, on CPU, crop 128 / batch 8 by default (the
issue 11 setting). Data: generated tiles (bright rectangles on speckle, 8-bit RGB PNG, 256 px, base_size 256).

Each measurement runs in its own process, because the math libraries read their thread counts when MXNet is
imported:

- "earthmon, MXNet default threads" (before issue 11): OMP_NUM_THREADS etc. unset, so MXNet's OpenMP pool is
  half the processors (``omp_get_num_procs() >> 1``): one thread on a 2-vCPU machine;
- "earthmon" (now): the thread settings of ``train`` (segmentation_trainer.threads.configure: every usable CPU);
- "gluoncv-reference", with MXNet's default threads and with the same settings as "earthmon": the loop of
  GluonCV's scripts/segmentation/train.py (v0.10): SegmentationDataset._sync_transform (PIL) + ToTensor/Normalize
  in a gluon DataLoader (2 worker processes), DataParallelModel + DataParallelCriterion(MixSoftmaxCrossEntropyLoss
  (aux_weight=0.5)), gluon.Trainer(sgd) with LRScheduler('poly'), not hybridized (its default ``--mode``).

Reported per run: images/s (timed batches after warm-up), CPU utilisation (process + children CPU time / wall /
usable CPUs), the data pipeline's cost (seconds to read+augment one batch in one thread), and the fraction of
the machine's measured peak (the best float32 n x n matmul of numpy/OpenBLAS and MXNet/oneDNN, same threads) that the training step reaches,
from the network's FLOPs per sample (convolutions and dense layers, forward x 3 for forward + backward).
Configurations alternate (``--repeats``), medians and ratios to the baseline of the same run are printed.

    .venv-trainer/bin/python benchmarks/bench_train_throughput.py [--crop 128] [--batch 8] [--batches 3]
    .venv-trainer/bin/python benchmarks/bench_train_throughput.py --backbone tiny --crop 64 --batches 2  # quick
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MATH_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS")


def cpu_seconds() -> float:
    """CPU time of this process and its children (the reference's DataLoader workers are processes)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a worker that just exited
            total += sum(child.cpu_times()[:2])
    return total


def thread_schedstat() -> dict[int, tuple[float, float]]:
    """Per thread of this process: (seconds on a CPU, seconds runnable but waiting for one) from
    /proc/self/task/*/schedstat (Linux). Waiting for a CPU is contention from other processes, not idling."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            run_ns, wait_ns, _ = (task / "schedstat").read_text().split()
            out[int(task.name)] = (int(run_ns) / 1e9, int(wait_ns) / 1e9)
    return out


def compute_thread_split(
    before: dict, after: dict, wall: float, top: int = 2
) -> list[tuple[float, float, float]]:
    """(running, waiting for a CPU, blocked or stolen) as fractions of ``wall``, for the ``top`` busiest threads."""
    deltas = sorted(
        ((r - before.get(k, (0.0, 0.0))[0], w - before.get(k, (0.0, 0.0))[1]) for k, (r, w) in after.items()),
        reverse=True,
    )
    return [(r / wall, w / wall, max(0.0, 1 - (r + w) / wall)) for r, w in deltas[:top]]


def make_data(root: Path, tiles: int, size: int) -> Path:
    from segmentation_trainer.synthetic import generate_rectangles

    return generate_rectangles(root, n_train=tiles, n_val=0, size=size, seed=3, max_buildings=12)


def reference_loop(
    data: Path, crop: int, batch: int, warmup: int, timed: int, ctxs, backbone: str, base: int
):
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
                base_size=base,
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

    images = sorted((data / "train").glob("*.png"))
    pairs = [(p, data / "train_annotation" / (p.stem + ".png")) for p in images]
    input_transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    )
    dataset = InMemory(pairs, input_transform)
    loader = gluon.data.DataLoader(dataset, batch, shuffle=True, last_batch="rollover", num_workers=2)
    if backbone == "tiny":  # the same narrow network as earthmon's tiny backbone, GluonCV's loop around it
        from segmentation_trainer.model import NetworkConfig, build_network

        model = build_network(
            NetworkConfig(num_classes=2, backbone="tiny", bands=3), ctx=ctxs, initialize=False
        )
    else:
        model = DeepLabV3(
            nclass=2, backbone="resnet50", aux=True, pretrained_base=False, crop_size=crop, base_size=base
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


def earthmon_loop(data: Path, crop: int, batch: int, warmup: int, timed: int, ctxs, backbone: str, base: int):
    from segmentation_trainer.data import Dataset, compute_stats, label_lut, pair_channel
    from segmentation_trainer.fit import FitConfig, fit
    from segmentation_trainer.hyperparameters import parse_hyperparameters
    from segmentation_trainer.model import NetworkConfig, build_network

    pairs = pair_channel(data / "train", data / "train_annotation")
    mean, std = compute_stats(pairs)
    dataset = Dataset(pairs, label_lut(None), mean, std, cache=True)
    hp = parse_hyperparameters(
        {
            "num_classes": "2",
            "num_training_samples": str(len(pairs)),
            "backbone": backbone,
            "crop_size": str(crop),
            "base_size": str(base),
            "mini_batch_size": str(batch),
            "epochs": "1",
            "use_pretrained_model": "False",
        }
    )
    net = build_network(NetworkConfig(num_classes=2, backbone=backbone, bands=3), ctx=ctxs)
    marks: list[tuple[float, int, float]] = []

    def on_batch(epoch, i, samples):
        marks.append((time.perf_counter(), samples, cpu_seconds()))

    config = FitConfig(
        hp=hp,
        workers=int(os.environ.get("EARTHMON_DATA_WORKERS", "2")),
        max_batches_per_epoch=warmup + timed,
        on_batch=on_batch,
        progress_every_s=1e9,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        fit(net, dataset, None, ctxs, config, stop=threading.Event(), fp="bench")
    seen = sum(m[1] for m in marks[warmup:])
    return seen / (marks[-1][0] - marks[warmup - 1][0]), (marks[-1][2] - marks[warmup - 1][2]) / seen


def data_seconds_per_batch(data: Path, crop: int, batch: int, base: int, batches: int = 3) -> float:
    """Reading (cached) + augmenting one batch in one thread: what the data pipeline costs."""
    from segmentation_trainer.data import Dataset, compute_stats, label_lut, pair_channel, training_batches

    pairs = pair_channel(data / "train", data / "train_annotation")
    mean, std = compute_stats(pairs)
    dataset = Dataset(pairs, label_lut(None), mean, std, cache=True)
    for i in range(len(dataset)):
        dataset.load(i)  # the cache is filled once per job
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    n = 0
    for _ in training_batches(dataset, batch, base, crop, rng, workers=0):
        n += 1
        if n >= batches:
            break
    return (time.perf_counter() - started) / n


def network_flops(backbone: str, crop: int) -> float:
    """Forward FLOPs of one crop x crop sample (2 x multiply-accumulates of convolutions and dense layers)."""
    import mxnet as mx
    from mxnet.gluon import nn

    from segmentation_trainer.model import NetworkConfig, build_network

    net = build_network(NetworkConfig(num_classes=2, backbone=backbone, bands=3))
    total = [0.0]

    def hook(block, inputs, output):
        x = inputs[0]
        if isinstance(block, nn.Conv2D):
            w = block.weight.shape  # (out, in / groups, kh, kw)
            total[0] += 2.0 * output.size * w[1] * w[2] * w[3]
        elif isinstance(block, nn.Dense):
            total[0] += 2.0 * output.size * (x.size // x.shape[0])

    def attach(block):
        if isinstance(block, nn.Conv2D | nn.Dense):
            block.register_forward_hook(hook)
        for child in block._children.values():
            attach(child)

    attach(net)
    net(mx.nd.zeros((1, 3, crop, crop)))
    return total[0]


def peak_gflops(seconds: float = 4.0, n: int = 2048) -> float:
    """The machine's float32 peak as this process sees it: the best of a matmul in numpy (OpenBLAS) and an inner
    product in MXNet (oneDNN, what the convolutions use), n x n, with this process's threads, over a few seconds."""
    import mxnet as mx

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    x, w = mx.nd.array(a), mx.nd.array(a.T.copy())
    runs = {
        "numpy": lambda: a @ a,
        "mxnet": lambda: mx.nd.FullyConnected(x, w, num_hidden=n, no_bias=True).wait_to_read(),
    }
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for run in runs.values():
            run()
            t0 = time.perf_counter()
            run()
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def child(args) -> int:
    """One measurement in this process (the thread settings were made before MXNet was imported)."""
    if args.threads == "earthmon":
        from segmentation_trainer.threads import configure

        settings = configure({})
        threads = settings.describe()
    else:
        threads = "MXNet's defaults: " + (
            ", ".join(f"{k}={os.environ[k]}" for k in MATH_VARIABLES if k in os.environ) or "nothing set"
        )
    import mxnet as mx

    from segmentation_trainer.devices import contexts

    random.seed(0)
    mx.random.seed(0)
    ctxs = contexts()
    loop = {"reference": reference_loop, "earthmon": earthmon_loop}[args.loop]
    data = Path(args.data)
    c0, t0, s0 = cpu_seconds(), time.perf_counter(), thread_schedstat()
    rate, cpu_per_image = loop(
        data, args.crop, args.batch, args.warmup, args.batches, ctxs, args.backbone, args.base
    )
    # the two busiest threads (MXNet's engine thread + its OpenMP worker) over the loop, set-up and warm-up included
    split = compute_thread_split(s0, thread_schedstat(), time.perf_counter() - t0)
    out = {
        "loop": args.loop,
        "threads": args.threads,
        "threads_detail": threads,
        "images_per_s": rate,
        "cpu_s_per_image": cpu_per_image,
        "peak_gflops": peak_gflops(),
        "wall_s": time.perf_counter() - t0,
        "cpu_s": cpu_seconds() - c0,
        "thread_split": split,
    }
    print("RESULT " + json.dumps(out), flush=True)
    return 0


CONFIGS = (  # (name, loop, threads); the first is the baseline
    ("earthmon, MXNet default threads (before)", "earthmon", "default"),
    ("earthmon (train's thread settings)", "earthmon", "earthmon"),
    ("gluoncv-reference, default threads", "reference", "default"),
    ("gluoncv-reference, same threads", "reference", "earthmon"),
)


def run_child(args, data: Path, loop: str, threads: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in MATH_VARIABLES}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, __file__, "--child", "--loop", loop, "--threads", threads, "--data", str(data)]
    cmd += ["--crop", str(args.crop), "--batch", str(args.batch), "--base", str(args.base)]
    cmd += ["--warmup", str(args.warmup), "--batches", str(args.batches), "--backbone", args.backbone]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{loop}/{threads} failed:\n{proc.stderr[-3000:]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet-50", choices=["resnet-50", "tiny"])
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--base", type=int, default=256, help="base_size = the tile size")
    parser.add_argument("--tiles", type=int, default=48)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per run")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of each configuration")
    parser.add_argument("--configs", default="0,1,2,3", help="which of the configurations, by index")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    parser.add_argument("--threads", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    cpus = len(os.sched_getaffinity(0))
    configs = [CONFIGS[int(i)] for i in args.configs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", args.tiles, args.base)
        flops = network_flops(args.backbone, args.crop)
        step = data_seconds_per_batch(data, args.crop, args.batch, args.base)
        print(
            f"{args.backbone} DeepLabV3 + aux, crop {args.crop}, batch {args.batch}, {args.tiles} PNG tiles of "
            f"{args.base} px; {cpus} usable CPU(s); load average {os.getloadavg()[0]:.2f}; forward "
            f"{flops / 1e9:.2f} GFLOP/sample, training ~{3 * flops / 1e9:.2f} GFLOP/sample; data pipeline "
            f"{step * 1000:.0f} ms per batch in one thread",
            flush=True,
        )
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
        for r in range(args.repeats):
            for name, loop, threads in configs:
                res = run_child(args, data, loop, threads)
                res["load_avg"] = os.getloadavg()[0]
                runs[name].append(res)
                util = res["cpu_s"] / res["wall_s"] / cpus
                frac = res["images_per_s"] * 3 * flops / 1e9 / res["peak_gflops"]
                print(
                    f"run {r + 1} {name:44s} {res['images_per_s']:7.3f} images/s, {res['cpu_s_per_image']:6.2f} CPU "
                    f"s/image, CPU utilisation {util:5.0%}, {frac:5.1%} of peak {res['peak_gflops']:.0f} GFLOP/s, "
                    f"load {res['load_avg']:.1f}, compute threads running/waiting for a CPU/blocked "
                    + ", ".join(f"{r:.0%}/{w:.0%}/{b:.0%}" for r, w, b in res["thread_split"])
                    + f"  [{res['threads_detail']}]",
                    flush=True,
                )
    base_name = configs[0][0]
    base_rate = statistics.median(r["images_per_s"] for r in runs[base_name])
    summary = []
    print(f"{'configuration':46s} {'median img/s':>12s} {'spread':>15s} {'vs baseline':>11s}")
    for name, _, _ in configs:
        rates = [r["images_per_s"] for r in runs[name]]
        med = statistics.median(rates)
        peak = statistics.median(r["peak_gflops"] for r in runs[name])
        summary.append({"name": name, "median_images_per_s": med, "runs": runs[name],
                        "fraction_of_peak": med * 3 * flops / 1e9 / peak})  # fmt: skip
        print(f"{name:46s} {med:12.3f} {min(rates):7.3f}-{max(rates):<7.3f} {med / base_rate:10.2f}x")
    if args.json:
        args.json.write_text(
            json.dumps({"flops_forward": flops, "data_s_per_batch": step, "configs": summary}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
