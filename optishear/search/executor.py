"""Executors: where trials run. The driver hands an executor a generation's distinct trials and gets results
back in the same order; it stays the single writer of the run directory.

``LocalExecutor`` runs them one after another on the driver's own ``TrialRunner``. A distributed executor
(Ray actors holding the model once) implements the same two methods.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..plan import Plan


@dataclass
class TrialRequest:
    """One trial to run: its position in the generation, its plan, its mask digest if already known."""

    index: int
    plan: Plan
    known_hash: str | None = None


class Executor(Protocol):
    def run(self, requests: list[TrialRequest], known: dict) -> Iterator[tuple[int, dict]]:
        """Run ``requests``; yield ``(index, result)`` in request order. ``known`` (mask digest -> (objective,
        sparsity)) is the driver's table, updated by the driver between yields."""

    def describe(self) -> dict:
        """What the manifest records (kind, workers)."""

    def close(self) -> None: ...


class LocalExecutor:
    """Trials in this process, one after another, on ``runner``."""

    DESCRIPTION = {"kind": "local", "workers": 1}

    def __init__(self, runner):
        self.runner = runner

    def run(self, requests: list[TrialRequest], known: dict) -> Iterator[tuple[int, dict]]:
        for req in requests:
            yield req.index, self.runner.run(req.plan, known, req.known_hash)

    def describe(self) -> dict:
        return dict(self.DESCRIPTION)

    def close(self) -> None:
        pass


__all__ = ["TrialRequest", "Executor", "LocalExecutor"]
