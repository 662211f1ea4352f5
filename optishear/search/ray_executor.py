"""Trials on Ray actors: the model loaded once per worker, the per-search state shipped once, the driver the judge.

``RayExecutor`` implements the executor seam (``run / describe / close``). At its first trial it starts
``workers`` actors (``TrialWorker``): each loads the model once (from a directory every node can read, or a copy
of the driver's model through Ray's object store), checks that its weights fingerprint and its optishear code
equal the driver's, and receives the per-search state once, through the object store: the statistics and
objective windows, the dense outputs the objective compares against (their compact form: per-token vectors of the
head's width, not logits), and the dense statistics the metrics score with. Between trials a worker restores the
dense weights in place, as the local runner does.

A trial runs in two steps on one worker: ``prune`` (restore, prune, return the mask digest and the sparsity) and,
only when the driver says so, ``evaluate`` (the objective on the model as pruned). The driver decides, in candidate
order, exactly as the local runner would have: a digest that an earlier trial evaluated is ``evaluated: false``
and copies that trial's objective; a digest being evaluated on another worker is not evaluated twice; the first
trial in candidate order with a new digest is the one recorded as evaluated, whichever worker measured it. So a
run with N workers writes the same ``trials.jsonl`` (timings aside) and chooses the same recipe as a serial run.

Faults: a worker that dies (killed, out of memory, its node lost) is replaced, and its trial runs again on
another worker; a trial whose attempt failed (an exception, or its worker died) on two workers is returned as a
failed trial, which the driver records and the search survives (``max_failures``). Results are returned in
request order, each once, so nothing is logged twice; the driver stays the single writer of the run directory.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import os
import signal
import socket
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .executor import ExecutorConfig, TrialRequest, check_ray_address

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'optishear[distributed]' (it installs Ray)"
MAX_ATTEMPTS = 2  # a trial that failed on two workers is recorded as failed
CONNECT_TIMEOUT = 5.0  # seconds to reach a head's port before Ray is asked to connect (Ray itself retries for minutes)


def import_ray():
    """``import ray``, or a ``ValueError`` that says how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ValueError(f"--executor ray needs Ray, which is not installed here: {INSTALL_HINT}") from err
    return ray


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of the ``optishear`` and ``optishear_kernels`` sources this process imported: a worker that runs
    other code could compute other results, so it is refused."""
    import optishear
    import optishear_kernels

    h = hashlib.blake2b(digest_size=12)
    for pkg in (optishear, optishear_kernels):
        root = Path(pkg.__file__).resolve().parent
        for f in sorted(root.rglob("*.py")):
            h.update(f"{pkg.__name__}/{f.relative_to(root).as_posix()}\n".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def tensor_bytes(obj, _seen=None) -> int:
    """Bytes held in tensors reachable from ``obj`` (dicts, lists, tuples, object attributes), each counted once."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(tensor_bytes(v, seen) for v in vars(obj).values())
    return 0


def portable_dense(dense):
    """A copy of ``DenseOutputs`` that can travel to another host: spilled logits read back into memory, tensors on
    the CPU, no copy of the output head (``_w``/``_b``: each worker links its own, equal by fingerprint), and no
    more than the configured objective reads."""
    out = copy.copy(dense)
    if getattr(dense, "_files", None):
        out._mem = [torch.load(f) for f in dense._files]
        out._files = []
    out._tmp = None
    if getattr(dense, "gram", None) is not None:
        # W^T W serves the Frobenius objective only: without its dense head inputs (a KL search) it is not sent
        # (on a 7B model it is 4096^2 float64, 134 MB, six times the rest of the state).
        out.gram = dense.gram.cpu() if dense._hidden else None
    if dense.shortcut:
        out._w = out._b = None
    return out


def _attach_head(dense, model) -> None:
    """Link a shipped ``DenseOutputs`` to this worker's output head (what ``DenseOutputs.__init__`` keeps)."""
    if dense.shortcut:
        head = model.get_output_embeddings()
        dense._w = head.weight.detach().float()
        bias = getattr(head, "bias", None)
        dense._b = None if bias is None else bias.detach().float()


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


