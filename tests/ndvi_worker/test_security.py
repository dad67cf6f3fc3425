"""Issue 9: safe against hostile and mistaken input. Hostile hrefs and ids through the real worker (rejected,
reported, nothing read or written for them), secrets redacted in every output, the ExitMessage only under the
SageMaker contract, and the pure rules (href allowlist, GDAL path, id rule, redaction) tested directly."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path

import pytest

from earthmon_testing.worker import Canary, free_port
from ndvi_worker.contract import ProcessingPaths
from ndvi_worker.io import SceneError, gdal_path, with_retries
from ndvi_worker.report import SceneRecord, exit_message, host_report, output_item
from ndvi_worker.run import Progress
from ndvi_worker.safety import HrefError, check_href, redact, redact_obj
from ndvi_worker.safety import gdal_path as pure_gdal_path
from ndvi_worker.stac import ItemError, scene_from_item, validate_item_id

# ----------------------------------------------------------------------------------------------- helpers


def scene_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def absolute_item(folder: Path) -> dict:
    """The synthetic scene's item with absolute hrefs (so it can be copied anywhere)."""
    item = json.loads(next(folder.glob("*.json")).read_text())
    for asset in item["assets"].values():
        asset["href"] = str((folder / asset["href"]).resolve())
    return item


def report_of(out: Path) -> dict:
    return json.loads(next((out / "_reports").glob("*.json")).read_text())


def in_a_job(base: Path) -> None:
    (base / "config").mkdir(parents=True, exist_ok=True)
    (base / "config" / "processingjobconfig.json").write_text("{}")


def every_file_bytes(*roots: Path) -> bytes:
    blob = b""
    for root in roots:
        if root.is_file():
            blob += root.read_bytes()
        elif root.exists():
            for p in root.rglob("*"):
                if p.is_file():
                    blob += p.read_bytes()
    return blob


def vrt_reading(path: Path | str, size: int = 64) -> str:
    """VRT XML exposing any file's bytes as a raster (what the finding used to exfiltrate a local file)."""
    return (
        f'<VRTDataset rasterXSize="{size}" rasterYSize="1"><SRS>EPSG:32631</SRS>'
        "<GeoTransform>500000, 10, 0, 5000000, 0, -10</GeoTransform>"
        '<VRTRasterBand dataType="UInt16" band="1" subClass="VRTRawRasterBand">'
        f'<SourceFilename relativetoVRT="0">{path}</SourceFilename>'
        "<ImageOffset>0</ImageOffset><PixelOffset>2</PixelOffset><LineOffset>128</LineOffset>"
        "</VRTRasterBand></VRTDataset>"
    )


# ----------------------------------------------------------------------------------------------- pure rules


@pytest.mark.parametrize(
    ("href", "kind"),
    [
        ("/data/scene/B04.tif", "local"),
        ("/data/scene/B04.TIFF", "local"),
        ("file:///data/scene/B04.tif", "local"),
        ("file://localhost/data/B04.tif", "local"),
        ("https://sentinel-cogs.s3.us-west-2.amazonaws.com/a/B04.tif", "http"),
        ("http://127.0.0.1:8080/a/B04.tif", "http"),
        ("https://user:pw@host.example/a.tif?X-Amz-Signature=abc", "http"),
        ("s3://sentinel-cogs/sentinel-s2-l2a-cogs/29/R/KH/B04.tif", "s3"),
    ],
)
def test_accepted_hrefs(href, kind):
    assert check_href(href) == kind


