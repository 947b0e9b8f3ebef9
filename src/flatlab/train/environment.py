"""The package versions a run or a study ran with, recorded beside its results.

A number reproduces to the digit only with the same kernels and the same input bytes: torch computes,
numpy feeds the data pipeline, pillow decodes the JPEG images, pyyaml reads the config, matplotlib and
tqdm draw the figures and the progress. `requirements/studies.lock` pins these (and what they depend
on) to the versions the studies run with; `make studies-env` installs exactly that.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["STUDY_PACKAGES", "package_versions"]

# distribution names, as pip and requirements/studies.lock spell them
STUDY_PACKAGES = ("torch", "numpy", "pillow", "pyyaml", "matplotlib", "tqdm")


def package_versions(names: tuple[str, ...] = STUDY_PACKAGES) -> dict[str, str | None]:
    """The installed version of each distribution in `names`, None for one not installed.

    Example:
        ```python
        >>> versions = package_versions(("numpy", "no-such-package"))
        >>> versions["no-such-package"] is None and isinstance(versions["numpy"], str)
        True

        ```
    """
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
