"""Every ```python block of the README and the guides runs as written, so they cannot drift from the code.

A block is self-contained (its own imports and data). HTML comments above it (blank lines may
come between, text may not) say how to run it:

- ``<!-- skip: REASON -->``: not run (pytest.skip with REASON), e.g. a fragment or a CUDA-only block;
- ``<!-- requires: lightning, peft -->``: skipped unless those packages import;
- ``<!-- torchrun: N -->``: run under ``torchrun --standalone --nproc_per_node=N`` (gloo on CPU).

The others run in this process, in a fresh namespace and a temporary working directory; their
tracebacks point at the guide's own line numbers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# the README and every hand-written page of the site (the generated pages: test_site.py)
GUIDES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts)]
TORCHRUN_TIMEOUT_S = 120

_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*(skip|requires|torchrun)\s*:\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    path: Path
    line: int  # line of the block's first code line, 1-based
    code: str
    section: str
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}:{re.sub(r'[^a-z0-9]+', '-', self.section.lower()).strip('-')}"

    def source(self) -> str:
        """The code, shifted so that its line numbers are the guide's."""
        return "\n" * (self.line - 1) + self.code


def code_blocks(text: str, path: Path) -> list[Block]:
    """The ```python blocks of a markdown text, each with the markers on the lines just above it."""
    lines = text.splitlines()
    blocks, section, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        fence = _FENCE.match(line)
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"{path.name}:{i + 1}: unclosed code block")
        if fence.group(1) == "python":
            markers, k = {}, i - 1
            while k >= 0 and (not lines[k].strip() or (m := _MARKER.match(lines[k].strip()))):
                if lines[k].strip():
                    markers.setdefault(m.group(1), m.group(2))
                k -= 1
            blocks.append(Block(path, i + 2, "\n".join(lines[i + 1:end]) + "\n", section, markers))
        i = end + 1
    return blocks


def _all_blocks() -> list[Block]:
    return [b for guide in GUIDES for b in code_blocks(guide.read_text(encoding="utf-8"), guide)]


BLOCKS = _all_blocks()


# gloo's teardown at interpreter exit aborts now and then after the work is done (a pure-torch
# FSDP2 script: 1 run in 30 on this machine, more under load; torch's, not flatlab's): such a run
# is retried once, any other failure is not
GLOO_EXIT_ABORT = "terminate called without an active exception"


def _run_under_torchrun(block: Block, nproc: int, tmp_path: Path) -> None:
    script = tmp_path / f"{block.path.stem}_{block.line}.py"
    script.write_text(block.source(), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for _attempt in (1, 2):
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)],
            capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S, env=env, cwd=tmp_path,
        )
        if done.returncode == 0 or GLOO_EXIT_ABORT not in done.stderr:
            break
    assert done.returncode == 0, f"{block.id} failed under torchrun:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_code_block_runs(block: Block, tmp_path, monkeypatch):
    if "skip" in block.markers:
        pytest.skip(block.markers["skip"])
    for package in filter(None, (p.strip() for p in block.markers.get("requires", "").split(","))):
        pytest.importorskip(package)
    monkeypatch.chdir(tmp_path)
    if "torchrun" in block.markers:
        if not __import__("torch").distributed.is_available():
            pytest.skip("torch.distributed is not built")
        _run_under_torchrun(block, int(block.markers["torchrun"]), tmp_path)
        return
    exec(compile(block.source(), str(block.path), "exec"), {"__name__": "__main__"})


def test_every_guide_has_runnable_blocks():
    for guide in (ROOT / "README.md", ROOT / "docs" / "stacks.md", ROOT / "docs" / "getting-started.md"):
        assert any(b.path == guide and "skip" not in b.markers for b in BLOCKS), guide


def test_every_page_of_the_site_is_read():
    read = {p.relative_to(ROOT).as_posix() for p in GUIDES}
    assert {"README.md", "docs/stacks.md", "docs/getting-started.md", "docs/optimizers.md"} <= read


def test_markers_are_read_from_the_lines_above_a_block():
    text = "\n".join([
        "# Title", "", "```bash", "echo not python", "```", "",
        "## Distributed", "<!-- requires: lightning, peft -->", "<!-- torchrun: 2 -->", "```python", "a = 1", "```",
        "<!-- skip: needs a CUDA device -->", "", "```python", "b = 2", "c = 3", "```",
        "<!-- skip: not this one -->", "text between", "```python", "d = 4", "```",
    ])
    first, second, third = code_blocks(text, Path("guide.md"))
    assert (first.line, first.code, first.section) == (11, "a = 1\n", "Distributed")
    assert first.markers == {"requires": "lightning, peft", "torchrun": "2"}
    assert first.source().splitlines()[10] == "a = 1"
    assert second.markers == {"skip": "needs a CUDA device"} and second.code == "b = 2\nc = 3\n"
    assert third.markers == {}  # text between a marker and a block ends the markers
    assert first.id == "guide.md:11:distributed"