@pytest.mark.parametrize(
    ("href", "why"),
    [
        ('<VRTDataset rasterXSize="1"></VRTDataset>', "inline XML"),
        ("/data/x/<VRTDataset>.tif", "inline XML"),
        ("/vsicurl/http://127.0.0.1:1/a.tif", "virtual file system"),
        ("/VSIS3/bucket/a.tif", "virtual file system"),
        ("/vsimem/a.tif", "virtual file system"),
        (" /vsicurl/http://x/a.tif", "virtual file system"),
        ("/proc/self/environ", "/proc"),
        ("/data/../proc/self/environ.tif", "/proc"),
        ("/sys/kernel/x.tif", "/sys"),
        ("/dev/zero", "/dev"),
        ("//dev/stdin.tif", "/dev"),
        ("file:///proc/self/environ", "/proc"),
        ("file://otherhost/share/a.tif", "another host"),
        ("file:///etc/passwd", "GeoTIFF"),
        ("/data/scene/B04.vrt", "GeoTIFF"),
        ("/data/scene/B04.xml", "GeoTIFF"),
        ("ftp://127.0.0.1/a.tif", "'ftp:'"),
        ("gs://bucket/a.tif", "'gs:'"),
        ("GTIFF_DIR:1:/data/a.tif", "'gtiff_dir:'"),
        ("GTIFF_RAW:/data/a.tif", "'gtiff_raw:'"),
        ("NETCDF:/data/a.nc:band", "'netcdf:'"),
        ("VRT:///data/a.tif?bands=1", "'vrt:'"),
        ("HDF5:/data/a.h5://x", "'hdf5:'"),
        ("/data/a\n.tif", "control"),
        ("/data/a.tif\x00", "control"),
        ("", "empty"),
        ("https:///a.tif", "no host"),
        ("http://[::1/a.tif", "malformed"),
        ("http://169.254.169.254/latest/meta-data/a.tif", "link-local"),
        ("http://[fe80::1]/a.tif", "link-local"),
        ("s3:///key.tif", "bucket"),
        ("s3://bucket", "object key"),
        ("s3://B/a.tif", "bucket"),
        ("relative/B04.tif", "absolute"),
        ("x" * 5000, "longer"),
    ],
)
def test_rejected_hrefs(href, why):
    with pytest.raises(HrefError, match=why if why.startswith("'") else f"(?i){why}"):
        check_href(href)


def test_gdal_path_is_built_by_the_worker():
    assert pure_gdal_path("https://h.example/a/B04.tif?x=1") == "/vsicurl/https://h.example/a/B04.tif?x=1"
    assert pure_gdal_path("s3://sentinel-cogs/a/B04.tif") == "/vsis3/sentinel-cogs/a/B04.tif"
    assert pure_gdal_path("file:///data/B04.tif") == "/data/B04.tif"
    assert pure_gdal_path("/data/B04.tif") == "/data/B04.tif"
    with pytest.raises(HrefError):
        pure_gdal_path("/vsicurl/https://h/a.tif")


def test_io_edge_checks_the_real_path(tmp_path):
    """A symbolic link named like a GeoTIFF that points into /proc, or a FIFO, is refused at open."""
    link = tmp_path / "B04.tif"
    link.symlink_to("/proc/self/environ")
    with pytest.raises(SceneError, match="/proc"):
        gdal_path(str(link))
    fifo = tmp_path / "fifo.tif"
    os.mkfifo(fifo)
    with pytest.raises(SceneError, match="regular file"):
        gdal_path(str(fifo))


def test_gtiff_driver_only(tmp_path):
    """A .tif that holds VRT XML is not opened as a VRT (GDAL's GTiff driver only)."""
    from ndvi_worker.io import open_raster

    secret = tmp_path / "secret.txt"
    secret.write_text("s" * 200)
    evil = tmp_path / "evil.tif"
    evil.write_text(vrt_reading(secret))
    with pytest.raises(Exception, match="(?i)not recognized|not a TIFF|supported"):
        open_raster(str(evil))


@pytest.mark.parametrize(
    "bad",
    [
        "newline\n",
        "S2B_31UFU_20231204_0_L2A\n",
        "a\r",
        "../../etc/passwd",
        "../x",
        "a/b",
        "a\\b",
        "..",
        "a..b",
        ".hidden",
        "-rf",
        "_x",
        "x" * 201,
        "x" * 10000,
        "",
        "id with spaces",
        "scène",
        "S2B_ＡＢＣ",  # full-width letters
        "a\u200bb",  # zero-width space
        "١٢٣",  # Arabic-Indic digits (str.isdigit, but not [0-9])
        "a\x00b",
        None,
        42,
        ["S2B"],
    ],
)
def test_hostile_item_ids_are_rejected(bad):
    with pytest.raises(ItemError):
        validate_item_id(bad)


