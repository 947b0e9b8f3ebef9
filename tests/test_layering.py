"""Imports point down: every flatlab module imports only its own layer and the layers below it.

Layers, bottom to top (``/work/shared/STYLE.md``, docs/development.md "Layout of the package"):

0. ``errors``, ``fileio``, ``progress``: plumbing with no flatlab imports of its own
1. ``models``, ``data``
2. ``optim`` (and the top-level ``flatlab`` package, which re-exports the optimizers)
3. ``sparse``
4. ``analysis``
5. ``train``
6. ``cli``, ``integrations`` (adapters for other frameworks, which import them)

An import inside a function that names a flatlab module is also an error: it is how a cycle (an
import pointing up) gets hidden. Optional third-party packages (matplotlib, yaml, PIL) may still be
imported lazily.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "flatlab"

LAYERS = {
    "errors": 0, "fileio": 0, "progress": 0,
    "models": 1, "data": 1,
    "optim": 2, "": 2,  # "": the package root, flatlab/__init__.py (the optimizers' facade)
    "sparse": 3,
    "analysis": 4,
    "train": 5,
    "cli": 6,
    "integrations": 6,
}  # fmt: skip


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer_of(module: str) -> tuple[str, int]:
    """``flatlab.sparse.masking`` -> ("sparse", 3); the top-level name decides."""
    parts = module.split(".")
    assert parts[0] == "flatlab", module
    top = parts[1] if len(parts) > 1 else ""
    if top not in LAYERS:
        raise AssertionError(f"flatlab.{top} is in no layer: add it to LAYERS (and to docs/development.md)")
    return top, LAYERS[top]


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The flatlab modules an import statement loads (``from .x import y`` may load ``.x.y``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "flatlab"]
    if node.level == 0:
        base = node.module or ""
        if base.split(".")[0] != "flatlab":
            return []
    else:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    # ``from .. import x`` names either a module or a name of the package; either way, when the
    # package is the root, the submodule decides the layer when there is one
    if base == "flatlab":
        return [f"flatlab.{a.name}" if f"flatlab.{a.name}".split(".")[1] in LAYERS else "flatlab" for a in node.names]
    return [base]


def _imports():
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nested = {id(n) for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, module, path.name == "__init__.py"):
                    yield path, node.lineno, module, target, id(node) in nested


def test_the_layer_table_knows_every_top_level_module():
    tops = {p.stem if p.suffix == ".py" else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert tops <= set(LAYERS), f"modules in no layer: {sorted(tops - set(LAYERS))}"


def test_imports_point_down():
    upward = []
    for path, line, module, target, _ in _imports():
        (own, low), (other, high) = _layer_of(module), _layer_of(target)
        if high > low:
            upward.append(f"{path.relative_to(SRC)}:{line}: {module} ({own or 'flatlab'}, layer {low}) imports "
                          f"{target} ({other or 'flatlab'}, layer {high})")
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_flatlab_import_inside_a_function():
    hidden = [f"{path.relative_to(SRC)}:{line}: {module} imports {target} inside a function"
              for path, line, module, target, nested in _imports() if nested]
    assert not hidden, "function-level imports of flatlab modules (move the module level or down a layer):\n" + (
        "\n".join(hidden))


def test_no_private_name_imported_from_another_module():
    """A name with a leading underscore is its module's own: what another module needs is public
    there (or moves down to where both see it)."""
    private = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and _targets(node, module, path.name == "__init__.py"):
                private += [f"{path.relative_to(SRC)}:{node.lineno}: {a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert not private, "private names imported across flatlab modules:\n" + "\n".join(private)


@pytest.mark.parametrize("statement", ["import flatlab", "import flatlab; import flatlab.optim"])
def test_import_flatlab_stays_light(statement):
    code = (f"import sys; {statement}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib' "
            "or m.startswith(('flatlab.analysis', 'flatlab.train', 'flatlab.cli', 'flatlab.sparse', "
            "'flatlab.integrations')) or m in ('transformers', 'accelerate', 'lightning')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env).stdout.strip()
    assert out == "[]", f"`{statement}` loads {out}"
