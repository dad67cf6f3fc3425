"""The training image as SageMaker runs it: `docker run IMAGE` (= train) on a /opt/ml tree with tiny generated
SN6-like data in the built-in JPG/PNG channel layout, a failure file on a bad hyperparameter, then
`docker run IMAGE serve` with /ping and /invocations for every content type, and a SIGTERM stop."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from earthmon_testing import TINY_TRAINING_HP
from earthmon_testing.containers import REPO, docker, free_port, http, inspect, require, wait_http

pytestmark = pytest.mark.docker

TINY_HP = TINY_TRAINING_HP
CHANNELS = ("train", "train_annotation", "validation", "validation_annotation", "label_map")


def _job_tree(base: Path, data: Path | None, hyperparameters: dict) -> Path:
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    (config / "inputdataconfig.json").write_text(
        json.dumps(
            {c: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for c in CHANNELS}
        )
    )
    for c in CHANNELS:
        if data is not None and (data / c).is_dir():
            shutil.copytree(data / c, base / "input" / "data" / c)
    for sub in ("model", "output", "checkpoints"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    return base


@pytest.fixture(scope="module")
def sn6_jpg(training_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SN6-like data generated and prepared (built-in JPG/PNG layout) by the image's own commands."""
    data = tmp_path_factory.mktemp("sn6")
    docker(
        "run", "--rm", "-v", f"{data}:/data", training_image, "sh", "-c",
        "segmentation-trainer generate-sn6 --dst /data/sn6 --locations 3 --strips 2 --tiles-per-side 2 "
        "--tile-size 64 --buildings 12 && "
        "segmentation-trainer prepare-sn6 --src /data/sn6 --dst /data/prepared --format jpg",
    )  # fmt: skip
    return data / "prepared"


