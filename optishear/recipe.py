"""Saving a pruned model with the recipe that reproduces it, and reading a recipe back as a plan."""

from __future__ import annotations

import importlib
import json
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from .data import tokens_digest
from .engine import PruneResult
from .methods import method_for
from .plan import Plan

logger = logging.getLogger(__name__)
RECIPE_NAME = "optishear_recipe.json"
FORMAT = "optishear-recipe/2"
FORMAT_V1 = "optishear-recipe/1"


def versions() -> dict[str, str]:
    import transformers

    from . import __version__

    out = {"optishear": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version()}  # fmt: skip
    for name in ("optishear_kernels", "triton", "pymoo", "numpy"):
        try:
            out[name] = importlib.import_module(name).__version__
        except (ImportError, AttributeError):
            pass
    return out


def make_recipe(plan: Plan, result: PruneResult, model=None, *, windows=None) -> dict:
    """The recipe of a pruned model: its plan (everything needed to prune it again), the per-block sparsities
    it applied, the digest of its masks (a replay must give the same), versions and what was achieved."""
    method = method_for(plan)
    metric = getattr(method, "metric", None)
    recipe = {
        "format": FORMAT,
        "model": getattr(model, "name_or_path", None) if model is not None else None,
        "plan": plan.to_dict(),
        "method": method.name,
        "metric_spec": metric.spec if metric is not None else plan.metric,
        "metric_config": list(metric.config.as_tuple()) if metric is not None and metric.config is not None else None,
        "block_sparsity": result.block_sparsity,
        "mask_digest": result.mask_digest,
        "versions": versions(),
        "achieved": {"sparsity": result.sparsity, "layers": result.layer_sparsity},
    }
    if windows is not None:
        recipe["windows_digest"] = tokens_digest(windows)
    return recipe


def _read(recipe) -> dict:
    if isinstance(recipe, dict):
        return recipe
    path = Path(recipe)
    if path.is_dir():
        path = path / RECIPE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    return json.loads(path.read_text())


def recipe_plan(recipe: dict | str | os.PathLike) -> Plan:
    """The ``Plan`` a recipe (a dict, a recipe file, or a saved model directory) describes.

    Reads this format and the first release's (``optishear-recipe/1``, which did not record the batch size:
    it replays at the batch size of that release, 8; statistics accumulate in float64 now, so masks do not
    depend on it)."""
    recipe = _read(recipe)
    fmt = recipe.get("format")
    if fmt == FORMAT:
        return Plan.from_dict(recipe["plan"])
    if fmt == FORMAT_V1:
        cal = recipe["calibration"]
        uniform = len(set(recipe["block_sparsity"])) <= 1
        return Plan(
            metric=recipe["metric"], sparsity=recipe["sparsity"], structure=recipe["structure"],
            block_sparsity=None if uniform else list(recipe["block_sparsity"]),
            targets=recipe.get("targets"), ignore=recipe.get("ignore"),
            calib=cal["source"], nsamples=cal["nsamples"], seqlen=cal["seqlen"], seed=cal["seed"],
            stats=cal.get("stats", "sequential"),
        )  # fmt: skip
    raise ValueError(f"not an OptiShear recipe (format {fmt!r}, expected {FORMAT!r} or {FORMAT_V1!r})")


recipe_config = recipe_plan  # the first release's name


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
