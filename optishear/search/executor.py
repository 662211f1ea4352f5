"""Executors: where trials run. The driver hands an executor a generation's distinct trials and gets results
back in the same order; it stays the single writer of the run directory.

``LocalExecutor`` runs them one after another on the driver's own ``TrialRunner``; ``RayExecutor``
(``ray_executor.py``) on Ray actors that hold the model once. ``ExecutorConfig`` says which (the CLI's
``--executor / --workers / --ray-address`` flags) and ``make_executor`` builds it. An executor's settings are not
part of the search's configuration: a run's trials do not depend on them, and a log written by one executor
resumes with any other.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from .. import codec
from ..codec import opt
from ..plan import Plan

EXECUTORS = ("local", "ray")


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


@dataclass
class ExecutorConfig:
    """Where a search's trials run.

    Attributes:
        executor: ``local`` (this process, one trial at a time) or ``ray`` (``workers`` Ray actors; needs
            ``pip install optishear[distributed]``).
        workers: Ray actors, each holding the model once; None: one per GPU on a cluster with GPUs, else 2.
        ray_address: None starts a private Ray instance on this machine (bound to 127.0.0.1, shut down at the
            end); ``auto`` joins the cluster ``ray start`` runs here; ``HOST:PORT`` (or ``ray://HOST:PORT``) joins
            that cluster's head.
        worker_threads: torch threads (and Ray CPUs) per worker; None: the CPUs divided among the workers.
        gpus_per_worker: GPUs per worker; None: 1 when the cluster has GPUs, else 0.
        model: what workers load the model from: a local directory that exists on every node (the CLI passes
            ``--model``), or None: the driver's model when it came from a local directory, else a copy of the
            driver's model through Ray's object store. Workers check that their weights fingerprint equals the
            driver's.
    """

    executor: str = opt("local", choices=EXECUTORS, type=str, help="where trials run")
    workers: int | None = opt(None, type=int, help="Ray workers; None: one per GPU, or 2 on CPUs")
    ray_address: str | None = opt(None, type=str, help="Ray cluster, auto or HOST:PORT; None: a private local instance")
    worker_threads: int | None = opt(None, type=int, help="torch threads per Ray worker; None: CPUs / workers")
    gpus_per_worker: float | None = opt(None, type=float, help="GPUs per Ray worker; None: 1 if there are GPUs")
    model: str | None = opt(None, type=str, help="model directory the workers load", cli=False)

    def validate(self) -> None:
        """Checks that need no cluster: the kind, the counts, the address's form, and that Ray is installed.

        Raises:
            ValueError: naming the bad value (for a missing Ray: how to install it).
        """
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):  # fmt: skip
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if self.worker_threads is not None and (not isinstance(self.worker_threads, int) or self.worker_threads < 1):
            raise ValueError(f"worker_threads must be a positive integer, got {self.worker_threads!r}")
        if self.gpus_per_worker is not None and not self.gpus_per_worker >= 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker!r}")
        if self.executor == "local":
            if self.workers not in (None, 1):
                raise ValueError(f"--workers {self.workers} needs --executor ray (the local executor runs one trial "
                                 "at a time)")  # fmt: skip
            for name in ("ray_address", "worker_threads", "gpus_per_worker"):
                if getattr(self, name) is not None:
                    raise ValueError(f"--{name.replace('_', '-')} needs --executor ray")
            return
        check_ray_address(self.ray_address)
        from .ray_executor import import_ray

        import_ray()

    def describe(self) -> dict:
        return {"kind": self.executor, "workers": 1 if self.executor == "local" else self.workers,
                "ray_address": self.ray_address}  # fmt: skip

    def to_dict(self) -> dict:
        return codec.to_dict(self)

    @classmethod
    def add_arguments(cls, parser) -> None:
        codec.add_arguments(parser, cls, cls())

    @classmethod
    def from_args(cls, args, base: "ExecutorConfig | None" = None) -> "ExecutorConfig":
        return codec.from_args(cls, args, base or cls())


_ADDRESS = re.compile(r"^(ray://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def check_ray_address(address: str | None) -> None:
    """None, ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` with a port in 1..65535.

    Raises:
        ValueError: anything else, with the forms that are accepted.
    """
    if address is None or address == "auto":
        return
    m = _ADDRESS.match(str(address))
    if m is None or not 0 < int(m.group(3)) < 65536:
        raise ValueError(f"--ray-address must be 'auto', HOST:PORT or ray://HOST:PORT (the head's GCS port, 6379 by "
                         f"default), got {address!r}")  # fmt: skip


def describe_spec(spec) -> dict:
    """What the manifest records of an executor before it is built (built executors describe themselves)."""
    if spec is None or spec == "local":
        return dict(LocalExecutor.DESCRIPTION)
    if isinstance(spec, str):
        return {"kind": spec}
    if isinstance(spec, ExecutorConfig):
        return {"kind": spec.executor, "workers": spec.workers, "ray_address": spec.ray_address}
    if hasattr(spec, "describe") and hasattr(spec, "run"):
        return spec.describe()
    return {"kind": "custom"}


def make_executor(spec, runner) -> "Executor":
    """The executor a search runs its trials on.

    Args:
        spec: None or ``"local"`` (this process), ``"ray"`` (Ray with default settings), an ``ExecutorConfig``,
            an executor object (used as it is), or a function of the runner that returns one (to build an executor
            with options of its own, ``lambda runner: RayExecutor(runner, cfg, fault=...)``).
        runner: the driver's ``TrialRunner`` (a Ray executor ships its per-search state to the workers).
    """
    if spec is None or spec == "local":
        return LocalExecutor(runner)
    if isinstance(spec, str):
        spec = ExecutorConfig(executor=spec)
    if isinstance(spec, ExecutorConfig):
        spec.validate()
        if spec.executor == "local":
            return LocalExecutor(runner)
        from .ray_executor import RayExecutor

        return RayExecutor(runner, spec)
    if callable(spec) and not hasattr(spec, "run"):
        return spec(runner)
    return spec


__all__ = ["TrialRequest", "Executor", "LocalExecutor", "ExecutorConfig", "EXECUTORS", "make_executor", "describe_spec",
           "check_ray_address"]  # fmt: skip
