"""Saving a pruned model with the recipe that reproduces it, and applying a recipe."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from .config import PruneConfig
from .metrics import resolve_metric
from .pruner import PruneResult

logger = logging.getLogger(__name__)
RECIPE_NAME = "optishear_recipe.json"
FORMAT = "optishear-recipe/1"


def versions() -> dict[str, str]:
    import transformers

    from . import __version__

    out = {"optishear": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version()}  # fmt: skip
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    return out


def make_recipe(config: PruneConfig, result: PruneResult, model=None) -> dict:
    metric = resolve_metric(config.metric)
    return {
        "format": FORMAT,
        "model": getattr(model, "name_or_path", None) if model is not None else None,
        "metric": config.metric,
        "metric_config": list(metric.config.as_tuple()) if metric.config is not None else None,
        "metric_spec": metric.spec,
        "structure": config.structure,
        "sparsity": config.sparsity,
        "block_sparsity": result.block_sparsity,
        "targets": config.targets,
        "ignore": config.ignore,
        "calibration": {"source": config.calib, "nsamples": config.nsamples, "seqlen": config.seqlen,
                        "seed": config.seed, "stats": config.stats},  # fmt: skip
        "seed": config.seed,
        "versions": versions(),
        "achieved": {"sparsity": result.sparsity, "layers": result.layer_sparsity},
    }


def recipe_config(recipe: dict | str | os.PathLike) -> PruneConfig:
    """The ``PruneConfig`` a recipe (a dict, a recipe file, or a saved model directory) describes."""
    if not isinstance(recipe, dict):
        path = Path(recipe)
        if path.is_dir():
            path = path / RECIPE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"recipe {path} does not exist")
        recipe = json.loads(path.read_text())
    if recipe.get("format") != FORMAT:
        raise ValueError(f"not an OptiShear recipe (format {recipe.get('format')!r}, expected {FORMAT!r})")
    cal = recipe["calibration"]
    uniform = len(set(recipe["block_sparsity"])) <= 1
    return PruneConfig(
        metric=recipe["metric"], sparsity=recipe["sparsity"], structure=recipe["structure"],
        block_sparsity=None if uniform else list(recipe["block_sparsity"]),
        targets=recipe.get("targets"), ignore=recipe.get("ignore"),
        calib=cal["source"], nsamples=cal["nsamples"], seqlen=cal["seqlen"], seed=cal["seed"],
        stats=cal.get("stats", "sequential"),
    )  # fmt: skip


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def save_pruned(model, tokenizer, out_dir: str | os.PathLike, recipe: dict, *, overwrite: bool = True) -> Path:
    """``save_pretrained`` + tokenizer + ``optishear_recipe.json``, written to a temporary sibling directory
    and renamed into place, so an interrupted save never leaves a half model at ``out_dir``."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / RECIPE_NAME, recipe)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved pruned model and recipe to %s", out)
    return out