@dataclass
class FaultInjection:
    """Faults to inject in workers, for tests and drills. Trials are numbered by dispatch order (``seq``, from 0,
    across the run's generations, as the executor numbers requests).

    Attributes:
        kill: ``{seq: phase}``: the worker running that trial's first attempt kills itself (SIGKILL) at the start
            of ``phase`` (``prune``, or ``evaluate``: after pruning, before the objective), like an OOM kill.
        fail: trials whose every attempt raises ``RuntimeError`` (a trial that fails on two workers).
    """

    kill: dict[int, str] = field(default_factory=dict)
    fail: set[int] = field(default_factory=set)

    def __call__(self, seq: int, attempt: int, phase: str) -> None:
        if attempt == 0 and self.kill.get(seq) == phase:
            logger.warning("fault injection: killing worker pid %d in trial %d (%s)", os.getpid(), seq, phase)
            os.kill(os.getpid(), signal.SIGKILL)
        if seq in self.fail:
            raise RuntimeError(f"injected fault in trial {seq} ({phase}, attempt {attempt + 1})")


class TrialWorker:
    """One worker (a Ray actor): a model loaded once, the per-search state received once, trials in two steps.

    Args:
        model: a model directory to load, or the driver's model (an object-store copy, resolved by Ray).
        state: ``TrialRunner.shared_state()`` with a portable ``dense`` (resolved by Ray from the object store).
        setup: ``config`` (``SearchConfig`` as a dict), ``dtype``, ``fingerprint`` (the driver's weights
            fingerprint), ``threads``, ``backend``, ``code`` (the driver's ``code_digest``), ``fault``.
    """

    def __init__(self, model, state: dict, setup: dict):
        import ray

        from ..models import load_model, weights_fingerprint
        from .config import SearchConfig
        from .runner import TrialRunner

        t0 = time.perf_counter()
        torch.set_num_threads(setup["threads"])
        self.device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.host = socket.gethostname()
        if setup["code"] != code_digest():
            raise ValueError(f"worker on {self.host} imports other optishear code than the driver (digest "
                             f"{code_digest()} != {setup['code']}, from {Path(__file__).parents[1]}): install the "
                             "same version on every node")  # fmt: skip
        if isinstance(model, str):
            model, _ = load_model(model, dtype=getattr(torch, setup["dtype"]), device=self.device)
        else:
            model.to(self.device)
        self.load_seconds = time.perf_counter() - t0
        fp = weights_fingerprint(model)
        if fp != setup["fingerprint"]:
            raise ValueError(f"worker on {self.host} holds other weights than the driver (fingerprint {fp} != "
                             f"{setup['fingerprint']}): every node must read the same model")  # fmt: skip
        dense = state["dense"]
        _attach_head(dense, model)
        if state.get("gradients") is not None and self.device != "cpu":
            g = state["gradients"]
            state = {**state, "gradients": replace(g, per_block=[{k: v.to(self.device) for k, v in b.items()}
                                                                  for b in g.per_block])}  # fmt: skip
        self.runner = TrialRunner(model, state["windows"], SearchConfig.from_dict(setup["config"]),
                                  objective_windows=state["objective_windows"], backend=setup["backend"],
                                  state=state)  # fmt: skip
        self.fault = setup.get("fault")
        self.held: int | None = None  # the trial whose pruned model waits for ``evaluate``
        self.setup_seconds = time.perf_counter() - t0

    def info(self) -> dict:
        """Where this worker runs and what it imports (the driver logs it, and tests check it)."""
        import optishear

        return {"host": self.host, "pid": os.getpid(), "device": self.device, "threads": torch.get_num_threads(),
                "load_seconds": self.load_seconds, "setup_seconds": self.setup_seconds,
                "optishear": optishear.__version__, "optishear_file": optishear.__file__, "code": code_digest(),
                "backend": self.runner.backend}  # fmt: skip

    def update_stats(self, stats: list[dict], needs: list[str]) -> None:
        """Adopt the driver's dense statistics (collected there once, for statistic names the first ones lacked)."""
        self.runner._stats, self.runner._stats_needs = stats, frozenset(needs)
        self.runner._with_grads = None  # rebuilt from the new statistics when a metric reads G

    def _failed(self, exc: Exception, t0: float, what: str) -> dict:
        self.runner.snapshot.restore()
        self.held = None
        logger.warning("trial %s failed: %s: %s", what, type(exc).__name__, exc)
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}

    def prune(self, plan, seq: int, attempt: int) -> dict:
        """Restore the dense weights and prune with ``plan``; keep the pruned model for ``evaluate``.

        Returns:
            ``{status, mask_hash, sparsity, seconds}``, or ``{status: failed, error, seconds}`` with the model
            restored.
        """
        t0 = time.perf_counter()
        self.held = None
        try:
            if self.fault is not None:
                self.fault(seq, attempt, "prune")
            res = self.runner.apply(plan)
        except Exception as exc:  # the driver decides what a failure means (retry, then record)
            return self._failed(exc, t0, f"{seq} ({plan.metric})")
        self.held = seq
        return {"status": "ok", "mask_hash": res.mask_digest, "sparsity": res.sparsity,
                "seconds": time.perf_counter() - t0}  # fmt: skip

    def evaluate(self, seq: int, attempt: int) -> dict:
        """The objective of the model ``prune(seq)`` left: ``{status, objective, seconds}`` or a failure."""
        from ..objectives import reconstruction_error

        t0 = time.perf_counter()
        try:
            if self.held != seq:
                raise RuntimeError(f"trial {seq} is not the one this worker pruned last ({self.held})")
            if self.fault is not None:
                self.fault(seq, attempt, "evaluate")
            value = reconstruction_error(self.runner.model, self.runner.dense, self.runner.cfg.objective)
        except Exception as exc:
            return self._failed(exc, t0, str(seq))
        self.held = None
        return {"status": "ok", "objective": value, "seconds": time.perf_counter() - t0}