@pytest.mark.parametrize("good", ["S2B_31UFU_20231204_0_L2A", "a", "A.b-c_9", "x" * 200])
def test_ordinary_ids_are_accepted(good):
    assert validate_item_id(good) == good


def test_unsafe_id_message_is_one_line():
    with pytest.raises(ItemError) as info:
        validate_item_id("evil\nFAKE LOG LINE")
    assert "\n" not in str(info.value) and "\\x0a" in str(info.value)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("https://alice:hunter2@example.com/a.tif", "hunter2"),
        ("https://alice:hunter2@example.com/a.tif", "alice"),
        ("https://ghp_TOKENVALUE@github.com/a.tif", "ghp_TOKENVALUE"),
        ("https://b.s3.amazonaws.com/k.tif?X-Amz-Algorithm=AWS4&X-Amz-Signature=0badc0de", "0badc0de"),
        ("https://h/k.tif?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240101", "AKIAIOSFODNN7EXAMPLE"),
        ("https://h/k.tif?X-Amz-Credential=ZZZCRED%2F20240101%2Fus", "ZZZCRED"),
        ("https://h/k.tif?x=1&X-Amz-Security-Token=IQoJb3JpZ2luX2VjE", "IQoJb3JpZ2luX2VjE"),
        ("https://h/k.tif?Signature=abcDEF123&Expires=1", "abcDEF123"),
        ("https://acct.blob.core.windows.net/c/k.tif?sv=2021&sig=AZURESIG%3D", "AZURESIG"),
        ("https://h/k.tif?token=tok123", "tok123"),
        ("https://h/k.tif?access_token=at456&other=1", "at456"),
        ("https://h/k.tif?api_key=k789", "k789"),
        ("https://h/k.tif?key=googlekey", "googlekey"),
        ("cannot open https://h/k.tif?Token=T0K: HTTP 403", "T0K"),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI"),
        ("GDAL_HTTP_USERPWD=user:pass", "user:pass"),
        ('{"aws_session_token": "FwoGZXIvYXdz"}', "FwoGZXIvYXdz"),
        ("Authorization: Bearer eyJhbGciOi", "eyJhbGciOi"),
        ("key id AKIAIOSFODNN7EXAMPLE in a message", "AKIAIOSFODNN7EXAMPLE"),
        ("tcp://user:schedpw@10.0.0.5:8786", "schedpw"),
    ],
)
def test_redact(text, secret):
    out = redact(text)
    assert secret not in out and "***" in out


def test_redact_keeps_ordinary_text():
    for text in (
        "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/29/R/KH/B04.tif",
        "S2A_29RKH_20200219_0_L2A: CRS mismatch: red is EPSG:32629, nir is EPSG:32632",
        "s3://bucket/a/b.tif",
        "HTTP response code: 404",
    ):
        assert redact(text) == text


def test_redact_obj_redacts_values_and_secret_named_keys():
    doc = {
        "links": [{"rel": "self", "href": "https://u:pw1@h/i.json?sig=S1"}],
        "token": "plainvalue",
        "n": 3,
        "nested": {"AWS_SECRET_ACCESS_KEY": "abc", "list": ["https://h/x?X-Amz-Signature=S2"]},
    }
    out = json.dumps(redact_obj(doc))
    for secret in ("pw1", "S1", "plainvalue", "abc", "S2"):
        assert secret not in out
    assert '"n": 3' in out