@pytest.fixture(scope="module")
def trained(training_image: str, sn6_jpg: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`docker run IMAGE` with no argument on a SageMaker training tree: that is `train`."""
    base = tmp_path_factory.mktemp("job")
    n_train = len(list((sn6_jpg / "train").glob("*.jpg")))
    _job_tree(base, sn6_jpg, {**TINY_HP, "num_training_samples": str(n_train)})
    t0 = time.monotonic()
    proc = docker("run", "--rm", "--network", "host", "-v", f"{base}:/opt/ml", training_image, check=False)
    return {"base": base, "proc": proc, "seconds": time.monotonic() - t0}


def test_image_metadata_and_contents(training_image: str) -> None:
    cfg = inspect(training_image)["Config"]
    labels = cfg["Labels"]
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    for key in ("source", "revision", "version", "title"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert "8080/tcp" in cfg["ExposedPorts"]
    assert cfg["Entrypoint"] == ["entrypoint"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert not [k for k in env if k.startswith("AWS_") or "PROXY" in k.upper() or k.startswith("PIP_")]
    out = docker(
        "run", "--rm", training_image, "sh", "-c",
        ". /etc/os-release; echo $VERSION_CODENAME; command -v train; command -v serve; python3 --version; "
        "for c in gcc cc pip; do command -v $c || true; done",
    ).stdout.split()  # fmt: skip
    assert out[:3] == ["bookworm", "/opt/earthmon/bin/train", "/opt/earthmon/bin/serve"]
    assert out[3] == "Python" and out[4].startswith("3.11.") and len(out) == 5  # no compiler, no pip
    pins = ("mxnet", "gluoncv", "numpy", "sagemaker_training", "opencv-python-headless")
    versions = docker(
        "run", "--rm", training_image, "python", "-c",
        f"import importlib.metadata as m, mxnet, gluoncv, cv2, sagemaker_training; print(*(m.version(p) for p in {pins!r}))",
    ).stdout.split()  # fmt: skip
    lock = dict(
        line.split("==") for line in (REPO / "requirements/trainer.txt").read_text().split() if "==" in line
    )
    assert versions == [lock[p] for p in pins]


def test_train_writes_the_model_and_builtin_metric_lines(trained: dict) -> None:
    proc, base = trained["proc"], trained["base"]
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-4000:]
    model = base / "model"
    names = {p.name for p in model.iterdir()}
    assert {"hyperparams.json", "model_algo-1"} <= names, names  # the built-in's artifact
    assert any(n.endswith(".onnx") for n in names), names
    assert not (base / "output" / "failure").exists()
    for line in ("train loss", "validation mIOU", "validation pixel_accuracy"):
        assert f"#quality_metric. host: algo-1, epoch: 1, {line}: " in logs, line
    assert list((base / "checkpoints").iterdir())  # checkpoints every epoch (spot restarts resume)


@pytest.mark.parametrize(
    ("hp_update", "expected"),
    [({"learning_rat": "0.1"}, "learning_rat"), ({"num_classes": "1"}, "num_classes")],
)
def test_a_bad_hyperparameter_writes_the_failure_file(
    training_image: str, sn6_jpg: Path, tmp_path: Path, hp_update: dict, expected: str
) -> None:
    base = _job_tree(tmp_path / "job", sn6_jpg, {**TINY_HP, "num_training_samples": "8", **hp_update})
    proc = docker(
        "run", "--rm", "--network", "host", "-v", f"{base}:/opt/ml", training_image, "train", check=False
    )
    assert proc.returncode != 0
    failure = (base / "output" / "failure").read_text()
    assert expected in failure and len(failure.encode()) <= 1024


# ----------------------------------------------------------------------------------------------- serve


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return height, width


@pytest.fixture(scope="module")
def server(training_image: str, trained: dict):
    assert trained["proc"].returncode == 0, "training failed: see test_train_writes_the_model..."
    port = free_port()
    name = f"earthmon-serve-test-{port}"
    docker(
        "run", "-d", "--name", name, "--network", "host", "-e", f"SAGEMAKER_BIND_TO_PORT={port}",
        "-e", "SAGEMAKER_MODEL_SERVER_WORKERS=1", "-v", f"{trained['base'] / 'model'}:/opt/ml/model:ro",
        training_image, "serve",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", timeout=240)
        yield {"url": url, "name": name}
    finally:
        logs = docker("logs", name, check=False)
        print(logs.stdout[-3000:], logs.stderr[-3000:])
        docker("rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def inputs(sn6_jpg: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One validation image in every request format (PNG, GeoTIFF and npy written by GDAL/numpy here)."""
    import rasterio
    from rasterio.transform import from_origin

    jpg = sorted((sn6_jpg / "validation").glob("*.jpg"))[0]
    with rasterio.open(jpg) as src:
        arr = src.read()
    out = tmp_path_factory.mktemp("requests")
    png = out / "x.png"
    with rasterio.open(
        png, "w", driver="PNG", width=arr.shape[2], height=arr.shape[1], count=3, dtype="uint8"
    ) as d:
        d.write(arr)
    tif = out / "x.tif"
    profile = dict(driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=3, dtype="uint8")
    with rasterio.open(
        tif, "w", crs="EPSG:32631", transform=from_origin(594000, 5755000, 0.5, 0.5), **profile
    ) as d:
        d.write(arr)
    npy = io.BytesIO()
    np.save(npy, arr)
    return {
        "shape": arr.shape[1:],
        "image/jpeg": jpg.read_bytes(),
        "image/png": png.read_bytes(),
        "image/tiff": tif.read_bytes(),
        "application/x-npy": npy.getvalue(),
    }


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "image/tiff", "application/x-npy"])
def test_invocations_png_mask_for_each_request_type(server: dict, inputs: dict, content_type: str) -> None:
    status, headers, body = http(
        f"{server['url']}/invocations",
        inputs[content_type],
        {"Content-Type": content_type, "Accept": "image/png"},
    )
    assert status == 200, body[:500]
    assert headers["Content-Type"].startswith("image/png")
    assert _png_size(body) == tuple(inputs["shape"])


def test_invocations_response_types(server: dict, inputs: dict, tmp_path: Path) -> None:
    url, jpg = f"{server['url']}/invocations", inputs["image/jpeg"]
    h, w = inputs["shape"]
    for accept in ("application/x-recordio-protobuf", "application/x-protobuf"):
        status, headers, body = http(url, jpg, {"Content-Type": "image/jpeg", "Accept": accept})
        assert status == 200 and headers["Content-Type"].startswith(accept)
        assert struct.unpack("<I", body[:4])[0] == 0xCED7230A  # RecordIO magic, as the built-in
        assert len(body) > 2 * h * w * 4  # float32 probabilities of 2 classes for every pixel
    status, headers, body = http(url, jpg, {"Content-Type": "image/jpeg", "Accept": "application/json"})
    summary = json.loads(body)
    assert status == 200 and isinstance(summary, dict) and summary
    status, headers, body = http(
        url, inputs["image/tiff"], {"Content-Type": "image/tiff", "Accept": "image/tiff"}
    )
    assert status == 200
    import rasterio

    (tmp_path / "mask.tif").write_bytes(body)
    with rasterio.open(tmp_path / "mask.tif") as mask, rasterio.io.MemoryFile(inputs["image/tiff"]) as mf:
        with mf.open() as src:
            assert (mask.crs, mask.transform, mask.shape) == (src.crs, src.transform, src.shape)
        assert set(np.unique(mask.read(1))) <= {0, 1}


