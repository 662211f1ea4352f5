"""Searches on Ray workers give the serial run's trials and recipe; faults, resume and bad input.

One private Ray instance (2 CPUs, bound to 127.0.0.1) serves the module and is shut down at its end; the CLI test
lets the executor start and stop its own. Workers import this tree's code (asserted). Each search here uses
2 workers of one thread, the tiny random LLaMA, and compares against the same search run serially in-process.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from optishear.plan import Plan
from optishear.search import SearchConfig, TrialRunner, search
from optishear.search.executor import ExecutorConfig, LocalExecutor, TrialRequest, make_executor

from ..conftest import ROOT, Killed, kill_after, random_windows, tiny_llama

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'optishear[distributed]'")

from optishear.search.ray_executor import FaultInjection, RayExecutor, _loopback  # noqa: E402

TIMING = ("seconds",)


@pytest.fixture(scope="module")
def ray_instance():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    pythonpath = RayExecutor._pythonpath()
    with _loopback(ray):
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})  # fmt: skip
    try:
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
        yield ray
    finally:
        ray.shutdown()


def _cfg(space="metric", **kw):
    plan = Plan(nsamples=4, seqlen=32, batch_size=2, seed=0, stats="dense")
    base = dict(space=space, pop_size=8, generations=3, objective_windows=0, validate_top=0)
    return SearchConfig(plan=plan, **{**base, **kw})


def _search(path, cfg, executor=None, **kw):
    return search(tiny_llama(layers=4), None, cfg, path, windows=random_windows(4, 32), progress=False,
                  executor=executor, **kw)  # fmt: skip


def _trials(path):
    out = []
    for line in (path / "trials.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for k in TIMING:
            rec.pop(k)
        out.append(rec)
    return out


def _recipe(path):
    recipe = json.loads((path / "optishear_recipe.json").read_text())
    recipe["search"].pop("gradient_seconds", None)  # a timing
    return recipe


def _ray(workers=2, **kw):
    """A builder for ``search(executor=...)`` that keeps the executor for inspection and waits for every worker
    (trials would start on the first one ready, and the tiny model's take milliseconds)."""
    cfg = ExecutorConfig(executor="ray", workers=workers, worker_threads=1)
    made = []

    def build(runner):
        made.append(RayExecutor(runner, cfg, **kw))
        assert made[-1].wait_until_ready(timeout=300) == workers
        return made[-1]

    return build, made


def _assert_same_run(a, b):
    ta, tb = _trials(a), _trials(b)
    assert len(ta) == len(tb) and ta == tb
    assert len({t["key"] for t in tb}) == len(tb)  # every trial once
    assert _recipe(a) == _recipe(b)
    assert json.loads((a / "pareto.json").read_text()) == json.loads((b / "pareto.json").read_text())


@pytest.mark.parametrize("space,objective", [("metric", "kl"), ("blocks", "fro"), ("symbolic", "kl")])
def test_two_ray_workers_give_the_serial_runs_trials_and_recipe(tmp_path, ray_instance, space, objective):
    cfg = _cfg(space, objective=objective)
    serial = _search(tmp_path / "serial", cfg)
    build, made = _ray()
    res = _search(tmp_path / "ray", cfg, build)
    _assert_same_run(tmp_path / "serial", tmp_path / "ray")
    key = lambda r: (r.metric, r.block_sparsity, r.objective, r.distinct, r.trials)  # noqa: E731
    assert key(res) == key(serial)
    ex = made[0]
    ready = [e for e in ex.events if e["event"] == "ready"]
    assert len(ready) == 2 and len({e["pid"] for e in ready}) == 2 and all(e["threads"] == 1 for e in ready)
    assert all(e["pid"] != os.getpid() for e in ready) and sorted(ex.trials_by_worker) == [0, 1]  # both worked
    # the workers import this tree's code, not another installed copy
    assert all(e["optishear_file"].startswith(str(ROOT / "optishear")) for e in ready)
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["executor"]["kind"] == "ray" and manifest["executor"]["workers"] == 2
    assert 0 < manifest["executor"]["state_bytes"] < 10**6
    hist = json.loads((tmp_path / "ray" / "history.json").read_text())
    assert all(h["workers"] == 2 for h in hist) and hist[0]["trials_per_minute"] > 0 and hist[0]["workers_busy"] > 0
    assert not ex._slots, "close() stops the workers"
    if space == "symbolic":  # the gradient statistics travel once with the state, and the trials read them
        assert ex.state["gradients"] is not None and manifest["gradients"]["digest"]
        assert any("G" in t["metric"] for t in _trials(tmp_path / "ray"))


@pytest.mark.parametrize("objective", ["kl", "fro"])
def test_the_shipped_state_measures_what_the_drivers_does_and_carries_only_what_the_objective_reads(objective):
    from optishear.objectives import reconstruction_error
    from optishear.search.ray_executor import _attach_head, portable_dense, tensor_bytes

    windows = random_windows(4, 32)
    runner = TrialRunner(tiny_llama(layers=2), windows, _cfg(objective=objective))
    state = runner.shared_state()
    shipped = portable_dense(state["dense"])
    assert shipped._w is None and (shipped.gram is None) == (objective == "kl")
    assert tensor_bytes(shipped) < tensor_bytes(state["dense"])  # the head's weights stay home
    runner.apply(runner.plan_for({"metric": "w:none*none,x:none*sqrt"}))
    expect = reconstruction_error(runner.model, runner.dense, objective)
    _attach_head(shipped, runner.model)
    assert reconstruction_error(runner.model, shipped, objective) == expect


def test_equal_masks_in_flight_together_are_evaluated_once_and_recorded_as_serially(ray_instance):
    """Requests built so that two workers prune equal masks at once, plus answers from the table and known digests:
    the records (``evaluated``, copied objectives) equal the local runner's, in request order."""
    cfg = _cfg()
    windows = random_windows(4, 32)
    local = TrialRunner(tiny_llama(layers=4), windows, cfg)
    remote = TrialRunner(tiny_llama(layers=4), windows, cfg)
    wanda, mag, ria = "w:none*none,x:none*sqrt", "w:none*none,x:none*none", "w:rowcol*none,x:none*sqrt"
    plans = [remote.plan_for({"metric": m}) for m in (wanda, wanda, mag, ria, "w:row*none,x:none*sqrt", mag)]
    seed = local.run(plans[3])  # already in the table: answered without pruning when its digest is given
    known_l = {seed["mask_hash"]: (seed["objective"], seed["sparsity"])}
    known_r = dict(known_l)
    reqs = [TrialRequest(j, p, seed["mask_hash"] if j == 3 else None) for j, p in enumerate(plans)]
    expect = list(LocalExecutor(local).run(reqs, known_l))
    ex = RayExecutor(remote, ExecutorConfig(executor="ray", workers=2, worker_threads=1))
    try:
        got = list(ex.run(reqs, known_r))
    finally:
        ex.close()
    strip = lambda rs: [(i, {k: v for k, v in r.items() if k not in TIMING}) for i, r in rs]  # noqa: E731
    assert strip(got) == strip(expect)
    assert [r["evaluated"] for _, r in got] == [True, False, True, False, False, False]  # row*none ranks like wanda
    assert known_r == known_l


def test_a_worker_killed_mid_trial_is_replaced_and_its_trial_runs_elsewhere_once(tmp_path, ray_instance):
    cfg = _cfg()
    _search(tmp_path / "serial", cfg)
    build, made = _ray(fault=FaultInjection(kill={3: "evaluate"}))  # killed after pruning, before the objective
    res = _search(tmp_path / "ray", cfg, build)
    _assert_same_run(tmp_path / "serial", tmp_path / "ray")  # nothing lost, nothing counted twice
    ex = made[0]
    assert ex.counts["deaths"] == 1 and ex.counts["replaced"] == 1 and ex.counts["retries"] == 1
    failed = [e for e in ex.events if e["event"] == "attempt failed"]
    retry = [e for e in ex.events if e["event"] == "retry"]
    assert len(failed) == 1 and failed[0]["seq"] == 3 and "WorkerDied" in failed[0]["error"]
    assert len(retry) == 1 and retry[0]["seq"] == 3 and retry[0]["worker"] != failed[0]["worker"]
    assert ex._next_id == 3  # a third worker was started in its place
    assert res.failed == 0


def test_a_trial_that_fails_on_two_workers_is_recorded_failed_and_the_search_goes_on(tmp_path, ray_instance):
    cfg = _cfg()
    build, made = _ray(fault=FaultInjection(fail={2}))
    res = _search(tmp_path / "ray", cfg, build)
    trials = _trials(tmp_path / "ray")
    failed = [t for t in trials if t["status"] == "failed"]
    assert len(failed) == 1 and "injected fault in trial 2" in failed[0]["error"] and failed[0]["objective"] is None
    assert res.failed == 1 and res.trials == cfg.pop_size * cfg.generations
    assert len({t["key"] for t in trials}) == len(trials)
    attempts = [e for e in made[0].events if e["event"] == "attempt failed"]
    assert [e["seq"] for e in attempts] == [2, 2] and attempts[0]["worker"] != attempts[1]["worker"]
    assert made[0].counts["deaths"] == 0 and made[0].counts["failed_trials"] == 1


def test_a_ray_run_log_resumes_with_the_local_executor_to_the_serial_result(tmp_path, ray_instance):
    cfg = _cfg(generations=4)
    _search(tmp_path / "serial", cfg)
    kill = kill_after(10)
    build, made = _ray()
    with pytest.raises(Killed):
        _search(tmp_path / "cut", cfg, build, on_trial=kill)
    assert not made[0]._slots and not made[0]._owns_ray  # stopped at the interruption; the module's Ray is kept
    assert len((tmp_path / "cut" / "trials.jsonl").read_text().splitlines()) == 10
    rerun = []
    _search(tmp_path / "cut", cfg, "local", resume=True, on_trial=rerun.append)
    assert not {r["key"] for r in rerun} & {r["key"] for r in kill.seen}, "a finished trial ran again"
    _assert_same_run(tmp_path / "serial", tmp_path / "cut")


@pytest.mark.parametrize("nodes,workers,gpus,threads", [
    ([{"CPU": 2}], 2, 0, 1),  # this machine: one thread each
    ([{"CPU": 3}] * 3, 2, 0, 3),  # 9 CPUs / 2 would be 4, more than any node has
    ([{"CPU": 64}] + [{"CPU": 32, "GPU": 8}] * 4, 32, 1, 4),  # a CPU-only head: GPU workers get a GPU node's share
])  # fmt: skip
def test_default_worker_threads_let_every_worker_be_placed(nodes, workers, gpus, threads):
    ex = RayExecutor.__new__(RayExecutor)  # the rule alone, on described clusters
    ex.ray = type("FakeRay", (), {"nodes": lambda self: [{"Alive": True, "Resources": r} for r in nodes]})()
    ex.workers, ex.gpus_per_worker = workers, gpus
    assert ex._default_threads(sum(r["CPU"] for r in nodes)) == threads


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_bad_executor_settings_are_clear_errors(monkeypatch):
    for bad, match in [(dict(executor="dask"), "executor must be one of"), (dict(workers=0), "positive integer"),
                       (dict(executor="local", workers=3), "needs --executor ray"),
                       (dict(worker_threads=2), "--worker-threads needs --executor ray"),
                       (dict(executor="ray", ray_address="head-node"), "HOST:PORT"),
                       (dict(executor="ray", ray_address="h:99999"), "HOST:PORT"),
                       (dict(executor="ray", worker_threads=0), "positive integer")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            ExecutorConfig(**bad).validate()
    ExecutorConfig(executor="ray", ray_address="ray://10.0.0.5:10001").validate()  # forms only: nothing is contacted
    runner = TrialRunner(tiny_llama(), random_windows(2, 16), _cfg())
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(ValueError, match=f"cannot reach the Ray head at {address}"):
        make_executor(ExecutorConfig(executor="ray", ray_address=address), runner)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ValueError, match=r"pip install 'optishear\[distributed\]'"):
        ExecutorConfig(executor="ray").validate()
    with pytest.raises(ValueError, match="optishear.distributed"):
        make_executor("ray", runner)


def test_cli_search_on_ray_starts_and_stops_its_own_instance(tmp_path, tiny_model_dir, capsys):
    """The Ray run in a subprocess (it starts its own instance, this module's is up); the rest in-process."""
    from optishear.cli import main

    rng = torch.Generator().manual_seed(0)
    words = ["pruning", "weights", "model", "layer", "the", "of", "sparse", "token", "search", "metric"]
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(words[int(i)] for i in torch.randint(0, len(words), (6000,), generator=rng)))
    common = ["search", "--model", str(tiny_model_dir), "--calib", str(calib), "--nsamples", "4", "--seqlen", "32",
              "--space", "metric", "--pop-size", "6", "--generations", "2", "--objective-windows", "2",
              "--objective-seqlen", "24", "--validate-top", "0", "--json"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "bad"), "--executor", "ray", "--ray-address", "nowhere"]) == 2
    assert "--ray-address must be" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "serial"), "--quiet"]) == 0
    serial = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "kernels")]),
           "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "optishear", *common, "--out", str(tmp_path / "ray"), "--executor",
                           "ray", "--workers", "2"], capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out, err = json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr
    _assert_same_run(tmp_path / "serial", tmp_path / "ray")
    assert out["metric"] == serial["metric"] and out["objective"] == serial["objective"]
    assert "started a local Ray instance on 127.0.0.1:" in err and "/2 busy" in err and "trials/min" in err
    assert "model loaded from " + str(tiny_model_dir.resolve()) in err  # workers loaded the directory themselves
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text())["executor"]["workers"] == 2
