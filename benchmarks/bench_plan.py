"""Planning the reference run: 8,581 scenes into 25 ManifestFile jobs x 20 instances.

Prints the time of each step and its ratio to a baseline measured in the same run: reading the items JSONL
(json.loads of every line), the input cost no planner can avoid. The issue's bar: "seconds, not minutes".

    .venv/bin/python benchmarks/bench_plan.py [--scenes 8581] [--jobs 25] [--instances 20] [--repeat 3] [--with-upload]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from click.testing import CliRunner

from launcher.cli import cli
from launcher.ndvi.plan import Plan, make_plan
from launcher.ndvi.search import dedupe
from launcher.ndvi.synthetic import synthetic_items


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def upload_timings(jsonl: Path, args: argparse.Namespace, tmp: Path) -> list[tuple[str, float]]:
    """`launcher plan` against a local moto S3 (one run each: uploads are not repeatable without --force)."""
    import logging
    import os
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    import launcher.aws

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1", EARTHMON_AWS_MAX_RPS="0",
    )  # fmt: skip
    launcher.aws.reset_session()
    boto3.client("s3").create_bucket(Bucket="bench-bucket")
    out = []
    try:
        for label, extra in (("in place", []), ("copy items", ["--copy-items"])):
            t0 = time.perf_counter()
            result = CliRunner().invoke(
                cli,
                ["plan", "--items", str(jsonl), "--jobs", str(args.jobs), "--instances-per-job", str(args.instances),
                 "--s3-prefix", "s3://bench-bucket/ndvi", "--run-id", f"up-{label.split()[0]}",
                 "--out", str(tmp / label.replace(" ", "-")), *extra],
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            out.append((f"`launcher plan` + upload to moto S3 ({label})", time.perf_counter() - t0))
    finally:
        server.stop()
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
        help="also time `launcher plan` uploading to a local moto S3: manifests only (items in place), and with "
        "every item JSON copied (--copy-items, 16 upload threads)",
    )
    args = parser.parse_args()

    t0 = time.perf_counter()
    items = synthetic_items(args.scenes)
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

        baseline = best_of(args.repeat, lambda: [json.loads(line) for line in lines])
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
    print(
        f"planning {args.scenes:,} scenes ({len(searched):,} searched) into {args.jobs} jobs x {args.instances}"
    )
    print(
        f"  synthetic items built in {built:.2f} s; plan.json {len(text) / 1e6:.1f} MB; manifest sizes {sizes}"
    )
    print(f"  estimate: {plan.estimate.instance_hours:.1f} instance-hours, ${plan.estimate.cost_usd:,.2f}")
    print(f"  best of {args.repeat}:")
    rows = [
        ("baseline: read items.jsonl (json.loads)", baseline),
        ("dedupe one scene per tile (least-cloudy)", t_dedupe),
        ("make_plan: shard + manifests + estimate", t_plan),
        ("plan.json round trip (to_dict/dumps/loads/from_dict)", t_roundtrip),
        ("`launcher plan --no-upload` end to end", t_cli),
    ]
    for name, seconds in rows:
        print(f"    {name:<54} {seconds:8.3f} s  {seconds / baseline:6.2f}x baseline")
    for name, seconds in uploads:
        print(f"    {name:<54} {seconds:8.3f} s  {seconds / baseline:6.2f}x baseline")
    ok = t_cli < 10.0
    print(
        f"  {'OK' if ok else 'TOO SLOW'}: the whole plan command takes {t_cli:.2f} s (bar: seconds, not minutes)"
    )
    print(f"  median manifest entries: {statistics.median(len(m) - 1 for m in manifests.values()):.0f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
