"""One search trial on SmolLM2-135M: ours against an OptiShear-style trial, side by side.

    python -m pytest bench/test_trial_speed.py --benchmark-enable --benchmark-json=bench/trial.json
    python bench/report.py bench/trial.json --baseline optishear-style

OptiShear-style (what the released code does per trial): reload the model from disk, run the dense model on
the example prompts, run the full sequential statistics pass over the calibration windows while pruning,
run the pruned model on the prompts, compare full logits. Ours: restore the dense weights in place, prune
with statistics computed once per search (or, ``ours-faithful``, with the sequential pass per trial), run the
pruned model on the prompts, compare through the head's weights (dense outputs computed once per search).
Both use the same calibration windows (32 x 512, WikiText-2 valid) and prompts (4 x 256, other positions of
the same text), and a different metric each round, so that no trial is answered from the dedupe cache.
"""

import itertools

import pytest

from optishear import DenseOutputs, Plan, load_model, prune, reconstruction_error
from optishear.search import SearchConfig, TrialRunner, search_plan_defaults

METRICS = itertools.cycle(["w:none*none,x:none*none", "w:none*sqrt,x:none*none", "w:col*none,x:none*sqrt",
                           "w:none*log,x:none*none", "w:rowcol*none,x:none*none", "w:none*square,x:col*none"])


def optishear_style_trial(path, windows, prompts, metric):
    model, _ = load_model(path)  # reload every trial
    dense = DenseOutputs(model, prompts, batch_size=4, head_shortcut=False)  # dense forward, full logits
    prune(model, plan=Plan(metric=metric, sparsity=0.5, batch_size=4, stats="sequential"), windows=windows,
          progress=False)  # fmt: skip
    return reconstruction_error(model, dense, "fro")


@pytest.mark.parametrize("provider", ["optishear-style", "ours", "ours-kl", "ours-faithful"])
def test_one_trial(benchmark, machine_info, smollm2, provider):
    path, model, windows, prompts = smollm2.path, smollm2.model, smollm2.windows, smollm2.prompts
    machine_info(provider=provider, case=f"SmolLM2-135M, {smollm2.nsamples}x{smollm2.seqlen} calibration, "
                 f"{len(prompts)}x{prompts.shape[1]} prompts, 50% unstructured")  # fmt: skip
    if provider.startswith("ours"):
        plan = Plan(**{**search_plan_defaults().to_dict(), "nsamples": smollm2.nsamples, "seqlen": smollm2.seqlen,
                       "batch_size": 4, "stats": "sequential" if provider == "ours-faithful" else "dense"})  # fmt: skip
        cfg = SearchConfig(plan=plan, objective="kl" if provider == "ours-kl" else "fro")
        runner = TrialRunner(model, windows, cfg, objective_windows=prompts)
        wanda = runner.run(runner.trial_plan("w:none*none,x:none*none", [0.5] * len(runner.linears)))
        benchmark.extra_info["wanda_objective"] = wanda["objective"]  # quality of this statistics mode
        benchmark.extra_info["setup_seconds"] = runner.setup_seconds  # once per search

        def trial():  # no shared table of known masks: every timed trial is a full evaluation
            rec = runner.run(runner.trial_plan(next(METRICS), [0.5] * len(runner.linears)))
            assert rec["evaluated"]
            return rec

        rounds = 2 if provider == "ours-faithful" else 3
        benchmark.pedantic(trial, rounds=rounds, iterations=1, warmup_rounds=0 if provider == "ours-faithful" else 1)
        runner.close()
    else:
        benchmark.pedantic(lambda: optishear_style_trial(path, windows, prompts, next(METRICS)), rounds=3,
                           iterations=1, warmup_rounds=0)  # fmt: skip
