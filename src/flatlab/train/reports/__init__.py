"""Analysis reports of trained runs: what `flatlab landscape`, `hessian`, `gradstats` and
`robustness` run, as library functions.

Each `analyse_*` takes one or more run directories written by `flatlab train` (or their
`model.pt` / `checkpoint.pt` files, which keep the run's config, or runs already opened with
`open_run`), draws a fixed evaluation budget of batches from each run's data
(`select_batches`), calls the library functions of `flatlab.analysis` and writes, per run,
a JSON file of numbers (with the options, the data used, the seconds each part took and the flatlab
version) and PNG figures into `RUN/analysis/` (`output_dirs`); figures comparing several
runs go into `out` (default: the first run's `analysis/` folder). The options every report
shares are the fields of `ReportOptions`, passed as keywords. `*_table` turns the records
a report returns into the markdown table the command prints.

This is train-layer code: opening a run needs its `TrainConfig` and data.
"""

from .common import ReportOptions, output_dirs, write_result
from .gradstats import analyse_gradstats, gradstats_table
from .hessian import analyse_hessian, hessian_table
from .landscape import DIRECTIONS, analyse_landscape, landscape_table
from .robustness import analyse_robustness, robustness_table
from .runs import LoadedRun, open_run, select_batches

__all__ = [
    "LoadedRun", "open_run", "select_batches", "ReportOptions", "output_dirs", "write_result",
    "analyse_landscape", "analyse_hessian", "analyse_gradstats", "analyse_robustness", "DIRECTIONS",
    "landscape_table", "hessian_table", "gradstats_table", "robustness_table",
]  # fmt: skip