def test_report_writers_redact():
    secret_url = "https://u:PW@h/a.tif?X-Amz-Signature=SIG9"
    rec = SceneRecord("a.json", "S2A_X", "failed", error=f"cannot open {secret_url}: 403")
    for text in (
        json.dumps(host_report("algo-1", ["algo-1"], "t", [rec], {"scheduler": "tcp://u:PW@h:1"})),
        exit_message([rec], "algo-1"),
    ):
        assert "PW" not in text and "SIG9" not in text
    item = {"type": "Feature", "id": "S2A_X", "properties": {"datetime": "2023-01-01T00:00:00Z"},
            "geometry": None, "links": [{"rel": "self", "href": secret_url}], "assets": {}}  # fmt: skip
    stats = {"valid_fraction": 1.0, "mean": 0.1, "std": 0.1, "minimum": 0, "maximum": 1, "valid_pixels": 1,
             "nodata_fraction": 0, "scl_masked_fraction": 0, "clamped_fraction": 0}  # fmt: skip
    out = output_item(item, "S2A_X", "a.tif", 1, None, "/in/a.json", stats, [0], {}, "int16", "identity",
                      (1, 1), (10, 0, 0, 0, -10, 0), 32631)  # fmt: skip
    text = json.dumps(out)
    assert "PW" not in text and "SIG9" not in text and "derived_from" in text


def test_exit_message_rule(tmp_path):
    paths = ProcessingPaths(tmp_path)
    assert paths.under_contract(explicit_paths=False)  # the contract's default paths
    assert not paths.under_contract(explicit_paths=True)  # --input/--output on a laptop
    in_a_job(tmp_path)
    assert paths.in_processing_job() and paths.under_contract(explicit_paths=True)


def test_progress_has_no_rate_after_an_instant_failure():
    progress = Progress("h", 3)
    line = progress.update(SceneRecord("a", None, "failed", error="bad"), {"done": 0, "skipped": 0, "failed": 1},
                           processed=False)  # fmt: skip
    assert "-- scenes/min" in line and "ETA --:--:--" in line and "before processing" in line
    line = progress.update(
        SceneRecord("b", "B", "failed", seconds=0.0), {"done": 0, "skipped": 0, "failed": 2}
    )
    assert "-- scenes/min" in line  # less than a second elapsed: no rate yet
    progress.start -= 60
    line = progress.update(SceneRecord("c", "C", "done", seconds=1.0), {"done": 1, "skipped": 0, "failed": 2})
    assert " 2.0 scenes/min" in line


def test_a_network_error_is_not_replaced_by_a_cached_does_not_exist():
    calls = []

    def attempt():
        calls.append(1)
        if len(calls) == 1:
            raise OSError("CURL error: Failed to connect to 127.0.0.1 port 1: Could not connect to server")
        raise OSError("'/vsicurl/http://127.0.0.1:1/a.tif' does not exist in the file system")

    with pytest.raises(OSError, match="Could not connect"):
        with_retries(attempt, "open", attempts=3, sleep=lambda s: None)


# ----------------------------------------------------------------------------------------------- fuzzing

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in requirements/dev.txt
    given = None

