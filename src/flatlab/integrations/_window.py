"""What the framework adapters check before training: that a data-driven mask (SSAM-F) which
refreshes from the accumulation window finds enough rows there.
"""

from __future__ import annotations

from ..errors import UsageError
from ..optim import SharpnessAware


def check_window_feeds_mask(opt: SharpnessAware, rows: int | None, window: str) -> None:
    """Refuses, before the first step, a mask that scores more samples than `rows`, the rows of
    the window it will refresh from (described by `window`); None: not known yet.
    """
    coordinates = opt.coordinates
    if rows is None or not coordinates.needs_data or coordinates.has_data_source:
        return
    if coordinates.num_samples > rows:
        raise UsageError(
            f"the {coordinates.name} mask scores num_samples={coordinates.num_samples} samples at each refresh and, "
            f"without mask_data, refreshes from {window}, which holds {rows}: pass num_samples={rows} (or fewer), "
            "or mask_data= (an iterable of training batches) to the optimizer"
        )
