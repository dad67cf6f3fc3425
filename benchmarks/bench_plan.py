"""Planning the reference run: 8,581 scenes into 25 ManifestFile jobs x 20 instances.

Prints the time of each step and its ratio to a baseline measured in the same run: reading the items JSONL
(json.loads of every line), the input cost no planner can avoid. The issue's bar: "seconds, not minutes"; with
--with-upload, `launcher plan` including its uploads to a local S3 server in under 10 s.

Items are the size of real Earth Search v1 items (~21 KB: a real item's 20-odd assets and properties around each
synthetic tile, `--item-size real`, the default), or the bare synthetic items (~1.1 KB, `--item-size small`).

    .venv/bin/python benchmarks/bench_plan.py [--scenes 8581] [--jobs 25] [--instances 20] [--repeat 3]
        [--with-upload] [--item-size real|small]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from click.testing import CliRunner

from launcher.cli import cli
from launcher.ndvi.plan import Plan, make_plan
from launcher.ndvi.search import dedupe
from launcher.ndvi.synthetic import synthetic_items

TEMPLATE = (
    Path(__file__).resolve().parents[1]
    / "tests/data/stac-items/earth-search-v1/S2A_13TDE_20231008_0_L2A.json"
)


def real_size(item: dict, template: dict) -> dict:
    """A synthetic item carrying a real item's other assets (hrefs moved to the item's folder), properties and
    links, so that it weighs what a real one does; its own id, footprint, tile, bands and location are kept."""
    out = dict(template, id=item["id"], bbox=item["bbox"], geometry=item["geometry"])
    base = item["assets"]["red"]["href"].rsplit("/", 1)[0]
    assets = {
        name: dict(asset, href=f"{base}/{asset['href'].rsplit('/', 1)[-1]}")
        for name, asset in template["assets"].items()
    }
    out["assets"] = {**assets, **item["assets"]}
    props = {k: v for k, v in template["properties"].items() if k != "earthsearch:s3_path"}
    out["properties"] = {**props, **item["properties"]}
    out["links"] = [
        *item["links"],
        *(link for link in template["links"] if link.get("rel") not in ("self", "canonical")),
    ]
    return out


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def upload_timings(jsonl: Path, args: argparse.Namespace, tmp: Path) -> list[tuple[str, float, str]]:
    """`launcher plan` as a user runs it (its own process, default settings: no rate-limit override) against a
    local S3 server in another process (moto). Wall and CPU of the launcher, CPU of the server, and the objects
    that landed, counted in the bucket afterwards (one run each: uploads are not repeatable without --force)."""
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    server = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EARTHMON_AWS_"))}
    env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
               AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    out = []
    try:
        for _ in range(100):
            try:
                s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                                  aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip
                s3.create_bucket(Bucket="bench-bucket")
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the moto server ({moto}) did not answer on port {port} within 10 s")
        for label, extra in (("in place", []), ("copy items", ["--copy-items"])):
            run_id = f"up-{label.split()[0]}"
            server_cpu = _cpu_seconds(server.pid)
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "launcher", "plan", "--items", str(jsonl), "--jobs", str(args.jobs),
                 "--instances-per-job", str(args.instances), "--s3-prefix", "s3://bench-bucket/ndvi",
                 "--run-id", run_id, "--out", str(tmp / label.replace(" ", "-")), *extra],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            server_cpu = _cpu_seconds(server.pid) - server_cpu
            assert os.waitstatus_to_exitcode(status) == 0, output[-3000:]
            landed = sum(
                page.get("KeyCount", 0)
                for page in s3.get_paginator("list_objects_v2").paginate(
                    Bucket="bench-bucket", Prefix=f"ndvi/{run_id}/"
                )
            )
            client_cpu = usage.ru_utime + usage.ru_stime
            out.append(
                (
                    f"`launcher plan` + upload to moto S3 ({label})",
                    wall,
                    f"{landed:,} objects; CPU: launcher {client_cpu:.1f} s, S3 server {server_cpu:.1f} s "
                    f"({(client_cpu + server_cpu) / max(1, landed) * 1000:.2f} ms per object)",
                )
            )
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", type=int, default=8581)
    parser.add_argument("--jobs", type=int, default=25)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--with-upload",
        action="store_true",
        help="also time `launcher plan` (its own process, default settings) uploading to a local moto S3 server "
        "(another process): manifests only (items in place), and with every item JSON copied (--copy-items)",
    )
    parser.add_argument("--item-size", choices=("real", "small"), default="real")
    args = parser.parse_args()

    t0 = time.perf_counter()
    items = synthetic_items(args.scenes)
    if args.item_size == "real":
        template = json.loads(TEMPLATE.read_text())
        items = [real_size(item, template) for item in items]
    # a second, cloudier scene for a third of the tiles, so dedupe has real work (as a week of acquisitions does)
    extra = []
    for item in items[::3]:
        twin = json.loads(json.dumps(item))
        twin["id"] = twin["id"].replace("_0_L2A", "_1_L2A")
        twin["properties"]["eo:cloud_cover"] += 1.0
        extra.append(twin)
    searched = items + extra
    built = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        jsonl = Path(tmp) / "items.jsonl"
        jsonl.write_text("".join(json.dumps(i, separators=(",", ":")) + "\n" for i in items))
        lines = jsonl.read_text().splitlines()

        def read_all() -> list:
            gc.disable()  # as `launcher plan` reads (its collector is off while it holds the items)
            try:
                return [json.loads(line) for line in lines]
            finally:
                gc.enable()

        baseline = best_of(args.repeat, read_all)
        t_dedupe = best_of(args.repeat, lambda: dedupe(searched, "least-cloudy"))
        kept, _ = dedupe(searched, "least-cloudy")
        assert len(kept) == args.scenes

        def plan_once():
            return make_plan(
                kept,
                run_id="bench",
                created="2023-12-08T00:00:00+00:00",
                s3_prefix="s3://bucket/ndvi",
                jobs=args.jobs,
                instances_per_job=args.instances,
            )

        t_plan = best_of(args.repeat, plan_once)
        plan, manifests, _ = plan_once()
        text = json.dumps(plan.to_dict())
        t_roundtrip = best_of(args.repeat, lambda: Plan.from_dict(json.loads(json.dumps(plan.to_dict()))))

        def cli_plan():
            result = CliRunner().invoke(
                cli,
                ["plan", "--items", str(jsonl), "--jobs", str(args.jobs), "--instances-per-job", str(args.instances),
                 "--s3-prefix", "s3://bucket/ndvi", "--run-id", "bench", "--out", str(Path(tmp) / "run"),
                 "--no-upload", "--force"],
            )  # fmt: skip
            assert result.exit_code == 0, result.output

        t_cli = best_of(args.repeat, cli_plan)
        uploads = upload_timings(jsonl, args, Path(tmp)) if args.with_upload else []

    sizes = sorted({j.scene_count for j in plan.jobs})
    size = statistics.median(len(line) for line in lines[:200])
    print(
        f"planning {args.scenes:,} scenes ({len(searched):,} searched) into {args.jobs} jobs x {args.instances}; "
        f"items of {size / 1000:.1f} KB ({args.item_size}), {sum(map(len, lines)) / 1e6:.0f} MB of JSON Lines"
    )
    print(
        f"  synthetic items built in {built:.2f} s; plan.json {len(text) / 1e6:.1f} MB; manifest sizes {sizes}"
    )
    print(f"  estimate: {plan.estimate.instance_hours:.1f} instance-hours, ${plan.estimate.cost_usd:,.2f}")
    print(f"  best of {args.repeat}:")
    rows = [
        ("baseline: read items.jsonl (json.loads, no GC)", baseline),
        ("dedupe one scene per tile (least-cloudy)", t_dedupe),
        ("make_plan: shard + manifests + estimate", t_plan),
        ("plan.json round trip (to_dict/dumps/loads/from_dict)", t_roundtrip),
        ("`launcher plan --no-upload` end to end", t_cli),
    ]
    for name, seconds in rows:
        print(f"    {name:<54} {seconds:8.3f} s  {seconds / baseline:6.2f}x baseline")
    for name, seconds, detail in uploads:
        print(f"    {name:<54} {seconds:8.3f} s  {seconds / baseline:6.2f}x baseline; {detail}")
    ok = t_cli < 10.0 and all(seconds < 10.0 for _, seconds, _ in uploads)
    slowest = max([t_cli, *(seconds for _, seconds, _ in uploads)])
    print(
        f"  {'OK' if ok else 'TOO SLOW'}: the whole plan command takes {slowest:.2f} s at most"
        f"{' with its uploads' if uploads else ''} (bar: under 10 s)"
    )
    print(f"  median manifest entries: {statistics.median(len(m) - 1 for m in manifests.values()):.0f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
