import json
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from flatlab.train import train
from flatlab.train.environment import STUDY_PACKAGES, package_versions

ROOT = Path(__file__).parents[2]
LOCK = ROOT / "requirements" / "studies.lock"


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line.strip())
            assert match, f"not an exact pin: {line!r}"
            assert canonicalize_name(match[1]) not in pins, f"pinned twice: {line!r}"
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_package_versions_are_the_installed_ones():
    versions = package_versions(("numpy", "pillow", "not-a-package-here"))
    assert versions == {"numpy": metadata.version("numpy"), "pillow": metadata.version("pillow"),
                        "not-a-package-here": None}
    assert set(package_versions()) == set(STUDY_PACKAGES)


def test_a_run_records_the_package_versions(quick):
    result = train(quick(epochs=1), log=lambda _: None, progress=False)
    meta = json.loads((Path(result.run_dir) / "config.json").read_text())
    assert meta["packages"]["numpy"] == metadata.version("numpy")
    assert meta["packages"]["torch"] == metadata.version("torch")


def test_the_lock_pins_every_study_package_and_the_makefiles_cpu_torch():
    pins = _pins()
    assert {canonicalize_name(name) for name in STUDY_PACKAGES} <= set(pins)
    torch_spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)[1]
    assert pins["torch"] == f"{torch_spec}+cpu"


def test_the_lock_holds_what_its_packages_depend_on():
    # installed with --no-deps: a dependency missing from the lock would be missing from the venv. Checked on
    # the packages installed here at their locked version (their metadata says what they need).
    pins = _pins()
    checked = 0
    for name, pinned in pins.items():
        try:
            if metadata.version(name) != pinned:
                continue
        except metadata.PackageNotFoundError:
            continue
        checked += 1
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                assert canonicalize_name(requirement.name) in pins, f"{name} needs {requirement.name}"
    if not checked:
        pytest.skip("no package of the lock is installed at its locked version")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_studies_env_installs_exactly_the_lock_and_only_when_asked(tmp_path):
    def commands(*targets):
        return subprocess.run(["make", "-n", "-B", *targets, f"VENV={tmp_path}/venv"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout

    install = [line for line in commands("studies-env").splitlines() if "studies.lock" in line]
    assert len(install) == 1 and "--no-deps" in install[0] and "-r requirements/studies.lock" in install[0]
    assert "studies.lock" not in commands("demo", "test", "lint")
