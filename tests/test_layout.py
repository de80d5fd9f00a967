"""The package layout: imports flow one way, modules stay readable, the xcf 0.1 paths are gone."""

import ast
import importlib
from pathlib import Path

import pytest

import xcf

PACKAGE = Path(xcf.__file__).parent

#: the layers, bottom first: a module may import from its own layer and the ones below, never above
LAYERS = [
    ("xcf._typing", "xcf._validation", "xcf._io", "xcf._version"),
    ("xcf.datasets",),
    ("xcf.models",),
    ("xcf.objectives", "xcf.result"),
    ("xcf.engine",),
    ("xcf.charts",),
    ("xcf.explain", "xcf.extrapolate"),
    ("xcf.evaluate",),
    ("xcf.scale",),
    ("xcf.report",),
    ("xcf.apps",),
]
#: the curated public API and the entry point import from everywhere by design
EXEMPT = {"xcf", "xcf.__main__"}
#: catalogues of one kind of thing may be longer than the line budget
LONG_OK: set[str] = set()
MAX_LINES = 400


def _rank(module: str) -> int:
    for rank, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to docs/architecture.md)")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def _imports(path: Path, name: str):
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                yield node.lineno, f"{base}.{node.module}" if node.module else base
            elif node.module:
                yield node.lineno, node.module


def test_every_module_is_in_a_layer():
    for name, _ in _modules():
        if name not in EXEMPT:
            _rank(name)


def test_imports_never_go_up_a_layer():
    upward = []
    for name, path in _modules():
        if name in EXEMPT:
            continue
        own = _rank(name)
        for line, target in _imports(path, name):
            if target == "xcf":
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports the package root")
            elif target.startswith("xcf.") and _rank(target) > own:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} "
                              f"(layer {_rank(target)} > {own})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The check above can fail: a chart that imports the report is an upward import."""
    path = tmp_path / "chart.py"
    path.write_text("from xcf.report.html import Report\n")
    targets = [t for _, t in _imports(path, "xcf.charts.chart")]
    assert targets == ["xcf.report.html"] and _rank(targets[0]) > _rank("xcf.charts.chart")


def test_modules_stay_readable():
    long = {name: n for name, path in _modules() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= LONG_OK, f"modules over {MAX_LINES} lines: {long}"


def test_search_is_the_function_and_its_module_is_engine():
    import xcf.engine

    assert xcf.search is xcf.engine.search and callable(xcf.search)


@pytest.mark.parametrize("old", ["xcf.validate", "xcf.geometry", "xcf.maps", "xcf.store", "xcf.stream", "xcf.cli"])
def test_the_xcf_0_1_module_paths_are_gone(old):
    """xcf 0.2 announced their removal for 0.3: no import hook answers them any more."""
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_the_console_script_is_the_cli_module():
    import tomllib

    scripts = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["xcf"].partition(":")
    assert callable(getattr(importlib.import_module(module), name)) and module == "xcf.apps.cli"


def test_importing_xcf_leaves_matplotlib_backend_alone():
    import subprocess
    import sys

    code = ("import matplotlib; before = matplotlib.get_backend(); import xcf, xcf.apps.demo, xcf.report.figures; "
            "print(before == matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"MPLBACKEND": "svg", "PATH": ""})
    assert out.stdout.strip() == "True", out.stderr
