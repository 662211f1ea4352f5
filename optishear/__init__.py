"""OptiShear: post-training pruning of Hugging Face causal LMs with searched metrics and fused kernels."""

__version__ = "0.1.0"

from .config import PruneConfig, parse_structure, read_block_sparsity  # noqa: E402
from .data import CalibSpec, calibration_windows, eval_tokens, read_text  # noqa: E402
from .evaluate import DenseOutputs, perplexity, reconstruction_error  # noqa: E402
from .metrics import NAMED, Metric, resolve_metric  # noqa: E402
from .models import find_blocks, load_model, model_linears  # noqa: E402
from .pruner import PruneResult, WeightSnapshot, prune  # noqa: E402
from .recipe import make_recipe, recipe_config, save_pruned  # noqa: E402

__all__ = [
    "PruneConfig", "parse_structure", "read_block_sparsity", "CalibSpec", "calibration_windows", "eval_tokens",
    "read_text", "DenseOutputs", "perplexity", "reconstruction_error", "NAMED", "Metric", "resolve_metric",
    "find_blocks", "load_model", "model_linears", "PruneResult", "WeightSnapshot", "prune", "make_recipe",
    "recipe_config", "save_pruned",
]  # fmt: skip