if given is not None:
    json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
    json_values = st.recursive(
        json_scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=20,
    )
    href_text = st.one_of(
        st.text(max_size=60),
        st.sampled_from(
            [
                "/",
                "./",
                "../",
                "/vsicurl/",
                "http://",
                "https://",
                "s3://",
                "file://",
                "<VRT",
                "GTIFF_DIR:",
                "/proc/",
                "vrt://",
                "ftp://",
                "//",
                "\\",
                "?",
                "#",
                "@",
                ":",
                "[",
                "%00",
            ]
        ).flatmap(  # fmt: skip
            lambda prefix: st.text(max_size=40).map(lambda rest: prefix + rest + ".tif")
        ),
    )
    asset = st.fixed_dictionaries({"href": href_text | json_values})
    items = st.fixed_dictionaries(
        {
            "type": st.just("Feature") | json_values,
            "id": st.text(max_size=30) | json_values | st.just("S2B_31UFU_20231204_0_L2A"),
            "properties": json_values
            | st.dictionaries(
                st.sampled_from(
                    [
                        "datetime",
                        "s2:processing_baseline",
                        "earthsearch:boa_offset_applied",
                        "grid:code",
                        "mgrs:utm_zone",
                        "mgrs:latitude_band",
                        "mgrs:grid_square",
                        "s2:mgrs_tile",
                    ]
                ),
                json_values,
            ),  # fmt: skip
            "assets": st.dictionaries(
                st.sampled_from(["red", "nir", "scl", "B04", "B08", "SCL", "x"]), asset | json_values
            )
            | json_values,
        },
        optional={"stac_version": json_values, "links": json_values, "collection": json_values},
    )

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(item=items | json_values, location=st.none() | st.text(max_size=20) | st.just("/data/a/item.json"))
    def test_item_parser_fuzz(item, location):
        """Arbitrary JSON-like input: an ItemError or a valid Scene, never another exception."""
        try:
            scene = scene_from_item(item, location)  # type: ignore[arg-type]
        except ItemError:
            return
        assert validate_item_id(scene.item_id) == scene.item_id
        for href in (scene.red, scene.nir, scene.scl):
            assert check_href(href) in ("local", "http", "s3")
            assert not href.startswith("/vsi") and "<" not in href

    @settings(max_examples=400, deadline=None)
    @given(red=href_text, nir=href_text, item_id=st.text(max_size=12) | st.just("S2B_31UFU_20231204_0_L2A"))
    def test_item_parser_fuzz_hrefs_and_ids(red, nir, item_id):
        """A well-formed item with fuzzed hrefs and id: rejected with ItemError, or only safe hrefs and id."""
        item = {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "properties": {},
                "assets": {"red": {"href": red}, "nir": {"href": nir}, "scl": {"href": "./SCL.tif"}}}  # fmt: skip
        try:
            scene = scene_from_item(item, "/data/a/item.json")
        except ItemError:
            return
        assert validate_item_id(scene.item_id) == scene.item_id
        for href in (scene.red, scene.nir, scene.scl):
            assert check_href(href) in ("local", "http", "s3")

    @settings(max_examples=300, deadline=None)
    @given(text=st.text(max_size=300), lines=st.booleans())
    def test_document_parser_fuzz(text, lines):
        from ndvi_worker.discover import parse_document

        entries = parse_document(text, "x.json", "/data/x.json", lines)
        assert entries is None or all(e.item is not None or e.error for e in entries)

    @settings(max_examples=300, deadline=None)
    @given(text=st.text(max_size=200))
    def test_redact_and_check_href_never_crash(text):
        redact(text)
        with contextlib.suppress(HrefError):
            check_href(text)


# ----------------------------------------------------------------------------------------------- end to end


def test_hostile_hrefs_are_rejected_by_the_real_worker(synthetic_input, run_worker, tmp_path):
    """Every hostile href: the scene is rejected and reported, the planted secret file's random content and an
    environment secret appear in no output, the canary server gets no request, and the good scenes complete."""
    good = scene_dirs(synthetic_input)
    for extra in good[1:]:
        shutil.rmtree(extra)
    template = absolute_item(good[0])
    secret_value = secrets.token_hex(24)
    secret_file = tmp_path / "planted-secret.txt"
    secret_file.write_text(secret_value * 4)
    env_secret = "ENVSECRET" + secrets.token_hex(12)
    vrt_file = tmp_path / "evil.vrt"
    vrt_file.write_text(vrt_reading(secret_file))
    vrt_as_tif = tmp_path / "evil-vrt.tif"
    vrt_as_tif.write_text(vrt_reading(secret_file))
    environ_link = tmp_path / "environ.tif"
    environ_link.symlink_to("/proc/self/environ")
    hostile_root = synthetic_input / "hostile"
    hostile_root.mkdir()
    with Canary() as canary:
        url = f"http://127.0.0.1:{canary.port}/B04.tif"
        hrefs = {
            "inline-vrt": vrt_reading(secret_file),
            "inline-vrt-canary": vrt_reading(f"/vsicurl/{url}"),
            "vrt-file": str(vrt_file),
            "vrt-xml-in-a-tif": str(vrt_as_tif),
            "vsicurl": f"/vsicurl/{url}",
            "vsicurl-relative": f"./../../vsicurl/{url}",
            "vrt-prefix": f"vrt:///vsicurl/{url}",
            "gtiff-dir": f"GTIFF_DIR:1:/vsicurl/{url}",
            "ftp": f"ftp://127.0.0.1:{canary.port}/B04.tif",
            "proc-environ": "/proc/self/environ",
            "proc-relative": "../../../../../../../../proc/self/environ",
            "environ-symlink": str(environ_link),
            "file-url-proc": "file:///proc/self/environ",
            "file-url-host": f"file://127.0.0.1:{canary.port}/B04.tif",
            "netcdf": f"NETCDF:{secret_file}:x",
            "dev-zero": "/dev/zero",
            "plain-secret-file": str(secret_file),
        }
        for n, (name, href) in enumerate(hrefs.items()):
            item = json.loads(json.dumps(template))
            item["id"] = f"S2B_{n:02d}HOS_20231204_0_L2A"
            item["assets"]["red"]["href"] = href
            (hostile_root / f"{name}.json").write_text(json.dumps(item))
        base = tmp_path / "opt-ml"
        in_a_job(base)
        out = tmp_path / "out"
        proc = run_worker("--input", str(synthetic_input), "--output", str(out), "--dtype", "float32",
                          "--compress", "NONE", "--retries", "1", env={"EARTHMON_TEST_SECRET": env_secret})  # fmt: skip
        time.sleep(0.2)
        assert canary.requests == []
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    report = report_of(out)
    by_source = {s["source"]: s for s in report["scenes"]}
    assert by_source[next(good[0].glob("*.json")).relative_to(synthetic_input).as_posix()]["status"] == "done"
    for name in hrefs:
        rec = by_source[f"hostile/{name}.json"]
        assert rec["status"] == "failed", (name, rec)
        assert "rejected" in rec["error"] or "only GeoTIFF" in rec["error"], (name, rec["error"])
        assert not list(out.glob(f"{rec['item_id']}*")), name
    assert report["summary"] == {"total": len(hrefs) + 1, "done": 1, "skipped": 0, "failed": len(hrefs)}
    everything = every_file_bytes(out, base) + (proc.stdout + proc.stderr).encode()
    assert secret_value.encode() not in everything
    assert env_secret.encode() not in everything
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["_reports", *(f"{good[0].name}_ndvi.{ext}" for ext in ("tif", "png", "json"))]
    )


