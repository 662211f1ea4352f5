"""The paper account of the Ray executor's scaling: a 7B model on 8 GPUs per host, 1 to 4 hosts.

    python bench/scaling_account.py                     # the README's table (assumed trial time 4 s)
    python bench/scaling_account.py --trial-seconds 10 --tau-ms 10 --driver-seconds 2

A generation of ``d`` distinct new trials on ``N`` workers takes

    wall(N) = t_drv + r * T * (1 + z_N * cv / sqrt(r)) + r * tau,     r = ceil(d / N)

(``t_drv``: the driver's serial part per generation: ask/tell, dedupe, population digests, log; ``T``: one trial
on one GPU; ``cv``: the spread of trial times, ``z_N``: the expected maximum of N standard normals, so the
straggler term is the slowest worker's share of the generation barrier; ``tau``: the two actor calls of a trial).
Throughput is ``d / wall(N)`` distinct evaluations per second; the efficiency against linear scaling is
``d * T / (N * wall(N))`` and the scaling against one GPU ``wall(1) / (N * wall(N))``.

The per-search state a worker receives once (KL objective) is, in bytes,

    8 * (n_stat * L_stat + n_obj * L_obj)          token windows (int64)
    + 4 * n_obj * L_obj * d_model                  dense outputs, compact form: m_t = p_t W per token (float32)
    + 8 * n_obj * L_obj                            their negative entropies (float64)
    + 4 * layers * (3 * d_model + d_ff)            activation norms, one per distinct linear input (float32)

(with ``--objective fro``: the dense head inputs, ``4 * n_obj * L_obj * d_model``, and ``W^T W``, ``8 * d_model^2``,
instead of the second and third lines). For SmolLM2-135M this gives 2,898,432 bytes, what the executor measured
(``bench/ray_throughput.py`` records ``state_bytes``).
"""

from __future__ import annotations

import argparse
import math
import random

MODELS = {  # d_model, d_ff, layers, parameters
    "llama-2-7b": (4096, 11008, 32, 6.74e9),
    "smollm2-135m": (576, 1536, 30, 1.35e8),
}


def expected_max_normal(n: int, samples: int = 20000, seed: int = 0) -> float:
    """E[max of n standard normals] by Monte Carlo with a fixed seed (1.43 for 8, 2.08 for 32)."""
    if n <= 1:
        return 0.0
    rng = random.Random(seed)
    return sum(max(rng.gauss(0.0, 1.0) for _ in range(n)) for _ in range(samples)) / samples


def state_bytes(model: str, n_stat=32, l_stat=512, n_obj=4, l_obj=256, objective="kl") -> int:
    d, ff, layers, _ = MODELS[model]
    windows = 8 * (n_stat * l_stat + n_obj * l_obj)
    stats = 4 * layers * (3 * d + ff)
    if objective == "kl":
        return windows + 4 * n_obj * l_obj * d + 8 * n_obj * l_obj + stats
    return windows + 4 * n_obj * l_obj * d + 8 * d * d + stats


def generation_wall(n: int, d: int, t: float, t_drv: float, tau: float, cv: float, z: dict) -> float:
    r = math.ceil(d / n)
    return t_drv + r * t * (1 + z[n] * cv / math.sqrt(r)) + r * tau


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="paper account of the Ray executor's scaling")
    ap.add_argument("--trial-seconds", type=float, default=4.0, help="T: one 7B trial on one GPU (assumed)")
    ap.add_argument("--driver-seconds", type=float, default=2.0, help="t_drv per generation (assumed)")
    ap.add_argument("--tau-ms", type=float, default=10.0, help="two actor calls per trial across hosts (assumed)")
    ap.add_argument("--cv", type=float, default=0.05, help="spread of trial times (assumed)")
    ap.add_argument("--gpus-per-host", type=int, default=8)
    args = ap.parse_args(argv)
    t, t_drv, tau, cv = args.trial_seconds, args.driver_seconds, args.tau_ms / 1e3, args.cv
    ns = [args.gpus_per_host * h for h in (1, 2, 3, 4)]
    z = {n: expected_max_normal(n) for n in [1, *ns]}
    print(f"per-search state per worker (KL, 32x512 statistics, 4x256 prompts): 7B {state_bytes('llama-2-7b'):,} B, "
          f"SmolLM2 {state_bytes('smollm2-135m'):,} B; Frobenius: 7B {state_bytes('llama-2-7b', objective='fro'):,} B")
    print(f"model per worker: 7B bf16 {MODELS['llama-2-7b'][3] * 2 / 1e9:.1f} GB")
    print(f"T = {t:g} s, t_drv = {t_drv:g} s, tau = {tau * 1e3:g} ms, cv = {cv:g}")
    print("| search (distinct trials per generation) | hosts x GPUs | distinct / min | efficiency vs linear "
          "| scaling vs 1 GPU |")
    print("|---|---|---|---|---|")
    for label, pop, frac in (("blocks or joint, population 256", 256, 0.83),
                             ("blocks or joint, population 128", 128, 0.83), ("metric, population 20", 20, 0.18)):
        d = max(1, round(pop * frac))
        w1 = generation_wall(1, d, t, t_drv, tau, cv, z)
        for n in ns:
            w = generation_wall(n, d, t, t_drv, tau, cv, z)
            print(f"| {label} ({d}) | {n // args.gpus_per_host} x {args.gpus_per_host} | {60 * d / w:.0f} | "
                  f"{d * t / (n * w):.2f} | {w1 / (n * w):.2f} |")


if __name__ == "__main__":
    main()