def test_invocations_errors_and_execution_parameters(server: dict, inputs: dict) -> None:
    url = f"{server['url']}/invocations"
    assert http(url, b"hello", {"Content-Type": "text/plain"})[0] == 415
    assert http(url, b"\xff\xd8\xff\xe0 not a jpeg", {"Content-Type": "image/jpeg"})[0] == 400
    assert http(url, inputs["image/jpeg"], {"Content-Type": "image/jpeg", "Accept": "text/csv"})[0] == 406
    status, _, body = http(f"{server['url']}/execution-parameters")
    params = json.loads(body)
    assert status == 200 and params["MaxPayloadInMB"] == 6 and params["BatchStrategy"]


def test_serve_answers_through_its_nginx_front(server: dict) -> None:
    """nginx listens on the port (slow clients wait in nginx, not in a worker thread) and answers its own
    refusals as JSON; root by default, as SageMaker runs images."""
    status, headers, _ = http(f"{server['url']}/ping")
    assert status == 200 and headers.get("Server") == "nginx"
    status, headers, body = http(
        f"{server['url']}/invocations", b"\0" * (6 * 1024 * 1024 + 1), {"Content-Type": "application/x-npy"}
    )
    assert status == 413 and headers["Content-Type"].startswith("application/json")
    assert "SAGEMAKER_MAX_PAYLOAD_IN_MB" in json.loads(body)["error"]
    top = docker("exec", server["name"], "sh", "-c", "id -u; cat /proc/[0-9]*/comm").stdout.split()
    assert top[0] == "0" and "nginx" in top[1:], top


def _chown_tree(root: Path, uid: int) -> None:
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, uid)