def test_hostile_ids_through_the_worker(synthetic_input, run_worker, tmp_path):
    template = absolute_item(scene_dirs(synthetic_input)[0])
    for extra in scene_dirs(synthetic_input):
        shutil.rmtree(extra)
    ids = ["newline\n", "../escape", "scène", ".hidden", "x" * 300, "a/b", "..", "S2B_OK_20231204_0_L2A\n"]
    for n, item_id in enumerate(ids):
        item = json.loads(json.dumps(template))
        item["id"] = item_id
        (synthetic_input / f"item-{n}.json").write_text(json.dumps(item))
    out = tmp_path / "nested" / "out"
    proc = run_worker("--input", str(synthetic_input), "--output", str(out))
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    report = report_of(out)
    assert report["summary"]["failed"] == len(ids)
    for rec in report["scenes"]:
        assert rec["item_id"] is None and "unsafe item id" in rec["error"]
    assert sorted(p.name for p in out.iterdir()) == ["_reports"]
    assert sorted(p.name for p in (tmp_path / "nested").iterdir()) == ["out"]  # no escape, no staging left
    # the log never carries a raw newline from an id (no forged log lines)
    assert not [line for line in proc.stdout.splitlines() if line.startswith(("escape", "S2B_OK"))]


def test_secrets_are_redacted_in_every_output(synthetic_input, run_worker, tmp_path):
    """Credentials planted in hrefs, links and the scheduler-free options: none reaches the logs, the report,
    the ExitMessage or the output STAC items."""
    good = scene_dirs(synthetic_input)
    planted = {
        "PASSWORD": "pw" + secrets.token_hex(8),
        "SIGNATURE": "sig" + secrets.token_hex(8),
        "TOKEN": "tok" + secrets.token_hex(8),
        "CREDENTIAL": "AKIA" + secrets.token_hex(8).upper(),
        "AZURE": "az" + secrets.token_hex(8),
        "ACCESS": "at" + secrets.token_hex(8),
    }
    query = (
        f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={planted['CREDENTIAL']}%2F20240101%2Fus-west-2"
        f"&X-Amz-Signature={planted['SIGNATURE']}&X-Amz-Security-Token={planted['TOKEN']}"
    )
    # a good scene whose item links carry signed URLs (copied into the output item as derived_from)
    item = absolute_item(good[0])
    item["links"] = [
        {"rel": "self", "href": f"https://alice:{planted['PASSWORD']}@stac.example/items/x.json?{query}"},
        {"rel": "canonical", "href": f"https://stac.example/x.json?sig={planted['AZURE']}&sv=1"},
    ]
    next(good[0].glob("*.json")).write_text(json.dumps(item))
    # scenes that fail reading signed URLs from a closed port (the errors name the href)
    port = free_port()
    failing = {
        "S2B_01RED_20231204_0_L2A": f"http://alice:{planted['PASSWORD']}@127.0.0.1:{port}/B04.tif?{query}",
        "S2B_02RED_20231204_0_L2A": f"http://127.0.0.1:{port}/B04.tif?sig={planted['AZURE']}&sv=2021",
        "S2B_03RED_20231204_0_L2A": f"http://127.0.0.1:{port}/B04.tif?access_token={planted['ACCESS']}",
        "S2B_04RED_20231204_0_L2A": f"http://127.0.0.1:{port}/B04.jp2?token={planted['TOKEN']}",
    }
    for item_id, href in failing.items():
        bad = absolute_item(good[2])
        bad["id"] = item_id
        bad["assets"]["red"]["href"] = href
        (synthetic_input / f"{item_id}.json").write_text(json.dumps(bad))
    base = tmp_path / "opt-ml"
    in_a_job(base)
    out = tmp_path / "out"
    proc = run_worker("--input", str(synthetic_input), "--output", str(out), "--retries", "2",
                      "--log-level", "DEBUG", env={"GDAL_HTTP_MAX_RETRY": "0"})  # fmt: skip
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 1, logs
    report = report_of(out)
    scenes = {s["item_id"]: s for s in report["scenes"]}
    assert scenes[good[0].name]["status"] == "done"
    for item_id in failing:
        assert scenes[item_id]["status"] == "failed"
    # the network error, not GDAL's cached "does not exist"
    err = scenes["S2B_02RED_20231204_0_L2A"]["error"]
    assert "connect" in err.lower() and "does not exist" not in err, err
    assert "***" in err
    message = (base / "output" / "message").read_text()
    assert "S2B_01RED" in message
    outputs = {
        "logs": logs.encode(),
        "report": every_file_bytes(out / "_reports"),
        "message": message.encode(),
        "output items": every_file_bytes(*out.glob("*_ndvi.json")),
    }
    assert b"derived_from" in outputs["output items"]
    for where, blob in outputs.items():
        for name, secret in planted.items():
            assert secret.encode() not in blob, f"{name} in {where}"


