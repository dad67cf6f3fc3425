"""``make demo``: generate a few sample scenes locally, run the worker on them, print where everything is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--dir",
    "root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Folder for the generated inputs and the outputs.",
)
@click.option(
    "--scenes", type=click.IntRange(1, 8), default=3, show_default=True, help="Number of sample scenes."
)
@click.option(
    "--size",
    type=int,
    default=2196,
    show_default=True,
    help="Scene size in 10 m pixels (10980 is a full Sentinel-2 tile).",
)
def main(root: Path, scenes: int, size: int) -> None:
    """Run the NDVI worker on generated Sentinel-2-like scenes, the way SageMaker Processing would."""
    from ndvi_worker.synthetic import write_scenes

    base = root / "opt-ml"
    inputs = base / "processing" / "input"
    if not inputs.exists() or not any(inputs.rglob("*.json")):
        click.echo(f"Generating {scenes} sample scene(s) of {size} x {size} px in {inputs} ...")
        write_scenes(inputs, count=scenes, size=size)
        bad = inputs / "S2B_00XXX_20231204_0_L2A"
        bad.mkdir(parents=True, exist_ok=True)
        item = json.loads(next(inputs.rglob("S2B_*_L2A.json")).read_text())
        item["id"] = bad.name
        for asset in item["assets"].values():
            asset["href"] = "./missing-" + asset["href"].lstrip("./")
        (bad / f"{bad.name}.json").write_text(json.dumps(item, indent=2))
        click.echo(
            f"... plus one scene whose COGs are missing ({bad.name}), to show how failures are reported."
        )
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base.resolve())}
    cmd = [sys.executable, "-m", "ndvi_worker"]
    click.echo(f"\n$ SAGEMAKER_BASE_DIR={base} {' '.join(cmd)}\n")
    status = subprocess.call(cmd, env=env)
    out = base / "processing" / "output"
    click.echo("\nOutputs:")
    for p in sorted(out.glob("*_ndvi.*")):
        click.echo(f"  {p}  ({p.stat().st_size / 1e6:.1f} MB)")
    for p in sorted((out / "_reports").glob("*.json")):
        click.echo(f"  {p}  (per-host report)")
    click.echo(
        f"\nworker exit status {status} (1 = at least one scene failed: the demo includes a broken one)."
    )
    click.echo("Open a *_ndvi.png for a quicklook; run `make demo` again to see reruns skip finished scenes.")


if __name__ == "__main__":
    main()
