"""The plan: everything that decides a pruned model, in one object shared by the CLI, the engine, the search
and the recipe.

A ``Plan`` says what to prune (metric or method, structure, one sparsity or one per block, targets/ignore),
how statistics are gathered (sequential or dense) and from which calibration windows (source, count,
length, seed, batch size). The same object is written into recipes and search manifests and read back from
them; its flags are generated from the field declarations below (``optishear.codec``), so the CLI of
``prune`` and ``search`` cannot drift from it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from . import codec
from .codec import opt

logger = logging.getLogger(__name__)

STATS_MODES = ("sequential", "dense")
_STATS_ALIASES = {"faithful": "sequential", "fast": "dense"}  # the search's names before the plan existed


def parse_structure(structure: str | None) -> tuple[int, int] | None:
    """``"unstructured"``/None -> None; ``"2:4"`` -> (2, 4) (N kept of every M).

    Raises:
        ValueError: malformed text or N >= M.
    """
    if structure is None or str(structure).lower() in ("", "unstructured", "none"):
        return None
    text = str(structure)
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"structure must be 'unstructured' or 'N:M' like '2:4', got {structure!r}")
    n, m = (int(p) for p in parts)
    if m < 1 or not 0 <= n < m:
        raise ValueError(f"N:M structure needs 0 <= N < M, got {text}")
    return n, m


def read_block_sparsity(source) -> list[float]:
    """Per-block sparsities from a list, a JSON file (a list, or a recipe with ``block_sparsity``),
    or a text file with one number per line."""
    if isinstance(source, (list, tuple)):
        values = list(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"block-sparsity file {path} does not exist")
        text = path.read_text().strip()
        try:
            obj = json.loads(text)
            values = obj["block_sparsity"] if isinstance(obj, dict) else obj  # a recipe: the sparsities it applied
        except json.JSONDecodeError:
            values = [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise ValueError(f"block sparsities must be numbers, got {values!r}") from err


def _parse_block_sparsity(text: str):
    """CLI form: ``owl``, numbers separated by commas (``0.4,0.5,0.6``), or a file (see ``read_block_sparsity``)."""
    if text == "owl":
        return "owl"
    parts = [p.strip() for p in text.split(",")]
    try:
        return [float(p) for p in parts]
    except ValueError:
        return read_block_sparsity(text)


def _render_block_sparsity(value) -> str:
    return value if isinstance(value, str) else ",".join(repr(float(v)) for v in value)


MODULE_KINDS = ("attn", "mlp")


def module_kind(name: str) -> str:
    """``attn`` for a linear inside a block's attention (a name part containing ``attn`` or ``attention``:
    ``self_attn.q_proj``, ``attn.c_attn``), ``mlp`` for every other (``mlp.down_proj``, ``fc1``)."""
    parts = name.lower().split(".")
    return "attn" if any("attn" in p or "attention" in p for p in parts[:-1]) else "mlp"


def _parse_module_sparsity(text: str) -> dict:
    """CLI form: JSON ``{"attn": [...], "mlp": [...]}`` (one value per block each), or a file holding it (or a
    recipe with ``plan.module_sparsity``)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"module sparsity must be JSON like '{{\"attn\": [...], \"mlp\": [...]}}' or a file, "
                             f"got {text!r}") from None  # fmt: skip
        obj = json.loads(path.read_text())
        if isinstance(obj, dict) and "plan" in obj:
            obj = obj["plan"].get("module_sparsity")
    return obj


def _render_module_sparsity(value) -> str:
    return json.dumps(value, separators=(",", ":"))
def _parse_layer_rates(text: str):
    """CLI form of ``layer_rates``: ``uniform``, ``adaptive``, inline JSON, or a file (see
    ``methods.structured.read_layer_rates``)."""
    import argparse

    from .methods.structured import read_layer_rates

    try:
        return read_layer_rates(text)
    except (ValueError, FileNotFoundError) as err:  # argparse shows an ArgumentTypeError's own message (exit 2)
        raise argparse.ArgumentTypeError(str(err)) from err


