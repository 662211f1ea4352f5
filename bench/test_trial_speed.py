"""One search trial on SmolLM2-135M: ours against an OptiShear-style trial, side by side.

    python -m pytest bench/test_trial_speed.py --benchmark-enable --benchmark-json=bench/trial.json
    python bench/report.py bench/trial.json --baseline optishear-style

OptiShear-style (what the released code does per trial): reload the model from disk, run the full
sequential statistics pass while pruning, run the dense model and the pruned model on the calibration
prompts, compare. Ours: restore the dense weights in place, prune with statistics computed once, run the
pruned model only (dense outputs cached). Both on the same calibration windows and metric; ours is timed
on distinct metrics so that no trial is answered from the mask-dedupe cache.
"""

import itertools
from pathlib import Path

import pytest
from optishear import CalibSpec, DenseOutputs, PruneConfig, calibration_windows, load_model, prune
from optishear import reconstruction_error
from optishear.models import default_model_dir
from optishear.search import SearchConfig, TrialRunner

WIKI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw" / "wiki.valid.raw"
NSAMPLES, SEQLEN = 4, 256
METRICS = itertools.cycle(["w:none*none,x:none*none", "w:none*sqrt,x:none*none", "w:col*none,x:none*sqrt",
                           "w:none*log,x:none*none", "w:rowcol*none,x:none*none", "w:none*square,x:col*none"])


@pytest.fixture(scope="module")
def setup():
    if not WIKI.is_file():
        pytest.skip(f"{WIKI} not found")
    path = default_model_dir()
    model, tok = load_model(path)
    windows = calibration_windows(CalibSpec(str(WIKI), NSAMPLES, SEQLEN, 0), tok)
    return path, model, windows


def optishear_style_trial(path, windows, metric):
    model, _ = load_model(path)  # reload every trial
    # dense forward every trial, full logits compared as the released code does
    dense = DenseOutputs(model, windows, batch_size=4, head_shortcut=False)
    prune(model, config=PruneConfig(metric=metric, sparsity=0.5, batch_size=4), windows=windows, progress=False)
    return reconstruction_error(model, dense, "fro")


@pytest.mark.parametrize("provider", ["optishear-style", "ours", "ours-faithful"])
def test_one_trial(benchmark, machine_info, setup, provider):
    path, model, windows = setup
    machine_info(provider=provider, case=f"SmolLM2-135M, {NSAMPLES}x{SEQLEN} calibration, 50% unstructured")
    if provider.startswith("ours"):
        stats = "faithful" if provider == "ours-faithful" else "fast"
        runner = TrialRunner(model, windows, SearchConfig(nsamples=NSAMPLES, seqlen=SEQLEN, batch_size=4, stats=stats))
        wanda = runner.run("w:none*none,x:none*none", [0.5] * len(runner.linears))
        benchmark.extra_info["wanda_objective"] = wanda["objective"]  # quality of this statistics mode
        runner.by_hash.clear()

        def trial():
            rec = runner.run(next(METRICS), [0.5] * len(runner.linears))
            assert rec["evaluated"]
            runner.by_hash.clear()  # keep every timed trial a full evaluation
            return rec

        benchmark.pedantic(trial, rounds=3, iterations=1, warmup_rounds=1)
        runner.snapshot.restore()
    else:
        benchmark.pedantic(lambda: optishear_style_trial(path, windows, next(METRICS)), rounds=3, iterations=1,
                           warmup_rounds=0)  # fmt: skip