@dataclass
class _Slot:
    """A worker as the driver sees it."""

    id: int
    actor: object
    ready: object | None  # the ``info()`` call until it answers
    info: dict | None = None
    busy: bool = False


@dataclass
class _Trial:
    """One request's progress in a generation."""

    pos: int
    req: TrialRequest
    seq: int
    answer: str | None = None  # "known": answered from the driver's table; "twin": waits for an equal known_hash
    twin_of: int | None = None
    attempts: int = 0
    tried: set = field(default_factory=set)
    error: str | None = None
    mask_hash: str | None = None
    sparsity: float | None = None
    objective: float | None = None
    seconds: float = 0.0
    done: bool = False  # the workers' part is over (measured, skipped as a duplicate, or failed)
    failed: bool = False


@contextmanager
def _loopback(ray):
    """Ray turns a loopback node address into the host's routable one; for a private instance, keep 127.0.0.1.

    ``ENABLE_RAY_CLUSTER`` is what makes Ray resolve ``127.0.0.1`` to the interface address
    (``services.get_node_ip_address``); it is only read while the node starts, so it is lowered for ``ray.init``
    alone and restored after.
    """
    from ray._private import ray_constants

    old = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _split_address(address: str) -> tuple[str, int]:
    text = address.removeprefix("ray://")
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class RayExecutor:
    """Trials on ``config.workers`` Ray actors (see the module's docstring).

    Args:
        runner: the driver's ``TrialRunner``: its model, configuration and per-search state are what workers get.
        config: ``ExecutorConfig`` with ``executor="ray"``.
        fault: ``FaultInjection`` for tests and drills.
        max_replacements: worker deaths survived by starting a new worker (default: 2 per worker); past that the
            search stops with an error (finished trials are in the log: ``--resume``).
        runtime_env: Ray runtime environment for the workers (merged with the ``PYTHONPATH`` this executor sets on
            a local instance so that workers import the driver's code).

    Raises:
        ValueError: Ray is not installed, the address is malformed or unreachable, or no Ray instance runs there.
    """

    def __init__(self, runner, config: ExecutorConfig, *, fault: FaultInjection | None = None,
                 max_replacements: int | None = None, runtime_env: dict | None = None):  # fmt: skip
        config.validate()
        self.runner = runner
        self.cfg = config
        self.fault = fault
        self.runtime_env = dict(runtime_env or {})
        self.ray = import_ray()
        self._owns_ray = False
        self._started = False
        self._slots: dict[int, _Slot] = {}
        self._next_id = 0
        self._seq = 0
        self._shipped_needs: frozenset[str] | None = None
        self._stats_ref = None
        self.events: list[dict] = []  # one per attempt that did not succeed, and per worker start and death
        self.trials_by_worker: dict[int, int] = {}  # attempts dispatched to each worker
        self.counts = {"deaths": 0, "retries": 0, "replaced": 0, "failed_trials": 0, "duplicates_skipped": 0}
        model = runner.model
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.model_path = self._model_path(model, config.model)
        self._connect()
        try:
            resources = self.ray.cluster_resources()
            gpus = float(resources.get("GPU", 0))
            self.gpus_per_worker = config.gpus_per_worker if config.gpus_per_worker is not None else (
                1.0 if gpus > 0 else 0.0)  # fmt: skip
            self.workers = config.workers or (int(gpus // self.gpus_per_worker) if self.gpus_per_worker else 2)
            self.threads = config.worker_threads or self._default_threads(float(resources.get("CPU", 1)))
            self.max_replacements = 2 * self.workers if max_replacements is None else max_replacements
            self.state = self._portable_state()
            self.state_bytes = tensor_bytes(self.state)
            self._launch()
        except BaseException:
            self.close()
            raise

    # -- set-up ------------------------------------------------------------------------------------------
    def _default_threads(self, cpus: float) -> int:
        """CPUs per worker: the cluster's CPUs divided among the workers, but never more than one node has (nor, for
        GPU workers, more than a GPU node has per GPU), so that every worker can be placed."""
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive", True)]
        if self.gpus_per_worker:
            per_gpu = [r.get("CPU", 0) / r["GPU"] for r in nodes if r.get("GPU")]
            return max(1, int(min(per_gpu) * self.gpus_per_worker) if per_gpu else 1)
        largest = max((r.get("CPU", 0) for r in nodes), default=cpus)
        return max(1, int(min(cpus // self.workers, largest)))

    @staticmethod
    def _model_path(model, given: str | None) -> str | None:
        """Where workers load the model from: ``given``, else the directory the driver's model came from; None:
        a copy through the object store (``given="driver"`` forces it)."""
        if given == "driver":
            return None
        if given is not None:
            if not (Path(given) / "config.json").is_file():
                raise ValueError(f"the workers' model {given!r} is not a Hugging Face model directory")
            return str(Path(given).resolve())
        source = str(getattr(model, "name_or_path", "") or "")
        return str(Path(source).resolve()) if source and (Path(source) / "config.json").is_file() else None

    def _connect(self) -> None:
        ray, address = self.ray, self.cfg.ray_address
        check_ray_address(address)
        host = None
        if address not in (None, "auto"):
            host, port = _split_address(address)
            try:
                socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
            except OSError as err:
                raise ValueError(f"cannot reach the Ray head at {address}: {err} (start it with `ray start --head "
                                 "--port PORT` there, or omit --ray-address for a local instance)") from err
        if ray.is_initialized():
            logger.info("using the Ray instance this process is already connected to (%s)",
                        ray.get_runtime_context().gcs_address)  # fmt: skip
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env = dict(self.runtime_env)
        if address is None:
            n_gpu = torch.cuda.device_count()
            workers = self.cfg.workers or (n_gpu or 2)
            threads = self.cfg.worker_threads or max(1, (os.cpu_count() or 1) // workers)
            env_vars = {"PYTHONPATH": self._pythonpath(), **env.get("env_vars", {})}
            with _loopback(ray):
                ray.init(num_cpus=max(os.cpu_count() or 1, workers * threads), num_gpus=n_gpu,
                         include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING,
                         runtime_env={**env, "env_vars": env_vars})  # fmt: skip
            self._owns_ray = True
            logger.info("started a local Ray instance on %s (%d CPUs, %d GPUs)", ray.get_runtime_context().gcs_address,
                        max(os.cpu_count() or 1, workers * threads), n_gpu)  # fmt: skip
            return
        try:
            if host is not None and _is_loopback(host):
                with _loopback(ray):
                    ray.init(address=address, logging_level=logging.WARNING, runtime_env=env or None)
            else:
                ray.init(address=address, logging_level=logging.WARNING, runtime_env=env or None)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ValueError(f"cannot connect to the Ray cluster at {address!r}: {err}") from err
        self._owns_ray = True  # ours to disconnect (the cluster itself stays up)

    @staticmethod
    def _pythonpath() -> str:
        """The source trees this process imports optishear and its kernels from, first: workers of a local instance
        then import the same code as the driver. An installed package's site-packages is left out (every Python
        process has it already, and ahead of the standard library it could shadow it)."""
        import site

        import optishear
        import optishear_kernels

        installed = {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]}
        dirs = [str(Path(m.__file__).resolve().parents[1]) for m in (optishear, optishear_kernels)]
        dirs = [d for d in dirs if d not in installed]
        rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in dirs]
        return os.pathsep.join(dict.fromkeys(dirs + rest))

    def _portable_state(self) -> dict:
        state = dict(self.runner.shared_state())
        state["dense"] = portable_dense(state["dense"])
        state["stats"] = _to_cpu(state["stats"])
        if state.get("gradients") is not None:  # G travels once, like the other statistics
            state["gradients"] = replace(state["gradients"], per_block=_to_cpu(state["gradients"].per_block))
        state["windows"], state["objective_windows"] = state["windows"].cpu(), state["objective_windows"].cpu()
        return state

    def _launch(self) -> None:
        """Put the model (when workers do not load it from a directory) and the state in the object store once, and
        start the workers; they load while the driver prepares the first generation."""
        from ..models import weights_fingerprint

        ray = self.ray
        self._t_launch = time.perf_counter()
        self._state_ref = ray.put(self.state)
        self._model_ref = self.model_path if self.model_path else ray.put(_cpu_model(self.runner.model))
        self._setup = {"config": self.runner.cfg.to_dict(), "dtype": self.dtype,
                       "fingerprint": weights_fingerprint(self.runner.model), "threads": self.threads,
                       "backend": None, "code": code_digest(), "fault": self.fault}  # fmt: skip
        self._actor_cls = ray.remote(TrialWorker).options(num_cpus=self.threads, num_gpus=self.gpus_per_worker,
                                                          max_restarts=0, max_task_retries=0)  # fmt: skip
        for _ in range(self.workers):
            self._spawn()

    def wait_until_ready(self, n: int | None = None, timeout: float | None = None) -> int:
        """Wait until ``n`` workers (default: all) are ready, or ``timeout`` seconds; returns how many are. Trials
        start on the first ready worker anyway; a benchmark waits so as to measure all of them at work."""
        n = len(self._slots) if n is None else n
        deadline = None if timeout is None else time.perf_counter() + timeout
        while sum(s.info is not None for s in self._slots.values()) < n:
            left = None if deadline is None else deadline - time.perf_counter()
            if left is not None and left <= 0:
                break
            self._wait_ready(timeout=left)
        return sum(s.info is not None for s in self._slots.values())

    def _await_first(self) -> None:
        """Wait for the first worker to be ready (a worker that cannot start stops the search)."""
        while not any(s.info for s in self._slots.values()):
            self._wait_ready(timeout=None)
        self._started = True
        logger.info("Ray executor: %d workers x %d threads%s, model %s, per-search state %.1f MB once per worker "
                    "(first ready after %.1f s)", self.workers, self.threads,
                    f" x {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else "",
                    f"loaded from {self.model_path}" if self.model_path else "through the object store",
                    self.state_bytes / 1e6, time.perf_counter() - self._t_launch)  # fmt: skip

    def _spawn(self) -> None:
        actor = self._actor_cls.remote(self._model_ref, self._state_ref, self._setup)
        slot = _Slot(self._next_id, actor, None)
        self._next_id += 1
        if self._stats_ref is not None:
            actor.update_stats.remote(self._stats_ref, sorted(self._shipped_needs))
        slot.ready = actor.info.remote()
        self._slots[slot.id] = slot

    def _wait_ready(self, timeout):
        pending = {s.ready: s for s in self._slots.values() if s.ready is not None}
        if not pending:
            raise RuntimeError("no Ray worker is alive or starting")
        done, _ = self.ray.wait(list(pending), num_returns=1, timeout=timeout)
        for ref in done:
            self._on_ready(pending[ref], ref)

    def _on_ready(self, slot: _Slot, ref) -> None:
        slot.ready = None
        try:
            slot.info = self.ray.get(ref)
        except self.ray.exceptions.RayError as err:
            self._slots.pop(slot.id, None)
            cause = _cause(err)  # our own checks (other weights, other code) raise ValueError: bad set-up, exit 2
            raise (ValueError if cause.startswith("ValueError: ") else RuntimeError)(
                f"a Ray worker could not start: {cause}") from err
        self.events.append({"event": "ready", "worker": slot.id, **slot.info})
        logger.info("worker %d ready on %s (pid %d, %s, %d threads): model loaded in %.1f s, set up in %.1f s",
                    slot.id, slot.info["host"], slot.info["pid"], slot.info["device"], slot.info["threads"],
                    slot.info["load_seconds"], slot.info["setup_seconds"])  # fmt: skip

    def _sync_stats(self, requests: list[TrialRequest]) -> None:
        """Dense statistics the generation's plans need and the workers lack are collected here, once, and sent."""
        from ..methods import method_for

        needs = set()
        for req in requests:
            if req.plan.stats == "dense":
                needs |= method_for(req.plan).needs()
        if needs:
            self.runner.dense_stats(needs)
        have = frozenset(self.runner._stats_needs)
        if self._shipped_needs is None:
            self._shipped_needs = frozenset(self.state["stats_needs"])
        if have != self._shipped_needs:
            self._stats_ref = self.ray.put(_to_cpu(self.runner._stats))
            self._shipped_needs = have
            for s in self._slots.values():
                s.actor.update_stats.remote(self._stats_ref, sorted(have))

    # -- the executor seam ---------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"kind": "ray", "workers": self.workers, "ray_address": self.cfg.ray_address,
                "worker_threads": self.threads, "gpus_per_worker": self.gpus_per_worker,
                "model": self.model_path or "object store", "state_bytes": self.state_bytes}  # fmt: skip

    def busy_workers(self) -> int:
        return sum(s.busy for s in self._slots.values())

    def run(self, requests: list[TrialRequest], known: dict):
        """Run ``requests`` on the workers; yield ``(index, result)`` in request order, each once, with results
        equal to the local runner's (``evaluated`` decided here, in request order; ``known`` updated)."""
        if not requests:
            return
        if not self._started:
            self._await_first()
        self._sync_stats(requests)
        trials = []
        first: dict[str, int] = {}
        queue: deque[int] = deque()
        for pos, req in enumerate(requests):
            t = _Trial(pos, req, self._seq)
            self._seq += 1
            h = req.known_hash
            if h is not None and h in known:
                t.answer = "known"
            elif h is not None and h in first:
                t.answer, t.twin_of = "twin", first[h]
            else:
                queue.append(pos)
                if h is not None:
                    first[h] = pos
            trials.append(t)
        gen = _Generation(self, trials, queue, known)
        yield from gen.results()

    def close(self) -> None:
        """Stop the workers; disconnect from (or, when this executor started it, stop) the Ray instance."""
        for s in list(self._slots.values()):
            try:
                self.ray.kill(s.actor)
            except Exception:  # already gone
                pass
        self._slots.clear()
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns_ray = False


def _cpu_model(model):
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("the driver's model is not on the CPU: give the workers a model directory "
                         "(ExecutorConfig(model=PATH), the CLI's --model) instead of a copy of it")  # fmt: skip
    return model


def _cause(err) -> str:
    """The useful part of a Ray error: the worker's own exception when there is one."""
    if getattr(err, "actor_init_failed", False):  # the message ends with the traceback of the worker's __init__
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        return lines[-1] if lines else type(err).__name__
    cause = getattr(err, "cause", None)
    if cause is not None and not isinstance(cause, type(err)):
        return f"{type(cause).__name__}: {cause}"
    text = " ".join(str(err).split())
    first = text.split(". ")[0]  # Ray's own explanation goes on for a paragraph: its first sentence says what happened
    return (first[:300] or type(err).__name__) + ("." if first and not first.endswith(".") else "")


class _Generation:
    """The dispatch loop of one ``run`` call: idle workers get queued trials, results are judged in request order."""

    def __init__(self, ex: RayExecutor, trials: list[_Trial], queue: deque, known: dict):
        self.ex, self.trials, self.queue, self.known = ex, trials, queue, known
        self.inflight: dict[object, tuple[_Slot, _Trial, str]] = {}
        self.evaluating: dict[str, int] = {}  # mask digest -> the trial measuring it now
        self.values: dict[str, tuple[float, float]] = {}  # digest -> (objective, sparsity) measured in this call

    def results(self):
        nxt, n = 0, len(self.trials)
        while nxt < n:
            self.dispatch()
            while nxt < n:
                out = self.judge(self.trials[nxt])
                if out is None:
                    break
                yield self.trials[nxt].req.index, out
                nxt += 1
            if nxt == n:
                break
            self.dispatch()
            self.wait()

    # -- judging, in request order ----------------------------------------------------------------------------
    def judge(self, t: _Trial) -> dict | None:
        """The local runner's result for ``t``, once everything it depends on is known; else None."""
        known = self.known
        if t.answer == "twin":
            h = t.req.known_hash
            if h not in known:  # the trial it waited for failed: it runs itself, as it would have serially
                t.answer = None
                self.queue.appendleft(t.pos)
                return None
            t.answer = "known"
        if t.answer == "known":
            err, sparsity = known[t.req.known_hash]
            return _result(sparsity, err, t.req.known_hash, False, 0.0)
        if not t.done:
            return None
        if t.failed:
            self.ex.counts["failed_trials"] += 1
            return {"sparsity": None, "objective": None, "mask_hash": None, "evaluated": True, "seconds": t.seconds,
                    "status": "failed", "error": t.error}  # fmt: skip
        h = t.mask_hash
        if h in known:
            err, sparsity = known[h]
            return _result(sparsity, err, h, False, t.seconds)
        if t.objective is not None:
            value = (t.objective, t.sparsity)
        elif h in self.values:  # measured by a later trial with the same masks: this one is the first
            value = self.values[h]
        elif h in self.evaluating:
            return None
        else:  # the trial measuring these masks failed: this one measures them itself
            t.done = False
            self.queue.appendleft(t.pos)
            return None
        known[h] = value
        return _result(value[1], value[0], h, True, t.seconds)

    # -- dispatch and completion ------------------------------------------------------------------------------
    def dispatch(self) -> None:
        for slot in list(self.ex._slots.values()):
            if slot.info is None or slot.busy or not self.queue:
                continue
            t = self._pick(slot)
            if t is None:
                continue
            ref = slot.actor.prune.remote(t.req.plan, t.seq, t.attempts)
            self.ex.trials_by_worker[slot.id] = self.ex.trials_by_worker.get(slot.id, 0) + 1
            if t.attempts:
                self.ex.events.append({"event": "retry", "seq": t.seq, "attempt": t.attempts + 1, "worker": slot.id})
            slot.busy = True
            self.inflight[ref] = (slot, t, "prune")

    def _pick(self, slot: _Slot) -> _Trial | None:
        """The first queued trial that has not failed on ``slot`` (unless it failed on every worker there is)."""
        everyone = set(self.ex._slots)
        for k, pos in enumerate(self.queue):
            t = self.trials[pos]
            if slot.id not in t.tried or everyone <= t.tried:
                del self.queue[k]
                return t
        return None

    def wait(self) -> None:
        ex = self.ex
        starting = {s.ready: s for s in ex._slots.values() if s.ready is not None}
        refs = list(self.inflight) + list(starting)
        if not refs:
            raise RuntimeError(f"the Ray executor has nothing running and {len(self.queue)} trials queued: every "
                               f"worker died ({ex.counts['deaths']} deaths, {ex.counts['replaced']} replaced, at most "
                               f"{ex.max_replacements}); finished trials are in the log: --resume")  # fmt: skip
        done, _ = ex.ray.wait(refs, num_returns=1)
        for ref in done:
            if ref in starting:
                ex._on_ready(starting[ref], ref)
            else:
                self._on_result(ref, *self.inflight.pop(ref))

    def _on_result(self, ref, slot: _Slot, t: _Trial, phase: str) -> None:
        ex, ray = self.ex, self.ex.ray
        slot.busy = False
        try:
            r = ray.get(ref)
        except ray.exceptions.RayActorError as err:
            self._worker_died(slot, err)
            self._attempt_failed(t, slot, phase, f"WorkerDied: worker {slot.id} died during the trial ({_cause(err)})")
            return
        except ray.exceptions.RayError as err:  # an error outside the worker's own handling (serialization, say)
            self._attempt_failed(t, slot, phase, _cause(err))
            return
        t.seconds += r["seconds"]
        if r["status"] != "ok":
            self._attempt_failed(t, slot, phase, r["error"])
            return
        if phase == "prune":
            t.mask_hash, t.sparsity = r["mask_hash"], r["sparsity"]
            h = t.mask_hash
            if h in self.known or h in self.values or h in self.evaluating:
                ex.counts["duplicates_skipped"] += 1
                t.done = True  # its masks are (being) measured elsewhere: ``judge`` copies that value
                return
            self.evaluating[h] = t.pos
            slot.busy = True
            self.inflight[slot.actor.evaluate.remote(t.seq, t.attempts)] = (slot, t, "evaluate")
            return
        self.evaluating.pop(t.mask_hash, None)
        t.objective = r["objective"]
        self.values[t.mask_hash] = (t.objective, t.sparsity)
        t.done = True

    def _attempt_failed(self, t: _Trial, slot: _Slot, phase: str, error: str) -> None:
        ex = self.ex
        if phase == "evaluate":
            self.evaluating.pop(t.mask_hash, None)
        t.attempts += 1
        t.tried.add(slot.id)
        t.error = error
        t.mask_hash = t.sparsity = t.objective = None
        ex.events.append({"event": "attempt failed", "seq": t.seq, "attempt": t.attempts, "worker": slot.id,
                          "phase": phase, "error": error})  # fmt: skip
        if t.attempts >= MAX_ATTEMPTS:
            logger.warning("trial %d failed on %d workers, recorded as failed: %s", t.seq, len(t.tried), error)
            t.done = t.failed = True
            return
        ex.counts["retries"] += 1
        logger.warning("trial %d failed on worker %d (%s): %s; running it again on another worker", t.seq, slot.id,
                       phase, error)  # fmt: skip
        self.queue.appendleft(t.pos)

    def _worker_died(self, slot: _Slot, err) -> None:
        ex = self.ex
        ex._slots.pop(slot.id, None)
        ex.counts["deaths"] += 1
        where = f"{slot.info['host']} pid {slot.info['pid']}" if slot.info else "?"
        ex.events.append({"event": "died", "worker": slot.id, "where": where, "error": _cause(err)})
        for ref, (s, t, phase) in list(self.inflight.items()):  # other calls it had queued (none: one at a time)
            if s is slot:
                self.inflight.pop(ref)
                self._attempt_failed(t, slot, phase, f"WorkerDied: worker {slot.id} died")
        if ex.counts["replaced"] < ex.max_replacements:
            ex.counts["replaced"] += 1
            ex._spawn()
            logger.warning("worker %d (%s) died: %s; starting a new worker", slot.id, where, _cause(err))
        else:
            logger.error("worker %d (%s) died: %s; no replacement left (%d replaced)", slot.id, where, _cause(err),
                         ex.counts["replaced"])  # fmt: skip


def _result(sparsity, objective, mask_hash, evaluated: bool, seconds: float) -> dict:
    return {"sparsity": sparsity, "objective": objective, "mask_hash": mask_hash, "evaluated": evaluated,
            "seconds": seconds, "status": "ok", "error": None}  # fmt: skip


__all__ = ["RayExecutor", "TrialWorker", "FaultInjection", "import_ray", "code_digest", "portable_dense",
           "tensor_bytes", "INSTALL_HINT", "MAX_ATTEMPTS"]
