"""The launcher's shape stays what a newcomer can see: no import cycle, the CLI on top, each contract once."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "launcher"


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports (at module level or inside functions)."""
    modules = _modules(package)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles (strongly connected components of more than one module, or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    graph = import_graph()
    assert "launcher.ndvi.plan" in graph and "launcher.model.requests" in graph  # the walk sees the packages
    assert cycles(graph) == []


@pytest.mark.parametrize("package", ["ndvi_worker", "segmentation_trainer"])
def test_no_import_cycle_in_the_image_packages(package):
    graph = import_graph(ROOT / package)
    assert f"{package}.contract" in graph  # the walk sees the package
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_layers_only_the_cli_imports_the_cli_and_the_workflows_are_apart():
    """cli -> ndvi | model -> aws, http, secrets, errors: nothing below the CLI imports it, neither workflow the other."""
    graph = import_graph()
    for module, imported in graph.items():
        if not module.startswith(("launcher.cli", "launcher.__main__")):
            assert not any(i.startswith("launcher.cli") for i in imported), module
        if module.startswith("launcher.ndvi"):
            assert not any(i.startswith("launcher.model") for i in imported), module
        if module.startswith("launcher.model"):
            assert not any(i.startswith("launcher.ndvi") for i in imported), module
    shared = ("launcher.aws", "launcher.errors", "launcher.http", "launcher.secrets")
    for module in shared:
        assert all(i in shared for i in graph[module]), module


def test_one_definition_of_each_rule():
    """Each rule of the shared edge is written once (grep over the package)."""
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}

    def defined_in(pattern: str) -> list[str]:
        return sorted(
            str(p.relative_to(ROOT)) for p, text in sources.items() if re.search(pattern, text, re.M)
        )

    assert defined_in(r"^class RequestError\b") == ["launcher/errors.py"]
    assert defined_in(r"^class \w*Error\b") == ["launcher/errors.py"]
    assert defined_in(r"AWS_ENDPOINT_URL_S3") == ["launcher/aws.py"]
    assert defined_in(r"LocalSession\(") == ["launcher/sdk_local.py"]
    assert defined_in(r"re\.compile\(r\"\^?\[a-zA-Z0-9\]\(-\*\[a-zA-Z0-9\]\)\{0,62\}") == [
        "launcher/aws.py"
    ]  # the job-name pattern
    assert defined_in(r"arn:aws\[") == ["launcher/aws.py"]  # the role-ARN pattern
    assert defined_in(r"^def _?(friendly|one_line|aws_hint|pairs|with_options|_?console)\b") == [
        "launcher/cli/console.py"
    ]
    assert defined_in(r'"/opt/ml') == []  # the layouts come from the contract modules


def test_launcher_help_imports_no_heavy_module():
    code = (
        "import sys, launcher.cli; "
        "print(sorted(m for m in ('boto3', 'sagemaker', 'rasterio', 'numpy', 'requests', 'mxnet') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_training_contract_imports_without_mxnet_or_numpy():
    code = "import sys, segmentation_trainer.contract; print(sorted(m for m in ('mxnet', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
