"""The CLI surface: --help everywhere, and an instant start (no heavy imports before a command runs)."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from launcher.cli import cli

NDVI_COMMANDS = ["search", "plan", "submit", "status", "watch", "resume", "local"]


def test_every_command_has_help() -> None:
    top = CliRunner().invoke(cli, ["--help"])
    assert top.exit_code == 0
    for name in NDVI_COMMANDS:
        assert name in top.output
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, name
        assert "--plan" in result.output or "--out" in result.output


def test_help_imports_no_heavy_module() -> None:
    code = (
        "import sys\n"
        "from launcher.cli import cli\n"
        "try:\n"
        "    cli(['--help'], prog_name='launcher')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('boto3', 'botocore', 'sagemaker', 'pystac_client', 'numpy', 'rasterio')\n"
        "print('HEAVY=' + ','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY=\n" in out or out.rstrip().endswith("HEAVY="), out


def test_python_dash_m_launcher() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "launcher", "--help"], capture_output=True, text=True, check=True
    )
    assert "Usage: launcher" in out.stdout
