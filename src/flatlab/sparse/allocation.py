"""How a global sparsity target is spread over layers: `uniform` or `erk` densities, and the
exact integer number of live weights per layer.

ERK (Erdos-Renyi-Kernel, Evci et al. 2020, "Rigging the Lottery", Sec. 3) gives a layer of shape
`(n_out, n_in, k_h, k_w)` a density proportional to `(n_out + n_in + k_h + k_w) / (n_out * n_in *
k_h * k_w)` (for a linear layer `(n_out + n_in) / (n_out * n_in)`, the Erdos-Renyi rule), scaled
so that the overall density is `1 - sparsity`. A layer whose density would exceed 1 is made
dense and the scale is solved again over the others, as in RigL's reference code: small layers
(the stem, the classifier) end up denser, large 3x3 convolutions sparser.

Counts are integers that add up to exactly `round((1 - sparsity) * N)` (N: all weights that are
masked); each layer gets `floor(density * n)` and the remainder goes to the layers with the
largest fractional parts (largest-remainder rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import UsageError, check_number

__all__ = ["DISTRIBUTIONS", "uniform_densities", "erk_densities", "layer_densities", "layer_counts"]

#: layer-wise allocations; "global" (one budget ranked across layers) is handled by the masking
DISTRIBUTIONS = ("uniform", "erk")

Shape = Sequence[int]


def _check_sparsity(sparsity: float) -> float:
    check_number("sparsity", sparsity, low=0, high=1, high_open=True)
    return float(sparsity)


def uniform_densities(shapes: Sequence[Shape], sparsity: float) -> list[float]:
    """Every layer at density `1 - sparsity`.

    Example:
        ```python
        >>> uniform_densities([(4, 3), (2, 4)], 0.75)
        [0.25, 0.25]

        ```
    """
    density = 1.0 - _check_sparsity(sparsity)
    return [density for _ in shapes]


def erk_densities(shapes: Sequence[Shape], sparsity: float, power_scale: float = 1.0) -> list[float]:
    """Erdos-Renyi-Kernel densities whose weighted mean (by layer size) is `1 - sparsity`.

    `power_scale` raises the raw ERK score to a power (RigL's `erk_power_scale`; 0 gives
    uniform).

    Example: two linear layers 10x10 (score 0.2) and 2x10 (score 0.6), sparsity 0.5; the scale
    e solving `0.2 e * 100 + 0.6 e * 20 = 60` is 1.875, so the second layer would be at 1.125:
    it is made dense and the first takes the rest, 40 of 100 weights:

    ```python
    >>> erk_densities([(10, 10), (2, 10)], 0.5)
    [0.4, 1.0]

    ```
    """
    density = 1.0 - _check_sparsity(sparsity)
    numels = [math.prod(s) for s in shapes]
    raw = [(sum(s) / n) ** power_scale for s, n in zip(shapes, numels)]
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(shapes)) if i not in dense]
        if not free:
            break
        # live weights left to the sparse layers, over their summed raw score
        budget = density * sum(numels) - sum(numels[i] for i in dense)
        eps = budget / sum(raw[i] * numels[i] for i in free)
        top = max(raw[i] for i in free)
        if top * eps <= 1.0:
            break
        dense.update(i for i in free if raw[i] == top)
    return [1.0 if i in dense else min(1.0, raw[i] * eps) for i in range(len(shapes))]


def layer_densities(shapes: Sequence[Shape], sparsity: float, distribution: str = "erk") -> list[float]:
    """Densities per layer for `distribution` in `DISTRIBUTIONS`."""
    if distribution == "uniform":
        return uniform_densities(shapes, sparsity)
    if distribution == "erk":
        return erk_densities(shapes, sparsity)
    raise UsageError(f"unknown distribution {distribution!r}; choose from {', '.join(DISTRIBUTIONS)}")


def layer_counts(shapes: Sequence[Shape], sparsity: float, distribution: str = "erk") -> list[int]:
    """Live weights per layer, summing to exactly `round((1 - sparsity) * N)`.

    Example:
        ```python
        >>> layer_counts([(3, 3), (3, 3), (3, 3)], 0.5, "uniform")   # 13.5 -> 14 live: 5 + 5 + 4
        [5, 5, 4]

        ```
    """
    densities = layer_densities(shapes, sparsity, distribution)
    numels = [math.prod(s) for s in shapes]
    total = int(round((1.0 - sparsity) * sum(numels)))
    exact = [d * n for d, n in zip(densities, numels)]
    counts = [min(n, math.floor(x)) for x, n in zip(exact, numels)]
    # largest remainder first; ties go to the earlier layer, so the result is deterministic
    order = sorted(range(len(shapes)), key=lambda i: (-(exact[i] - counts[i]), i))
    missing = total - sum(counts)
    for i in order:
        if missing <= 0:
            break
        if counts[i] < numels[i]:
            counts[i] += 1
            missing -= 1
    return counts
