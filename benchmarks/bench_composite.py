"""Temporal composite benchmark (`make bench-composite`): 6 dates of one full-size MGRS tile composited with
`ndvi-worker composite` against the worker computing one scene's NDVI, in the same run.

The inputs are the worker's own outputs: 6 synthetic Sentinel-2 scenes of tile 31UFU (ndvi_worker/synthetic.py, a
different seed per date, so clouds, shadows and snow fall elsewhere each time; dates 2, 4 and 6 also have a partial
footprint, nodata outside a swath edge at a different place each) run through the real worker (`<id>_ndvi.tif`
int16 COG + `<id>_ndvi.json` item). Each scene is deleted once processed except the first, which is the baseline
("one scene's NDVI": the worker, defaults, local files). Generated once per --workdir; the work dir is removed at the
end unless --keep (6 full-size int16 COGs are ~1.5 GB).

Then, each as its own process (wall, CPU = user + system, peak RSS from wait4), interleaved (run r of every
contender before run r + 1): the worker on one scene, and `ndvi-worker composite --method max|median|mean` over the
6 dates (defaults: threads = CPU count, --memory-mb 256, quicklook written).

    .venv/bin/python benchmarks/bench_composite.py [--size 10980] [--repeats 2] [--workdir DIR] [--keep]

Goals (issue text, defaults, same run): each composite within 2x the one-scene NDVI time, peak RSS <= 1.5 GB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_worker import measure  # noqa: E402

PY = sys.executable
DATES = ("20231201", "20231206", "20231211", "20231216", "20231221", "20231226")
METHODS = ("max", "median", "mean")
GOAL_RATIO, GOAL_RSS_MB = 2.0, 1536

# In a child process (the parent stays small, so wait4's peak RSS of later children is theirs): one synthetic scene
# with, for `edge` > 0, nodata (DN 0, SCL 0) left of a slanted swath edge starting at `edge` of the width.
GENERATE = """
import sys
from pathlib import Path
import numpy as np
from ndvi_worker import synthetic

folder, item_id, size, seed, edge = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
plain = synthetic.scene_arrays

def with_edge(size, seed, offset_applied, baseline):
    red, nir, scl = plain(size, seed, offset_applied, baseline)
    if edge > 0:
        h = scl.shape[0]
        yy, xx = np.ogrid[:h, :h]
        out = xx < h * edge - yy * 0.25
        scl[out] = 0
        out10 = np.repeat(np.repeat(out, 2, axis=0), 2, axis=1)
        red[out10] = 0
        nir[out10] = 0
    return red, nir, scl

synthetic.scene_arrays = with_edge
synthetic.write_scene(folder, item_id=item_id, size=size, seed=seed, offset_applied=True)
"""


def worker_cmd(scene: Path, out: Path) -> list[str]:
    return [PY, "-m", "ndvi_worker", "--input", str(scene), "--output", str(out), "--overwrite",
            "--log-level", "WARNING"]  # fmt: skip


def composite_cmd(products: Path, out: Path, method: str) -> list[str]:
    return [PY, "-m", "ndvi_worker", "composite", "--input", str(products), "--output", str(out),
            "--method", method, "--log-level", "WARNING"]  # fmt: skip


def prepare(work: Path, size: int, env: dict) -> tuple[Path, Path]:
    """The 6 dates' worker outputs in work/products (once) and the first date's scene (the baseline's input)."""
    products, scenes = work / "products", work / "scenes"
    baseline = scenes / f"S2B_31UFU_{DATES[0]}_0_L2A"
    done = products / ".complete"
    if done.exists() and baseline.exists():
        return products, baseline
    shutil.rmtree(products, ignore_errors=True)
    shutil.rmtree(scenes, ignore_errors=True)
    print(f"generating 6 dates of a {size} x {size} tile in {work} (once) ...", flush=True)
    for k, date in enumerate(DATES):
        item_id = f"S2B_31UFU_{date}_0_L2A"
        scene = scenes / item_id
        edge = (0.0, 0.35, 0.0, 0.15, 0.0, 0.55)[k]  # dates 2, 4, 6: partial footprints
        t = time.monotonic()
        subprocess.run([PY, "-c", GENERATE, str(scene), item_id, str(size), str(100 + k), str(edge)], check=True,
                       env=env)  # fmt: skip
        gen = time.monotonic() - t
        m = measure(worker_cmd(scene, products), env)
        print(f"  {date}: scene {gen:.0f} s, worker {m['wall']:.1f} s, {m['rss']:.0f} MB", flush=True)
        if k:
            shutil.rmtree(scene)
    for extra in products.glob("*_ndvi.png"):
        extra.unlink()  # the composite reads the .tif and .json only
    tifs = list(products.glob("*_ndvi.tif"))
    mb = sum(p.stat().st_size for p in tifs) / 1e6
    print(f"  {len(tifs)} NDVI COGs, {mb:.0f} MB", flush=True)
    done.touch()
    return products, baseline


def fmt_runs(runs: list[dict]) -> tuple[float, str]:
    walls = [m["wall"] for m in runs]
    w = statistics.median(walls)
    return w, (
        f"{w:.1f} s ({min(walls):.1f}-{max(walls):.1f}) | {statistics.median(m['cpu'] for m in runs):.1f} s | "
        f"{max(m['rss'] for m in runs):.0f} MB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=10980, help="tile size in 10 m pixels (10980 = full tile)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="cache of the inputs [default: a temp dir]")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (inputs) for the next run")
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    methods = [m for m in METHODS if m in args.methods.split(",")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"bench-composite-{args.size}-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    try:
        products, baseline = prepare(work, args.size, env)
        load0 = os.getloadavg()
        print(f"machine: {os.cpu_count()} CPUs, load average {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}",
              flush=True)  # fmt: skip
        cmds = {"one scene's NDVI (worker)": lambda out: worker_cmd(baseline, out)}
        for method in methods:
            cmds[f"composite --method {method}"] = lambda out, m=method: composite_cmd(products, out, m)
        for r in range(args.repeats):
            for name, cmd in cmds.items():
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                m = measure(cmd(out), env)
                shutil.rmtree(out, ignore_errors=True)
                results.setdefault(name, []).append(m)
                print(f"  {name} run {r + 1}: {m['wall']:.1f} s, CPU {m['cpu']:.1f} s, {m['rss']:.0f} MB "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    print(
        f"\n{args.size} x {args.size} tile, 6 dates, {args.repeats} interleaved runs, {os.cpu_count()} CPUs: median "
        f"wall (min-max), CPU seconds (median), peak RSS (max); load average {load0[0]:.1f} before, "
        f"{load1[0]:.1f} after\n"
    )
    print("| run | wall | CPU | peak RSS | wall / one scene's NDVI |")
    print("|---|---|---|---|---|")
    base = statistics.median(m["wall"] for m in results["one scene's NDVI (worker)"])
    goals = []
    for name, runs in results.items():
        w, cells = fmt_runs(runs)
        print(f"| {name} | {cells} | {w / base:.2f}x |")
        if name.startswith("composite"):
            rss = max(m["rss"] for m in runs)
            ok = w / base <= GOAL_RATIO and rss <= GOAL_RSS_MB
            goals.append(f"{name.split()[-1]} {w / base:.2f}x, {rss:.0f} MB ({'met' if ok else 'NOT met'})")
    print(
        f"\ngoals (composite <= {GOAL_RATIO:g}x one scene's NDVI, peak RSS <= {GOAL_RSS_MB} MB): "
        + "; ".join(goals)
    )


if __name__ == "__main__":
    main()
