"""Delivery: `make push` to a real registry (Debian's docker-registry) and back by digest; the ECR path of
containers/push.py against moto (requests asserted; moto's ECR has no registry behind it, so docker is a
recording stand-in there); and a scan of every exported layer for AWS keys, private keys and this machine's
proxy CA."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from earthmon_testing.containers import REPO, docker, free_port, require, wait_http

# ------------------------------------------------------------------------------------------- registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """Debian's docker-registry (the Distribution registry) on 127.0.0.1 (docker trusts loopback over HTTP)."""
    binary = shutil.which("docker-registry")
    require(binary is not None, "docker-registry is not installed (apt-get install docker-registry)")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/", timeout=30)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.docker
def test_make_push_to_a_registry_then_pull_by_digest(processing_image, training_image, registry) -> None:
    sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True)
    tag = subprocess.run(
        ["make", "-s", "--no-print-directory", "-f", "-", "print"],
        input="include Makefile\nprint:\n\t@echo $(IMAGE_TAG)\n", cwd=REPO, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert tag == f"0.1.0-{sha.stdout.strip()}" or tag.endswith(
        f"-{sha.stdout.strip()}"
    )  # <version>-<git sha>
    # push the :dev builds under a tag of this test (the worktree's HEAD may have moved since the build)
    tag = f"{tag}-t{os.getpid()}"
    for image, dev in (("earthmon-processing", processing_image), ("earthmon-training", training_image)):
        docker("tag", dev, f"{image}:{tag}")

    t0 = time.monotonic()
    proc = subprocess.run(
        ["make", "push", f"REGISTRY={registry}", f"IMAGE_TAG={tag}"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"make push: {time.monotonic() - t0:.0f} s")
    pushed = json.loads((REPO / "build" / "pushed-images.json").read_text())
    assert [p["image"] for p in pushed] == [f"earthmon-processing:{tag}", f"earthmon-training:{tag}"]

    for entry in pushed:
        name = entry["image"].split(":")[0]
        assert entry["tags"].split(",") == [f"{registry}/{name}:{tag}", f"{registry}/{name}:latest"]
        # the registry serves both tags, with the same manifest digest that push reported
        digest = entry["digest"].split("@", 1)[1]
        for ref_tag in (tag, "latest"):
            out = subprocess.run(
                ["curl", "-sfI", "-H", "Accept: application/vnd.docker.distribution.manifest.v2+json",
                 f"http://{registry}/v2/{name}/manifests/{ref_tag}"],
                capture_output=True, text=True,
            ).stdout  # fmt: skip
            assert digest in out, out
        local_id = docker("image", "inspect", "--format", "{{.Id}}", entry["image"]).stdout.strip()
        for ref in entry["tags"].split(","):
            docker("rmi", ref)
        docker("pull", entry["digest"])
        assert docker("image", "inspect", "--format", "{{.Id}}", entry["digest"]).stdout.strip() == local_id
        docker("rmi", entry["digest"])
        docker("rmi", entry["image"])


# ------------------------------------------------------------------------------------------------ ECR


def test_push_to_ecr_creates_repositories_logs_in_and_tags(aws: str, tmp_path: Path) -> None:
    import boto3

    ecr = boto3.client("ecr")
    ecr.create_repository(repositoryName="earthmon-processing")  # one exists, one is missing
    record = tmp_path / "docker-calls.jsonl"
    fake = tmp_path / "docker"
    fake.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        "stdin = sys.stdin.read() if '--password-stdin' in sys.argv else None\n"
        f"open({str(record)!r}, 'a').write(json.dumps({{'argv': sys.argv[1:], 'stdin': stdin}}) + '\\n')\n"
        "if sys.argv[1:3] == ['image', 'inspect'] and '{{range' in ' '.join(sys.argv):\n"
        "    print(sys.argv[-1].rsplit(':', 1)[0] + '@sha256:' + '0' * 64)\n"
    )
    fake.chmod(0o755)
    env = {**os.environ, "EARTHMON_DOCKER": str(fake)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "containers/push.py"), "--json", str(tmp_path / "pushed.json"),
         "earthmon-processing:0.1.0-abc", "earthmon-training:0.1.0-abc"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    repos = {r["repositoryName"]: r for r in ecr.describe_repositories()["repositories"]}
    assert set(repos) == {"earthmon-processing", "earthmon-training"}
    account = boto3.client("sts").get_caller_identity()["Account"]
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    login = [c for c in calls if c["argv"][0] == "login"]
    assert len(login) == 1
    token = ecr.get_authorization_token()["authorizationData"][0]
    import base64

    user, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
    assert login[0]["argv"][1:4] == ["--username", user, "--password-stdin"]
    assert login[0]["stdin"] == password and password not in " ".join(
        login[0]["argv"]
    )  # never on the command line
    host = f"{account}.dkr.ecr.us-east-1.amazonaws.com"
    pushes = [c["argv"][1] for c in calls if c["argv"][0] == "push"]
    assert pushes == [
        f"{host}/earthmon-processing:0.1.0-abc", f"{host}/earthmon-processing:latest",
        f"{host}/earthmon-training:0.1.0-abc", f"{host}/earthmon-training:latest",
    ]  # fmt: skip
    tags = [c["argv"][1:] for c in calls if c["argv"][0] == "tag"]
    assert ["earthmon-training:0.1.0-abc", f"{host}/earthmon-training:latest"] in tags
    assert json.loads((tmp_path / "pushed.json").read_text())[0]["digest"].startswith(
        f"{host}/earthmon-processing@sha256:"
    )


def test_push_without_region_or_with_a_bad_name_explains(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    env["EARTHMON_DOCKER"] = "true"
    proc = subprocess.run(
        [sys.executable, str(REPO / "containers/push.py"), "earthmon-processing:dev"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "AWS_REGION" in proc.stderr
    proc = subprocess.run(
        [sys.executable, str(REPO / "containers/push.py"), "--registry", "r:5000", "earthmon-processing"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1 and "NAME:TAG" in proc.stderr


# ----------------------------------------------------------------------------------------------- scan

AWS_KEY_ID = re.compile(rb"(?<![A-Z0-9])(AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")
AWS_SECRET = re.compile(rb"(?i)aws_secret_access_key\s*[=:]\s*['\"]?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])")
PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----\r?\n(?:[A-Za-z0-9+/=]{40,}\r?\n){3,}")
# AWS documentation's own example credentials (botocore ships them in its API docs)
EXAMPLES = (b"AKIAIOSFODNN7EXAMPLE", b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")


def _host_extra_cas() -> list[bytes]:
    """Certificates this machine trusts beyond Debian's set (e.g. a TLS-intercepting proxy's CA): an image
    must not carry them. Returns the base64 bodies."""
    bodies = []
    for crt in Path("/usr/local/share/ca-certificates").glob("**/*.crt"):
        text = crt.read_bytes()
        for m in re.finditer(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", text, re.S):
            bodies.append(b"".join(m.group(1).split())[:120])
    return bodies


def _layers(archive: Path):
    """Yield (layer name, path inside the layer, content) for every regular file of every layer, and the
    image's JSON files (config, manifest) as (name, name, content)."""
    with tarfile.open(archive) as outer:
        for member in outer.getmembers():
            if not member.isfile():
                continue
            blob = outer.extractfile(member)
            if member.name.endswith(".json"):
                yield member.name, member.name, blob.read()
                continue
            if not member.name.endswith("layer.tar"):
                continue
            with tarfile.open(fileobj=blob, mode="r|") as layer:
                for entry in layer:
                    if entry.isfile() and entry.size:
                        yield member.name, entry.name.removeprefix("./"), layer.extractfile(entry).read()


def scan_image(image: str, workdir: Path) -> list[str]:
    """`docker save` the image and search every file of every layer (and the image config).

    Files installed unmodified by Debian packages (their md5 equals dpkg's record) are the distribution's, not
    ours, and are skipped: Debian's libgnutls, for one, embeds public self-test keys. A Debian file that was
    changed after installation is scanned like any other."""
    archive = workdir / "image.tar"
    docker("save", "-o", str(archive), image, timeout=900)
    debian: dict[str, str] = {}
    for _, path, data in _layers(archive):
        if path.startswith("var/lib/dpkg/info/") and path.endswith(".md5sums"):
            for line in data.decode(errors="replace").splitlines():
                digest, _, name = line.partition("  ")
                debian[name.strip()] = digest
    cas = _host_extra_cas()
    findings = []
    for layer, path, data in _layers(archive):
        if path in debian and hashlib.md5(data).hexdigest() == debian[path]:
            continue
        where = f"{layer}:{path}"
        for m in AWS_KEY_ID.finditer(data):
            if m.group(0) not in EXAMPLES and b"EXAMPLE" not in m.group(0):
                findings.append(f"{where}: AWS access key id {m.group(0)[:8].decode()}...")
        for m in AWS_SECRET.finditer(data):
            if m.group(1) not in EXAMPLES and b"EXAMPLE" not in m.group(1):
                findings.append(f"{where}: AWS secret access key")
        if PRIVATE_KEY.search(data):
            findings.append(f"{where}: private key")
        squashed = b"".join(data.split()) if b"CERTIFICATE" in data else b""
        for body in cas:
            if squashed and body in squashed:
                findings.append(f"{where}: this machine's extra CA certificate")
    archive.unlink()
    return findings


def test_the_scan_finds_planted_secrets(docker_engine, tmp_path: Path) -> None:
    """The scanner itself: an image with a planted key pair and AWS credentials is flagged."""
    root = tmp_path / "rootfs"
    (root / "root/.aws").mkdir(parents=True)
    (root / "root/.aws/credentials").write_text(
        "[default]\naws_access_key_id = AKIA" + "Q" * 16 + "\naws_secret_access_key = " + "a1B2" * 10 + "\n"
    )
    key = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"], capture_output=True
    )
    require(key.returncode == 0, "openssl is not installed")
    (root / "etc").mkdir()
    (root / "etc/server.key").write_bytes(key.stdout)
    extra_cas = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    if extra_cas:  # a bundle that trusts this machine's proxy CA, as a careless build would bake in
        (root / "etc/ssl/certs").mkdir(parents=True)
        (root / "etc/ssl/certs/ca-certificates.crt").write_bytes(extra_cas[0].read_bytes())
    with tarfile.open(tmp_path / "rootfs.tar", "w") as tar:
        tar.add(root, arcname=".")
    name = f"earthmon-scan-canary:{os.getpid()}"
    docker("import", str(tmp_path / "rootfs.tar"), name)
    try:
        findings = scan_image(name, tmp_path)
    finally:
        docker("rmi", name, check=False)
    text = "\n".join(findings)
    assert "AWS access key id" in text and "AWS secret access key" in text and "private key" in text, text
    assert ("extra CA certificate" in text) == bool(extra_cas), text


@pytest.mark.docker
@pytest.mark.parametrize("which", ["processing_image", "training_image"])
def test_images_hold_no_credentials_keys_or_proxy_ca(which: str, request, tmp_path: Path) -> None:
    image = request.getfixturevalue(which)
    findings = scan_image(image, tmp_path)
    assert findings == [], "\n".join(findings[:50])