def test_runs_as_a_non_root_user(training_image: str, sn6_jpg: Path, tmp_path: Path) -> None:
    """`docker run --user 1000:1000 IMAGE train` on a writable /opt/ml, then `... serve` of its model."""
    assert inspect(training_image)["Config"].get("User", "") in ("", "root", "0")  # root by default
    base = _job_tree(tmp_path / "job", sn6_jpg, {**TINY_HP, "num_training_samples": "8"})
    _chown_tree(base, 1000)
    proc = docker(
        "run", "--rm", "--user", "1000:1000", "--network", "host", "-v", f"{base}:/opt/ml", training_image,
        "train", check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (base / "model" / "model_algo-1").exists()
    port = free_port()
    name = f"earthmon-serve-user-test-{port}"
    docker(
        "run", "-d", "--name", name, "--user", "1000:1000", "--network", "host",
        "-e", f"SAGEMAKER_BIND_TO_PORT={port}", "-e", "SAGEMAKER_MODEL_SERVER_WORKERS=1",
        "-v", f"{base / 'model'}:/opt/ml/model:ro", training_image, "serve",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/ping", timeout=240)
        jpg = sorted((sn6_jpg / "validation").glob("*.jpg"))[0].read_bytes()
        status, headers, body = http(f"{url}/invocations", jpg, {"Content-Type": "image/jpeg"})
        assert status == 200 and headers.get("Server") == "nginx", body[:300]
        uids = docker("exec", name, "sh", "-c", "stat -c %u /proc/[0-9]* | sort -u").stdout.split()
        assert uids == ["1000"], uids  # nginx, gunicorn and the workers all run as that user
        docker("stop", "--time", "30", name)
        state = json.loads(docker("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, docker("logs", name, check=False).stderr[-3000:]
    finally:
        logs = docker("logs", name, check=False)
        print(logs.stdout[-2000:], logs.stderr[-2000:])
        docker("rm", "-f", name, check=False)


def test_serve_stops_gracefully_on_sigterm(server: dict) -> None:
    """`docker stop` sends SIGTERM (SageMaker too, SIGKILL 30 s later): the server must exit by itself."""
    t0 = time.monotonic()
    docker("stop", "--time", "30", server["name"])
    assert time.monotonic() - t0 < 28
    state = json.loads(docker("inspect", server["name"]).stdout)[0]["State"]
    assert state["ExitCode"] == 0 and not state["OOMKilled"]


@pytest.mark.gpu_image
def test_gpu_flavour_links_everything_but_the_driver() -> None:
    """The GPU flavour (built on request: make build-training TRAINER_FLAVOUR=gpu) cannot run without a GPU
    here, but every library libmxnet.so needs must resolve inside the image except the driver's libcuda.so.1,
    which the NVIDIA container runtime mounts from the host."""
    image = os.environ.get("EARTHMON_TRAINING_GPU_IMAGE", "earthmon-training:dev-gpu")
    if os.environ.get("EARTHMON_SKIP_GPU_BUILD") == "1":
        pytest.skip("EARTHMON_SKIP_GPU_BUILD=1")
    built = docker("image", "inspect", image, check=False).returncode == 0
    require(built, f"{image} is not built (make build-training TRAINER_FLAVOUR=gpu)")
    assert inspect(image)["Config"]["Labels"]["io.earthmon.flavour"] == "gpu"
    out = docker(
        "run", "--rm", image, "sh", "-c",
        "ldd /opt/earthmon/lib/python3.11/site-packages/mxnet/libmxnet.so; "
        "python -c 'import importlib.metadata as m; print(m.version(\"mxnet-cu112\"))'",
    ).stdout  # fmt: skip
    missing = sorted({line.split()[0] for line in out.splitlines() if "not found" in line})
    assert missing == ["libcuda.so.1"], out
    for lib in ("libcudnn.so.8", "libcublas.so.11", "libnccl.so.2", "libcudart.so.11.0", "libnvrtc.so.11.2"):
        assert f"{lib} => /opt/earthmon/lib/python3.11/site-packages/nvidia/" in out, lib
    assert out.strip().splitlines()[-1] == "1.9.1"


USER_SCRIPT = """
import json, os, sys
import gluoncv, mxnet, rasterio, segmentation_trainer.contract  # the image's stack, importable by a user's script
report = {"argv": sys.argv[1:], "hps": json.loads(os.environ["SM_HPS"]), "train": os.environ["SM_CHANNEL_TRAIN"],
          "model_dir": os.environ["SM_MODEL_DIR"], "mxnet": mxnet.__version__}
with open(os.path.join(os.environ["SM_MODEL_DIR"], "report.json"), "w") as f:
    json.dump(report, f)
if os.environ.get("SM_HP_FAIL") == "yes":
    print("ValueError: this script was asked to fail", file=sys.stderr)
    sys.exit(3)
"""


@pytest.mark.parametrize("fail", [False, True], ids=["succeeds", "fails"])
def test_user_script_from_the_code_channel(training_image: str, tmp_path: Path, fail: bool) -> None:
    """Script mode: sagemaker_program names a script delivered in the code channel; the toolkit runs it with the
    SM_* variables and the hyperparameters as arguments; its exit code is the job's, its failure in output/failure."""
    base = tmp_path / "job"
    config = base / "input" / "config"
    config.mkdir(parents=True)
    hps = {"sagemaker_program": "train.py", "epochs": "2", **({"fail": "yes"} if fail else {})}
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    (config / "inputdataconfig.json").write_text(
        json.dumps({c: {"TrainingInputMode": "File"} for c in ("train", "code")})
    )
    (base / "input" / "data" / "train").mkdir(parents=True)
    (base / "input" / "data" / "train" / "tile.txt").write_text("x")
    (base / "input" / "data" / "code").mkdir(parents=True)
    (base / "input" / "data" / "code" / "train.py").write_text(USER_SCRIPT)
    for sub in ("model", "output"):
        (base / sub).mkdir()
    proc = docker("run", "--rm", "-v", f"{base}:/opt/ml", training_image, "train", check=False)
    logs = proc.stdout + proc.stderr
    report = json.loads((base / "model" / "report.json").read_text())
    expected_args = ["--epochs", "2"] + (["--fail", "yes"] if fail else [])
    assert report["argv"] == expected_args and report["hps"]["epochs"] == 2, report
    assert report["train"] == "/opt/ml/input/data/train" and report["model_dir"] == "/opt/ml/model"
    if fail:
        assert proc.returncode == 3, logs[-3000:]
        failure = (base / "output" / "failure").read_text()
        assert "ExitCode 3" in failure and "this script was asked to fail" in failure
    else:
        assert proc.returncode == 0, logs[-3000:]
        assert (base / "output" / "success").exists() and not (base / "output" / "failure").exists()


def test_a_hostile_program_name_is_one_line(training_image: str, tmp_path: Path) -> None:
    base = tmp_path / "job"
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({"sagemaker_program": "../../etc/passwd"}))
    (base / "output").mkdir()
    proc = docker("run", "--rm", "-v", f"{base}:/opt/ml", training_image, "train", check=False)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-2000:]
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith("ClientError: sagemaker_program=") and "\n" not in failure


def test_only_the_trainers_commands_are_installed(training_image: str) -> None:
    out = docker("run", "--rm", training_image, "sh", "-c", "ls /opt/earthmon/bin").stdout.split()
    assert {"train", "serve", "segmentation-trainer", "entrypoint", "nginx"} <= set(out)
    assert not {"launcher", "ndvi-worker"} & set(out)
    mods = docker(
        "run", "--rm", training_image, "python", "-c",
        "import importlib.util as u; print(*(u.find_spec(m) is not None for m in ('launcher', 'ndvi_worker', 'rich', 'onnxruntime')))",
    ).stdout.split()  # fmt: skip
    # other images' packages and unused ones absent; ONNX Runtime present: serving imports it (EARTHMON_SERVE_ENGINE)
    assert mods == ["False", "False", "False", "True"]
