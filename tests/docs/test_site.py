"""The documentation site: its generated pages cover every method, command and public name, their
examples run, and (where the site's tools are installed) it builds with --strict into pages that a
reader can search and that show the API."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import flatlab

ROOT = Path(__file__).resolve().parents[2]


def _load_hook():
    spec = importlib.util.spec_from_file_location("flatlab_docs_pages", ROOT / "docs" / "hooks" / "pages.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as mkdocs loads it: dataclasses look their module up
    spec.loader.exec_module(module)
    return module


pages = _load_hook()


def _nav_pages(nav) -> list[str]:
    found = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        found += _nav_pages(value) if isinstance(value, list) else [value]
    return found


NAV = _nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])


def test_every_registered_method_has_a_page_and_only_those():
    registered = set(flatlab.list_optimizers()) - pages.NOT_A_METHOD
    assert set(pages.METHODS) == registered


def test_every_page_is_in_the_navigation():
    hand_written = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")
                    if "hooks" not in p.parts}
    assert set(NAV) == hand_written | set(pages.generated_pages())


@pytest.mark.parametrize("name", sorted(pages.METHODS))
def test_method_page_example_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(pages.METHODS[name].example, f"methods/{name}.md", "exec"), {"__name__": "__main__"})


@pytest.mark.parametrize("name", sorted(pages.METHODS))
def test_method_page_states_the_registry_defaults(name):
    """The arguments a page lists, with their defaults, build the optimizer the registry builds."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))  # SAM-ON needs a norm layer
    options = pages.registry_options(name)
    by_name = flatlab.create_optimizer(name, model, **options)
    cls = pages.method_class(name)
    stated = dict(pages.method_arguments(name))
    if name == "bsam":  # its own base, and the training set's size, which has no default
        base = flatlab.optim.BSAMBase(model.parameters(), lr=0.1)
        built = {**stated, "num_data": options["num_data"]}
    else:
        base, built = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), stated
    by_page = cls(base, **built, model=model)
    assert repr(by_page).split("base=")[0] == repr(by_name).split("base=")[0]  # the policies and their settings
    page = pages.method_page(name)
    for arg, default in stated.items():
        assert f"| `{arg}` | `{default!r}` |" in page
    assert f"--optimizer {name}" in page


def test_sam_sign_is_on_sams_page():
    assert "sam-sign" in pages.method_page("sam")


def test_cli_page_holds_every_command_and_flag():
    from flatlab.cli import build_parser

    page = pages.cli_page()
    commands = pages._subcommands(build_parser())
    assert {"train", "compare", "study", "list", "landscape", "hessian", "gradstats", "robustness"} <= set(commands)
    for name, sub in commands.items():
        assert f"## `flatlab {name}`" in page
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in page, (name, flag)


def test_cli_page_does_not_depend_on_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = pages.cli_page()
    monkeypatch.setenv("COLUMNS", "250")
    assert pages.cli_page() == narrow


def test_repository_links_are_copied_and_rewritten(tmp_path):
    page = ROOT / "docs" / "results.md"
    text = "![fig](../benchmarks/results/cpu-frontier/frontier.png) [runs](../examples/runs/) [x](../nope.png)"
    out = pages._rewrite(text, page, "results.md", ROOT / "docs")
    assert "![fig](repo/benchmarks/results/cpu-frontier/frontier.png)" in out
    assert "runs" in out and "](../examples/runs/)" not in out  # a folder: its text
    assert "[x](../nope.png)" in out  # broken: left for mkdocs to report
    nested = pages._rewrite(text, ROOT / "docs" / "methods" / "x.md", "methods/x.md", ROOT / "docs")
    assert "](../repo/" not in nested  # ../ from methods/ is docs/: not a repository file


# ---- the API reference ------------------------------------------------------------------------------

PUBLIC = ["flatlab", "flatlab.optim", "flatlab.sparse", "flatlab.analysis", "flatlab.errors",
          "flatlab.integrations.lightning", "flatlab.integrations.transformers"]
_DIRECTIVE = re.compile(r"^::: (\S+)\n((?:    .*\n)*)", re.MULTILINE)


def _rendered() -> tuple[set[str], set[str], str]:
    """Objects rendered by `::: path` directives, modules rendered whole, and the pages' text."""
    objects, whole, text = set(), set(), ""
    for page in (ROOT / "docs" / "api").glob("*.md"):
        content = page.read_text(encoding="utf-8")
        text += content
        for path, options in _DIRECTIVE.findall(content):
            objects.add(path)
            if "members: false" not in options:
                whole.add(path)
    return objects, whole, text


@pytest.mark.parametrize("module_name", PUBLIC)
def test_every_public_name_is_on_an_api_page_with_a_docstring(module_name):
    module = pytest.importorskip(module_name) if "integrations" in module_name else importlib.import_module(
        module_name)
    objects, whole, text = _rendered()
    for name in module.__all__:
        obj = getattr(module, name)
        shown = (module_name in whole or f"{module_name}.{name}" in objects
                 or (module_name == "flatlab" and f"[flatlab.optim.{name}]" in text))
        assert shown, f"{module_name}.{name} is on no API page"
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"


# ---- one docstring style ---------------------------------------------------------------------------

_REST = re.compile(r":(class|func|meth|mod|attr|data|exc|obj):`|(?<!`)``(?!`)|::[ \t]*$", re.MULTILINE)


def rest_in_docstrings(source: str) -> list[int]:
    """Lines of docstrings in `source` that use reST (roles, double backticks, `::` blocks)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc and _REST.search(doc):
                found.append(node.body[0].lineno)
    return found


def test_docstrings_are_markdown_not_rest():
    offenders = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        offenders += [f"{rel}:{line}" for line in rest_in_docstrings(path.read_text(encoding="utf-8"))]
    assert not offenders, "reST in docstrings (write `code` and fenced blocks): " + ", ".join(offenders)


def test_the_rest_check_finds_rest():
    assert rest_in_docstrings('def f():\n    """Uses :class:`X`."""\n') == [2]
    assert rest_in_docstrings('"""Example::\n\n    f()\n"""\n') == [1]
    assert rest_in_docstrings('def f():\n    """Uses `X`:\n\n    ```python\n    f()\n    ```\n    """\n') == []


# ---- the built site ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="the site's tools: pip install -e '.[docs]' (make docs)")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the site's tools: make docs")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_site_builds_with_api_search_and_highlighting(site):
    optim = (site / "api" / "optim" / "index.html").read_text(encoding="utf-8")
    assert 'id="flatlab.optim.SharpnessAware"' in optim
    assert "sync_first_pass" in optim and "skip_nonfinite" in optim  # the signature and its arguments
    assert "SharpnessAware" in (site / "search" / "search_index.json").read_text(encoding="utf-8")
    start = (site / "getting-started" / "index.html").read_text(encoding="utf-8")
    assert 'class="highlight"' in start and '<span class="kn">import</span>' in start
    sam = (site / "methods" / "sam" / "index.html").read_text(encoding="utf-8")
    assert 'href="../../api/optim/#flatlab.optim.SAM"' in sam
    assert (site / "repo" / "benchmarks" / "results" / "cpu-frontier-8" / "frontier.png").is_file()
    assert "fonts.googleapis" not in start  # nothing is fetched from outside when a page is read


def test_cli_help_is_built_from_the_parser(site):
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    assert "--sam-probability" in cli and "flatlab study" in cli
