"""`launcher`: the command line of both workflows, one click group.

Layers: `launcher.cli` parses options and prints (`console` holds what every command shares: the console, the one
error mapping, option helpers); `cli.ndvi` has the planetary NDVI job's commands over `launcher.ndvi` (one module a
stage of the run), `cli.model` the model workflow's over `launcher.model`; both use the AWS edge `launcher.aws`.
Nothing below the CLI imports it.
"""

from __future__ import annotations

import click

from launcher.cli import model, ndvi


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="earthmon", message="%(prog)s %(version)s")
def cli() -> None:
    """Plan, submit, watch and resume sharded SageMaker Processing jobs of the NDVI worker, or run them locally.

    \b
    Typical run:
      launcher search --bbox=-179.03,-55.97,179.37,83.78 --datetime 2023-12-01/2023-12-07 --out items.jsonl
      launcher plan --items items.jsonl --jobs 25 --instances-per-job 20 --s3-prefix s3://BUCKET/ndvi --out run/
      launcher submit --plan run/plan.json --image URI --role ARN
      launcher watch --plan run/plan.json
      launcher resume --plan run/plan.json

    AWS endpoints follow AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_<SERVICE> (e.g. a local moto server).
    """


for _command in (*ndvi.COMMANDS, *model.COMMANDS):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="launcher")


__all__ = ["cli", "main"]
