"""Searching pruning policies: ``optishear.search(model, tokenizer, SearchConfig(...), out_dir) -> SearchResult``.

| file | what it holds |
|---|---|
| ``config.py`` | ``SearchConfig``: the base ``Plan`` and how to search; one codec to JSON and argparse |
| ``spaces.py`` | genotype <-> plan: the meta metric, per-block sparsities, sparsity levels |
| ``optimizers.py`` | ask/tell optimizers: pymoo NSGA-III and NSGA-II |
| ``trials.py`` | the typed trial record and the trial log (``trials.jsonl``) |
| ``manifest.py`` | what a run depends on; a mismatched resume is refused |
| ``runner.py`` | one trial on one loaded model (restore, prune, objective, mask digest) |
| ``executor.py`` | where trials run: ``ExecutorConfig``, ``make_executor``, the in-process executor |
| ``ray_executor.py`` | trials on Ray actors holding the model once (``optishear[distributed]``) |
| ``select.py`` | held-out finalists and the choice of the answer |
| ``report.py`` | the plot |
| ``driver.py`` | ask -> decode -> dedupe -> executor -> log -> tell; ``search()`` |

The package itself is callable, so ``optishear.search(...)`` is the function and ``optishear.search.X`` its parts.
"""

import sys
import types

from .config import ALGORITHMS, SPACES, SearchConfig, search_plan_defaults
from .driver import SearchResult, search, search_gradients, search_windows
from .executor import ExecutorConfig, LocalExecutor, TrialRequest
from .optimizers import PymooOptimizer
from .runner import TrialRunner
from .spaces import VectorSpace, repair_offsets
from .trials import TrialLog, TrialRecord

__all__ = ["SearchConfig", "SearchResult", "search", "search_windows", "search_gradients", "SPACES", "ALGORITHMS",
           "search_plan_defaults", "ExecutorConfig", "LocalExecutor", "TrialRequest", "PymooOptimizer", "TrialRunner",
           "VectorSpace", "repair_offsets", "TrialLog", "TrialRecord"]  # fmt: skip


class _CallableModule(types.ModuleType):
    """``optishear.search`` is both this package and its main function."""

    def __call__(self, *args, **kwargs) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