def test_exit_message_only_under_the_contract(synthetic_input, run_worker, tmp_path):
    for extra in scene_dirs(synthetic_input)[1:]:
        shutil.rmtree(extra)
    base = tmp_path / "opt-ml"
    out = tmp_path / "out"
    run_worker("--input", str(synthetic_input), "--output", str(out), base=base, check_code=0)
    assert not (base / "output" / "message").exists()
    assert not (base / "output").exists()
    # the staging folder this run created beside the output is gone
    assert not list(tmp_path.glob(".ndvi-staging-*"))
    in_a_job(base)
    run_worker("--input", str(synthetic_input), "--output", str(out), base=base, check_code=0)
    assert "1 skipped" in (base / "output" / "message").read_text()


# ----------------------------------------------------------------------------------------------- CLI sweep


def _cli_cases(tmp: Path) -> list[tuple[list[str], dict, int, str]]:
    a_file = tmp / "a-file.txt"
    a_file.write_text("x")
    inp = tmp / "in"
    inp.mkdir(exist_ok=True)
    out = tmp / "out"
    return [
        (["--input", str(tmp / "nope")], {}, 2, "is not a folder"),
        (["--input", str(a_file)], {}, 2, "a-file.txt"),
        (["--input", str(inp), "--output", str(a_file)], {}, 2, "a-file.txt"),
        (["--input", str(inp), "--output", str(inp / "out")], {}, 2, "outside --input"),
        (["--input", str(inp), "--output", str(inp)], {}, 2, "outside --input"),
        (
            ["--input", str(inp), "--output", str(out), "--staging-dir", str(out / "s")],
            {},
            2,
            "outside --output",
        ),
        (["--input", str(inp), "--output", "/proc/earthmon/out"], {}, 2, "choose a writable --output"),
        (
            ["--input", str(inp), "--output", str(out), "--staging-dir", "/proc/earthmon"],
            {},
            2,
            "--staging-dir",
        ),
        ([], {"SAGEMAKER_BASE_DIR": "/proc/earthmon"}, 2, "choose a writable --output"),
        (
            ["--input", str(inp), "--output", str(out), "--scheduler", "tcp://127.0.0.1:1"],
            {},
            2,
            "cannot reach",
        ),
        (["--input", str(inp), "--output", str(out), "--scheduler", "nonsense"], {}, 2, "tcp://host:8786"),
        (["--input", str(inp), "--output", str(out), "--scheduler", "tcp://h"], {}, 2, "host and a port"),
        (["--input", str(inp), "--output", str(out), "--scheduler", "http://h:1"], {}, 2, "not a dask"),
        (["--workers", "0"], {}, 2, "--workers"),
        (["--workers", "many"], {}, 2, "--workers"),
        (["--scenes-in-flight", "-1"], {}, 2, "--scenes-in-flight"),
        (["--mask-classes", "8,x"], {}, 2, "comma-separated"),
        (["--mask-classes", "12"], {}, 2, "0 to 11"),
        (["--level", "99", "--input", str(inp)], {}, 2, "level for ZSTD"),
        (["--compress", "DEFLATE", "--level", "0", "--input", str(inp)], {}, 2, "level for DEFLATE"),
        (["--level", "x"], {}, 2, "--level"),
        (["--blocksize", "100", "--input", str(inp)], {}, 2, "blocksize"),
        (["--blocksize", "-512", "--input", str(inp)], {}, 2, "blocksize"),
        (["--chunk-size", "1000", "--input", str(inp)], {}, 2, "chunk_size"),
        (["--chunk-size", "1048576", "--input", str(inp)], {}, 2, "at most"),
        (["--compress", "LERC_ZSTD", "--input", str(inp)], {}, 2, "float32"),
        (["--compress", "JPEG"], {}, 2, "--compress"),
        (["--max-z-error", "-1", "--input", str(inp)], {}, 2, "max_z_error"),
        (["--max-z-error", "nan", "--input", str(inp)], {}, 2, "max_z_error"),
        (["--retries", "0"], {}, 2, "--retries"),
        (["--dtype", "int8"], {}, 2, "--dtype"),
        (["--boa-offset", "maybe"], {}, 2, "--boa-offset"),
        (["--on-error", "explode"], {}, 2, "--on-error"),
        (["--predictor", "7"], {}, 2, "--predictor"),
        (["--log-level", "LOUD"], {}, 2, "--log-level"),
        (["--no-such-option"], {}, 2, "No such option"),
        (["stray-argument"], {}, 2, "unexpected extra argument"),
        (["--input"], {}, 2, "requires an argument"),
        (["--input", str(inp), "--output", str(out)], {}, 0, ""),
    ]


def test_bad_cli_input_sweep(run_worker, tmp_path):
    """Every case: the expected exit status, no traceback, and the error on one line that names the problem."""
    failures = []
    for args, env, code, needle in _cli_cases(tmp_path):
        t0 = time.monotonic()
        proc = run_worker(*args, env=env)
        took = time.monotonic() - t0
        text = proc.stdout + proc.stderr
        error_lines = [line for line in proc.stderr.splitlines() if "rror" in line]
        problems = []
        if proc.returncode != code:
            problems.append(f"exit {proc.returncode}")
        if "Traceback" in text:
            problems.append("traceback")
        if code == 2 and (len(error_lines) != 1 or needle not in error_lines[0]):
            problems.append(f"error lines {error_lines}")
        if took > 20:
            problems.append(f"took {took:.0f}s")
        if problems:
            failures.append((args, env, problems, text[-600:]))
    assert not failures, "\n".join(map(str, failures))
