"""Pruning configuration: a dataclass with a JSON round trip and up-front validation."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path


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
            values = obj["block_sparsity"] if isinstance(obj, dict) else obj
        except json.JSONDecodeError:
            values = [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise ValueError(f"block sparsities must be numbers, got {values!r}") from err


def check_sparsity(value, what: str = "sparsity") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{what} must be a number in [0, 1), got {value!r}")
    return float(value)


@dataclass
class PruneConfig:
    """What to prune and how.

    Attributes:
        metric: ``wanda``, ``magnitude``, ``magnitude-row``, ``ria``, or a meta spec / four indices.
        sparsity: target fraction in [0, 1) (unstructured).
        structure: ``"unstructured"`` or ``"N:M"`` (N kept of every M consecutive weights).
        block_sparsity: one sparsity per decoder block (overrides ``sparsity``), ``"owl"`` for OWL's
            outlier-weighted ratios around ``sparsity`` (any metric), or None for uniform.
        owl_m, owl_lambda: OWL's outlier threshold M and spread lambda.
        targets / ignore: fnmatch patterns on linear names (``"mlp.*"``, ``"3.self_attn.q_proj"``).
        calib: calibration text (local path, ``wikitext2``/``c4``), None for model-generated text.
        nsamples, seqlen, seed: calibration windows.
        stats: ``"sequential"`` (Wanda/SparseGPT protocol: statistics through already pruned blocks)
            or ``"dense"`` (statistics of the dense model, one pass).
        batch_size: calibration windows per forward.
    """

    metric: str = "wanda"
    sparsity: float = 0.5
    structure: str = "unstructured"
    block_sparsity: list[float] | str | None = None
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    targets: list[str] | None = None
    ignore: list[str] | None = None
    calib: str | None = None
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    stats: str = "sequential"
    batch_size: int = 8

    def validate(self) -> None:
        """Check everything that does not need the model."""
        from .metrics import resolve_metric

        resolve_metric(self.metric)
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
        if self.stats not in ("sequential", "dense"):
            raise ValueError(f"stats must be 'sequential' or 'dense', got {self.stats!r}")
        for name in ("nsamples", "seqlen", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PruneConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown PruneConfig fields {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "PruneConfig":
        return cls.from_dict(json.loads(text))


__all__ = ["PruneConfig", "parse_structure", "read_block_sparsity", "check_sparsity"]
