"""Distinct evaluations per minute: the serial search (one process, 2 threads) against 2 Ray workers of one thread
each, side by side in one run on the same cores, on SmolLM2-135M (what the executor costs where no parallel gain
is possible: the cores are the same).

    nice -n 10 python bench/ray_throughput.py --repeats 2 --out bench/ray_throughput.json   # ~20 min on 2 quiet cores

Both runs search the same metric space with the same seed, statistics (32 x 512) and objective (KL on 4 x 256);
validation is off (the trials are what is measured). The trial phase of each run is the sum of its generations'
wall times (``history.json``), so set-up (dense outputs and statistics, Ray start, worker start) is excluded and
reported apart; the Ray workers are all ready before the first generation. ``--repeats 2`` runs serial, Ray, Ray,
serial, ... so that a drift in the machine's load does not favour one side. The JSON records the machine (core
count, CPU, load average before and after), versions, every run's numbers, whether both runs wrote the same trials
(timings aside), and the ratio (Ray's distinct evaluations per minute / the serial run's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIKI = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.valid.raw"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _trials(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "trials.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec.pop("seconds", None)
        out.append(rec)
    return out


def _measure(kind: str, cfg, calib: str, out_dir: Path, workers: int) -> dict:
    import torch
    from optishear.models import load_model
    from optishear.search import search
    from optishear.search.executor import ExecutorConfig
    from optishear.search.ray_executor import RayExecutor

    torch.set_num_threads(2)  # the serial run's threads; the driver's set-up is the same in both runs
    model, tok = load_model()
    made = []

    def ray_executor(runner):
        made.append(RayExecutor(runner, ExecutorConfig(executor="ray", workers=workers, worker_threads=1)))
        t0 = time.perf_counter()
        ready = made[-1].wait_until_ready()
        made[-1].ready_seconds = time.perf_counter() - t0
        assert ready == workers, f"only {ready} of {workers} workers started"
        return made[-1]

    t0 = time.perf_counter()
    res = search(model, tok, cfg, out_dir, executor=ray_executor if kind == "ray" else None, progress=False)
    total = time.perf_counter() - t0
    hist = json.loads((out_dir / "history.json").read_text())
    trial_phase = sum(h["seconds_per_trial"] * cfg.pop_size for h in hist)
    trials = _trials(out_dir)
    evaluated = sum(t["evaluated"] for t in trials)
    row = {"kind": kind, "trials": res.trials, "dispatched": len(trials), "distinct_evaluations": evaluated,
           "trial_phase_seconds": trial_phase, "total_seconds": total,
           "distinct_per_minute": 60.0 * evaluated / trial_phase, "metric": res.metric, "objective": res.objective,
           "mean_workers_busy": statistics.fmean(h["workers_busy"] for h in hist)}  # fmt: skip
    if made:
        ex = made[0]
        row.update(workers=ex.workers, worker_threads=ex.threads, state_bytes=ex.state_bytes,
                   workers_ready_seconds=ex.ready_seconds, counts=dict(ex.counts),
                   worker_load_seconds=[e["load_seconds"] for e in ex.events if e["event"] == "ready"],
                   trials_by_worker=dict(ex.trials_by_worker))  # fmt: skip
    else:
        row.update(workers=1, threads=torch.get_num_threads())
    return row


class _Echo:
    def echo(self, x):
        return x


def _roundtrip_ms(calls: int = 200) -> float:
    """Median wall time of one actor call and its answer on a local Ray instance (a trial makes two)."""
    import ray
    from optishear.search.ray_executor import _loopback

    with _loopback(ray):
        ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    try:
        actor = ray.remote(_Echo).options(num_cpus=1).remote()
        ray.get(actor.echo.remote(0))
        times = []
        for i in range(calls):
            t0 = time.perf_counter()
            ray.get(actor.echo.remote(i))
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)
    finally:
        ray.shutdown()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", default=str(WIKI), help="calibration text (default: WikiText-2 valid)")
    ap.add_argument("--pop-size", type=int, default=16)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="serial/Ray pairs, alternating which goes first")
    ap.add_argument("--out", default=str(ROOT / "bench" / "ray_throughput.json"))
    args = ap.parse_args(argv)
    if not Path(args.calib).is_file():
        sys.exit(f"calibration text {args.calib} not found")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray
    import torch
    from optishear import __version__
    from optishear.search import SearchConfig, search_plan_defaults

    plan = search_plan_defaults()
    plan.calib = args.calib
    cfg = SearchConfig(plan=plan, space="metric", pop_size=args.pop_size, generations=args.generations,
                       validate_top=0)  # fmt: skip
    load_before = os.getloadavg()
    runs, same = [], []
    tmp = Path(tempfile.mkdtemp(prefix="optishear-ray-bench-"))
    try:
        for r in range(args.repeats):
            order = ["serial", "ray"] if r % 2 == 0 else ["ray", "serial"]
            pair = {}
            for kind in order:
                out_dir = tmp / f"{kind}{r}"
                row = _measure(kind, cfg, args.calib, out_dir, args.workers)
                row["repeat"] = r
                row["loadavg_after"] = os.getloadavg()
                runs.append(row)
                pair[kind] = out_dir
                print(f"[{r}] {kind}: {row['distinct_evaluations']} distinct in {row['trial_phase_seconds']:.1f} s "
                      f"= {row['distinct_per_minute']:.2f}/min (total {row['total_seconds']:.1f} s)", flush=True)
            same.append(_trials(pair["serial"]) == _trials(pair["ray"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    roundtrip = _roundtrip_ms()
    rates = {k: [r["distinct_per_minute"] for r in runs if r["kind"] == k] for k in ("serial", "ray")}
    ratios = [ray_r / ser for ser, ray_r in zip(rates["serial"], rates["ray"])]
    result = {
        "bench": "ray_throughput", "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python bench/ray_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_model(), "platform": platform.platform(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
                     "optishear": __version__},
        "config": {"space": "metric", "pop_size": args.pop_size, "generations": args.generations,
                   "statistics": f"{plan.nsamples}x{plan.seqlen}", "objective": f"kl on {cfg.objective_windows}x"
                   f"{cfg.objective_seqlen}", "serial_threads": 2, "workers": args.workers, "worker_threads": 1},
        "runs": runs, "identical_trials": same, "ratios": ratios, "ray_call_roundtrip_ms": roundtrip,
        "ratio_median": statistics.median(ratios),
        "goal": "ratio >= 0.9 (the executor costs at most 10% where no parallel gain is possible)",
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"ratio (Ray {args.workers}x1 thread / serial 2 threads, distinct evaluations per minute): "
          f"{', '.join(f'{x:.3f}' for x in ratios)}; identical trials: {same}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
