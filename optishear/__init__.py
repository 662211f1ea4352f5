"""OptiShear: post-training pruning of Hugging Face causal LMs with searched metrics and fused kernels.

The flow, one module per arrow:

    text -> windows (data) -> calibration walk (calibrate) -> statistics -> method (methods)
         -> pruned model (engine) -> objective (objectives) -> trial record -> optimizer (search)
"""

__version__ = "0.2.0"

from .data import CalibSpec, WindowSet, calibration_windows, eval_tokens, read_text, window_sets  # noqa: E402
from .engine import PruneResult, plan_windows, prune  # noqa: E402
from .methods import NAMED, Metric, method_for, resolve_metric  # noqa: E402
from .models import LinearRef, WeightSnapshot, find_blocks, load_model, model_linears  # noqa: E402
from .objectives import DenseOutputs, perplexity, reconstruction_error, zero_shot  # noqa: E402
from .plan import Plan, PruneConfig, parse_structure, read_block_sparsity  # noqa: E402
from .recipe import make_recipe, recipe_plan, save_pruned  # noqa: E402


from . import search  # noqa: E402  (callable: ``optishear.search(model, tok, config, out_dir)``)
from .search import SearchConfig, SearchResult  # noqa: E402

__all__ = [
    "Plan", "PruneConfig", "parse_structure", "read_block_sparsity", "CalibSpec", "WindowSet", "calibration_windows",
    "window_sets", "eval_tokens", "read_text", "DenseOutputs", "perplexity", "reconstruction_error", "NAMED",
    "Metric", "method_for", "resolve_metric", "LinearRef", "WeightSnapshot", "find_blocks", "load_model",
    "model_linears", "PruneResult", "prune", "plan_windows", "make_recipe", "recipe_plan", "save_pruned", "search",
    "SearchConfig", "SearchResult", "zero_shot",
]  # fmt: skip
