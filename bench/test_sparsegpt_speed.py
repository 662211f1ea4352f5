"""SparseGPT's whole prune of SmolLM2-135M beside Wanda's, and a search trial with and without the weight update.

    python -m pytest bench/test_sparsegpt_speed.py --benchmark-enable --benchmark-json=bench/sparsegpt.json
    python bench/report.py bench/sparsegpt.json --baseline wanda

``test_whole_prune``: the sequential protocol (32 x 512 calibration windows from wiki.valid.raw, seed 0), the whole
``optishear.prune`` call: Wanda (act_norm statistics, fused kernels) against SparseGPT (float64 Hessians, one per
distinct input, then the OBS update column by column) at 50% unstructured, Wanda + ``update="sparsegpt"``, ADMM
(its gradual mask and least-squares update, 20 iterations) and Wanda + ``update="admm"``.
The goal for SparseGPT: at most 2x Wanda's time (ADMM has none: it is measured to be stated).
``test_one_trial``: one search trial (dense statistics computed once, KL on 4 x 256 prompts) with the update off and
on: the update's cost per trial, Hessians and their inverses cached across trials.
"""

import itertools

import pytest

from optishear import Plan, prune
from optishear.models import WeightSnapshot, model_linears
from optishear.search import SearchConfig, TrialRunner, search_plan_defaults

METRICS = itertools.cycle(["w:none*none,x:none*none", "w:rowcol*none,x:none*none", "w:col*none,x:none*sqrt",
                           "w:none*sqrt,x:none*none"])  # fmt: skip


@pytest.mark.parametrize("provider", ["wanda", "sparsegpt", "wanda+update", "admm", "wanda+admm"])
def test_whole_prune(benchmark, machine_info, smollm2, provider):
    model, windows = smollm2.model, smollm2.windows
    machine_info(provider=provider, case=f"SmolLM2-135M, {smollm2.nsamples}x{smollm2.seqlen} calibration, "
                 "50% unstructured, sequential statistics")  # fmt: skip
    metric, update = {"wanda": ("wanda", "none"), "sparsegpt": ("sparsegpt", "none"),
                      "wanda+update": ("wanda", "sparsegpt"), "admm": ("admm", "none"),
                      "wanda+admm": ("wanda", "admm")}[provider]  # fmt: skip
    plan = Plan(metric=metric, update=update, sparsity=0.5, nsamples=smollm2.nsamples, seqlen=smollm2.seqlen,
                batch_size=4)
    snap = WeightSnapshot().save_all(model_linears(model))

    def run():
        snap.restore()
        return prune(model, plan=plan, windows=windows, progress=False)

    res = benchmark.pedantic(run, rounds=1, iterations=1)
    snap.restore()
    assert 0.49 < res.sparsity < 0.51


@pytest.mark.parametrize("update", ["none", "sparsegpt", "admm"])
def test_one_trial(benchmark, machine_info, smollm2, update):
    model, windows, prompts = smollm2.model, smollm2.windows, smollm2.prompts
    machine_info(provider=f"trial-update-{update}", case="SmolLM2-135M, dense statistics, KL on 4x256, 50%")
    plan = Plan(**{**search_plan_defaults().to_dict(), "nsamples": smollm2.nsamples, "seqlen": smollm2.seqlen,
                 "update": update})
    runner = TrialRunner(model, windows, SearchConfig(plan=plan), objective_windows=prompts)
    runner.run(runner.trial_plan("w:none*none,x:none*none", [0.5] * len(runner.linears)))  # Hessians factored here
    try:
        rec = benchmark.pedantic(lambda: runner.run(runner.trial_plan(next(METRICS), [0.5] * len(runner.linears))),
                                 rounds=3, iterations=1)  # fmt: skip
    finally:
        runner.close()
    assert rec["status"] == "ok" and rec["evaluated"]