def _render_layer_rates(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _parse_stats(text: str) -> str:
    if text in _STATS_ALIASES:
        logger.warning("--stats %s is now called %s", text, _STATS_ALIASES[text])
        return _STATS_ALIASES[text]
    return text


def check_sparsity(value, what: str = "sparsity") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{what} must be a number in [0, 1), got {value!r}")
    return float(value)


def _positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class Plan:
    """What to prune, how, and from which calibration windows.

    Attributes:
        metric: ``wanda``, ``magnitude``, ``magnitude-row``, ``ria``, ``sparsegpt``, a meta-metric spec or four
            indices, or a symbolic metric (``pruner-zero``, ``expr:mul(W,sqrt(X))``); the name also selects the
            pruning method (``optishear.methods``).
        sparsity: target fraction in [0, 1) (unstructured).
        structure: ``"unstructured"`` or ``"N:M"`` (N kept of every M consecutive weights).
        block_sparsity: one sparsity per decoder block (overrides ``sparsity``), ``"owl"`` for OWL's
            outlier-weighted ratios around ``sparsity`` (any metric), or None for uniform.
        owl_m, owl_lambda: OWL's outlier threshold M and spread lambda.
        targets / ignore: fnmatch patterns on linear names (``"mlp.*"``, ``"3.self_attn.q_proj"``).
        stats: ``"sequential"`` (Wanda/SparseGPT protocol: statistics through already pruned blocks) or
            ``"dense"`` (statistics of the dense model, one pass; what the search uses by default).
        calib: calibration text (local path, ``wikitext2``/``c4``), None for model-generated text.
        nsamples, seqlen, seed: the calibration windows.
        batch_size: calibration windows per forward. Statistics accumulate in float64, so masks do not
            depend on it (tested).
        update: ``none``, ``sparsegpt`` (after any method's mask, SparseGPT's weight update with that mask fixed) or
            ``admm`` (the least-squares solve by ADMM with that mask fixed) or ``admm-gradual`` (ADMM's gradual
            pruning with the metric choosing each mask from the iterate)
            (``methods.sparsegpt.SparseGPTUpdate``).
        module_sparsity: ``{"attn": [one per block], "mlp": [one per block]}``: each block's attention linears and
            MLP linears get their own sparsity (``module_kind``); overrides ``sparsity``, unstructured only.
        grad_dtype: how gradient statistics are kept (``float32`` or ``bfloat16``), for metrics that read G.
        structured: remove whole attention heads and MLP channels (``methods.structured``) instead of weights.
        rate: structured: the fraction of the decoder blocks' parameters to remove.
        importance: structured: how heads and channels are scored (``flap``, ``wanda-sp``, ``magnitude``).
        layer_rates: structured: ``uniform`` (None), ``adaptive`` (FLAP's allocation across blocks) or per-block
            rates ``{"attention": [...], "mlp": [...]}`` (from a file on the command line).
    """

    metric: str = opt("wanda", type=str, help="wanda | magnitude | magnitude-row | ria | sparsegpt | "
                      "'w:<c>*<u>,x:<c>*<u>' | pruner-zero | 'expr:<tree over W, G, X>'")
    sparsity: float = opt(0.5, type=float, help="target sparsity in [0, 1)")
    structure: str = opt("unstructured", type=str, help="unstructured, or N:M such as 2:4 (N kept of every M)")
    block_sparsity: list[float] | str | None = opt(
        None, parse=_parse_block_sparsity, render=_render_block_sparsity,
        help="one sparsity per decoder block: 'owl', numbers '0.4,0.5,...', or a file (JSON list, recipe, lines)",
    )  # fmt: skip
    owl_m: float = opt(5.0, type=float, help="OWL outlier threshold M")
    owl_lambda: float = opt(0.08, type=float, help="OWL spread lambda")
    targets: list[str] | None = opt(None, kind="list", help="fnmatch patterns of linears to prune")
    ignore: list[str] | None = opt(None, kind="list", help="fnmatch patterns of linears to leave dense")
    stats: str = opt("sequential", parse=_parse_stats, choices=STATS_MODES,
                     help="statistics through already-pruned blocks (sequential) or of the dense model (dense)")
    calib: str | None = opt(None, type=str,
                            help="calibration text: file/dir, or wikitext2 / c4; none: the model writes its own")
    nsamples: int = opt(128, type=int, help="calibration windows")
    seqlen: int = opt(2048, type=int, help="tokens per calibration window")
    seed: int = opt(0, type=int, help="seed of the calibration draw")
    batch_size: int = opt(8, type=int, help="calibration windows per forward")
    update: str = opt("none", type=str, choices=("none", "sparsegpt", "admm", "admm-gradual"),
                      help="weight update after the mask: none, sparsegpt (OBS reconstruction with the mask fixed), "
                           "admm (the least-squares solve by ADMM, Boza 2024) or admm-gradual (ADMM's gradual "
                           "pruning, the metric re-choosing the mask from its iterate)")  # fmt: skip
    module_sparsity: dict[str, list[float]] | None = opt(
        None, parse=_parse_module_sparsity, render=_render_module_sparsity,
        help='one sparsity per block and module kind: JSON {"attn": [...], "mlp": [...]} or a file holding it',
    )  # fmt: skip
    grad_dtype: str = opt("float32", type=str, choices=("float32", "bfloat16"),
                          help="gradient statistics G (symbolic metrics that use G): float32, or bfloat16 (half the "
                               "memory and cache)")  # fmt: skip
    structured: bool = opt(False, kind="bool", help="remove whole attention heads and MLP channels (model surgery)")
    rate: float = opt(0.3, type=float, help="structured: fraction of the decoder blocks' parameters to remove")
    importance: str = opt("flap", type=str, choices=("flap", "wanda-sp", "magnitude"),
                          help="structured: head/channel importance")
    layer_rates: dict | str | None = opt(
        None, parse=_parse_layer_rates, render=_render_layer_rates,
        help="structured: uniform | adaptive | FILE (JSON {\"attention\": [...], \"mlp\": [...]}, or a recipe)",
    )  # fmt: skip

    # -- validation ------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check everything that does not need the model (the method checks its own fields)."""
        from .methods import method_for

        if self.structured and (self.update != "none" or self.module_sparsity is not None):
            raise ValueError("structured pruning removes whole heads and channels: it takes neither --update nor "
                             "--module-sparsity (its per-block rates are --layer-rates)")  # fmt: skip
        method_for(self).validate(self)
        check_sparsity(self.sparsity)
        nm = parse_structure(self.structure)
        if self.block_sparsity is not None:
            if nm is not None:
                raise ValueError("block_sparsity applies to unstructured pruning; N:M fixes the sparsity")
            if isinstance(self.block_sparsity, str):
                if self.block_sparsity != "owl":
                    raise ValueError(f"block_sparsity must be a list of numbers or 'owl', got {self.block_sparsity!r}")
                if not (self.owl_m > 0 and 0 <= self.owl_lambda < min(self.sparsity, 1 - self.sparsity) + 1e-12):
                    raise ValueError(f"OWL needs M > 0 and 0 <= lambda <= min(s, 1 - s), got M={self.owl_m}, "
                                     f"lambda={self.owl_lambda}")  # fmt: skip
            else:
                for i, s in enumerate(self.block_sparsity):
                    check_sparsity(s, f"block_sparsity[{i}]")
        if self.module_sparsity is not None:
            if nm is not None or self.block_sparsity is not None:
                raise ValueError("module_sparsity applies to unstructured pruning, without block_sparsity")
            ms = self.module_sparsity
            if not isinstance(ms, dict) or set(ms) != set(MODULE_KINDS) or len({len(v) for v in ms.values()}) != 1:
                raise ValueError(f"module_sparsity must be {{'attn': [...], 'mlp': [...]}} with one value per block "
                                 f"each, got {ms!r}")  # fmt: skip
            for kind, values in ms.items():
                for i, v in enumerate(values):
                    check_sparsity(v, f"module_sparsity[{kind!r}][{i}]")
        if self.update not in ("none", "sparsegpt", "admm", "admm-gradual"):
            raise ValueError(f"update must be none, sparsegpt, admm or admm-gradual, got {self.update!r}")
        if self.stats not in STATS_MODES:
            raise ValueError(f"stats must be one of {STATS_MODES}, got {self.stats!r}")
        for name in ("nsamples", "seqlen", "batch_size"):
            _positive_int(getattr(self, name), name)
        if self.seqlen < 2:
            raise ValueError(f"seqlen must be >= 2, got {self.seqlen}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.grad_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"grad_dtype must be float32 or bfloat16, got {self.grad_dtype!r}")

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_structure(self.structure)

    def block_sparsities(self, n_blocks: int) -> list[float] | None:
        """Per-block sparsities; None for OWL (decided once dense statistics exist)."""
        if self.block_sparsity == "owl":
            return None
        if self.block_sparsity is None:
            return [float(self.sparsity)] * n_blocks
        if len(self.block_sparsity) != n_blocks:
            raise ValueError(
                f"block_sparsity has {len(self.block_sparsity)} values but the model has {n_blocks} decoder blocks"
            )
        return [check_sparsity(s, f"block_sparsity[{i}]") for i, s in enumerate(self.block_sparsity)]

    def layer_sparsities(self, block: int, refs, n_blocks: int) -> dict[str, float] | None:
        """Per-linear targets of block ``block`` (linear name -> sparsity) when the plan allocates per module kind."""
        if self.module_sparsity is None:
            return None
        for kind, values in self.module_sparsity.items():
            if len(values) != n_blocks:
                raise ValueError(f"module_sparsity[{kind!r}] has {len(values)} values but the model has {n_blocks} "
                                 "decoder blocks")  # fmt: skip
        return {r.name: float(self.module_sparsity[module_kind(r.name)][block]) for r in refs}

    # -- codec -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return codec.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        return codec.from_dict(cls, data)

    def to_json(self) -> str:
        return codec.to_json(self)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    def to_argv(self) -> list[str]:
        return codec.to_argv(self)

    @classmethod
    def add_arguments(cls, parser, defaults: "Plan | None" = None) -> None:
        codec.add_arguments(parser, cls, defaults or cls())

    @classmethod
    def from_args(cls, args, base: "Plan | None" = None) -> "Plan":
        return codec.from_args(cls, args, base or cls())


PruneConfig = Plan  # the name of the first release


__all__ = ["Plan", "PruneConfig", "module_kind", "MODULE_KINDS", "parse_structure", "read_block_sparsity",
           "check_sparsity", "STATS_MODES"]  # fmt: skip
