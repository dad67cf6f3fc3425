"""Push the earthmon images to Amazon ECR (default) or to any registry (``--registry HOST:PORT``).

    python containers/push.py [--registry HOST:PORT] [--tag TAG] [--json FILE] [--dry-run] IMAGE:TAG ...

ECR: the account comes from the AWS session (``sts:GetCallerIdentity``), the region from the session
(``AWS_REGION`` / ``AWS_DEFAULT_REGION`` / the profile); each image's repository (its name without the tag) is
created when missing (scan on push, mutable tags); ``docker login`` gets the password from
``ecr:GetAuthorizationToken`` on stdin (never on the command line). Every image is pushed as ``<tag>`` (default
``<version>-<git sha>``, the local image's own tag) and ``latest``. The pushed references are printed by digest
(``REGISTRY/NAME@sha256:...``), the form to put in a job definition, and written to ``--json`` when given.
``AWS_ENDPOINT_URL`` points boto3 at another endpoint (moto in tests). ``EARTHMON_DOCKER`` names the docker
binary (default ``docker``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass


class PushError(Exception):
    pass


@dataclass(frozen=True)
class Target:
    source: str  # local image reference, NAME:TAG
    repository: str  # repository name in the registry
    tags: tuple[str, ...]

    def references(self, registry: str) -> list[str]:
        return [f"{registry}/{self.repository}:{tag}" for tag in self.tags]


def plan_targets(images: Sequence[str], tag: str | None) -> list[Target]:
    """Pure: local image references -> what to push where (repository = the name, tags = tag + latest)."""
    targets = []
    for image in images:
        name, _, local_tag = image.rpartition(":")
        if not name or "/" in local_tag:
            raise PushError(f"{image!r}: give images as NAME:TAG (e.g. earthmon-processing:0.1.0-abc123)")
        push_tag = tag or local_tag
        tags = (push_tag,) if push_tag == "latest" else (push_tag, "latest")
        targets.append(Target(source=image, repository=name.rsplit("/", 1)[-1], tags=tags))
    return targets


def _docker() -> list[str]:
    return shlex.split(os.environ.get("EARTHMON_DOCKER", "docker"))


def _run(argv: list[str], dry_run: bool, stdin: str | None = None) -> str:
    shown = " ".join(shlex.quote(a) for a in argv)
    print(f"+ {shown}", flush=True)
    if dry_run:
        return ""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PushError(f"{shown} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc.stdout


def ecr_registry(repositories: Sequence[str], dry_run: bool) -> str:
    """Account and region from the session; repositories created if missing; docker logged in. Returns
    the registry host (ACCOUNT.dkr.ecr.REGION.amazonaws.com)."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError as exc:  # pragma: no cover
        raise PushError(f"pushing to ECR needs boto3 ({exc}): run it from .venv (make push)") from None
    session = boto3.Session()
    region = session.region_name
    if not region:
        raise PushError("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or a profile's region)")
    config = Config(retries={"mode": "adaptive", "max_attempts": 8})
    try:
        account = session.client("sts", region_name=region, config=config).get_caller_identity()["Account"]
        ecr = session.client("ecr", region_name=region, config=config)
        for name in repositories:
            try:
                ecr.describe_repositories(repositoryNames=[name])
                print(f"ECR repository {name} exists")
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "RepositoryNotFoundException":
                    raise
                if dry_run:
                    print(f"would create ECR repository {name}")
                    continue
                ecr.create_repository(
                    repositoryName=name,
                    imageTagMutability="MUTABLE",
                    imageScanningConfiguration={"scanOnPush": True},
                    tags=[{"Key": "project", "Value": "earthmon"}],
                )
                print(f"created ECR repository {name}")
        auth = ecr.get_authorization_token()["authorizationData"][0]
    except NoCredentialsError:
        raise PushError(
            "no AWS credentials: configure a profile or AWS_* variables (aws configure)"
        ) from None
    except (BotoCoreError, ClientError) as exc:
        raise PushError(f"AWS: {exc}") from None
    user, _, password = base64.b64decode(auth["authorizationToken"]).decode().partition(":")
    endpoint = auth.get("proxyEndpoint") or f"https://{account}.dkr.ecr.{region}.amazonaws.com"
    registry = endpoint.removeprefix("https://").removeprefix("http://").rstrip("/")
    _run([*_docker(), "login", "--username", user, "--password-stdin", endpoint], dry_run, stdin=password)
    return registry


def push(targets: Sequence[Target], registry: str, dry_run: bool) -> list[dict[str, str]]:
    pushed = []
    for target in targets:
        refs = target.references(registry)
        for ref in refs:
            _run([*_docker(), "tag", target.source, ref], dry_run)
            _run([*_docker(), "push", ref], dry_run)
        digest_ref = ""
        if not dry_run:
            out = _run(
                [
                    *_docker(),
                    "image",
                    "inspect",
                    "--format",
                    "{{range .RepoDigests}}{{println .}}{{end}}",
                    refs[0],
                ],
                dry_run,
            )
            repo = f"{registry}/{target.repository}@"
            digest_ref = next((line for line in out.split() if line.startswith(repo)), "")
            if not digest_ref:
                raise PushError(f"pushed {refs[0]} but docker reports no digest for {registry}")
        pushed.append({"image": target.source, "tags": ",".join(refs), "digest": digest_ref})
        print(
            f"pushed {target.source} -> {', '.join(refs)}"
            + (f"\n  by digest: {digest_ref}" if digest_ref else "")
        )
    return pushed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE:TAG", help="local images to push")
    parser.add_argument("--registry", help="HOST[:PORT] of any registry (default: ECR of the AWS session)")
    parser.add_argument("--tag", help="tag to push as (default: each image's local tag), plus latest")
    parser.add_argument("--json", help="write the pushed references and digests here")
    parser.add_argument("--dry-run", action="store_true", help="print what would happen, change nothing")
    args = parser.parse_args(argv)
    try:
        targets = plan_targets(args.images, args.tag)
        if not args.dry_run:
            for target in targets:
                _run([*_docker(), "image", "inspect", "--format", "{{.Id}}", target.source], False)
        if args.registry:
            registry = args.registry.removeprefix("https://").removeprefix("http://").rstrip("/")
        else:
            registry = ecr_registry([t.repository for t in targets], args.dry_run)
        pushed = push(targets, registry, args.dry_run)
    except PushError as exc:
        print(f"push: {exc}", file=sys.stderr)
        return 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump(pushed, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
