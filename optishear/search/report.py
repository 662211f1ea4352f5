"""The search's picture: best objective per generation and the final front, as one PNG."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def plot(history: list[dict], pareto: list[dict], path: Path) -> bool:
    """Best objective per generation (one line per stage) and the Pareto set. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot written")
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for stage in dict.fromkeys(h["stage"] for h in history):
        hs = [h for h in history if h["stage"] == stage]
        a.plot([h["generation"] + 1 for h in hs], [h["best"] for h in hs], marker="o", label=stage)
    a.set_xlabel("generation")
    a.set_ylabel("best reconstruction error")
    a.set_title("search progress")
    a.legend()
    b.scatter([p["sparsity"] for p in pareto], [p["objective"] for p in pareto])
    b.set_xlabel("achieved sparsity")
    b.set_ylabel("reconstruction error")
    b.set_title(f"Pareto set ({len(pareto)})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


__all__ = ["plot"]
