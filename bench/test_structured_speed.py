"""Structured pruning's speed on CPU: SmolLM2-135M dense against pruned at 20%, 30% and 50% of the decoder blocks'
parameters, side by side in one run.

    python -m pytest bench/test_structured_speed.py --benchmark-enable --benchmark-json=bench/structured.json
    python bench/structured_report.py bench/structured.json

Cases: ``prefill`` (one forward over 512 tokens, batch 1, no cache) and ``decode`` (128 greedy steps of one token
with the KV cache, after a 512-token prompt that is not timed). Pruned models: ``uniform`` (every block alike: the
shapes magnitude, Wanda-sp or FLAP give at uniform rates) and ``adaptive`` (per-block sizes from FLAP-style adaptive
allocation, magnitude scores; no calibration needed, and speed depends on shapes only). ``extra_info`` records the
parameter counts and the peak resident memory of a fresh process that loads the model and runs both cases.
Set ``OPTISHEAR_BENCH_RECIPE=RUN/optishear_recipe.json`` to add a searched model, named ``searched-RUN`` after the
recipe's directory; several recipes are separated by ``os.pathsep`` (``:`` on Linux).
"""

import copy
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optishear import Plan, load_model, prune
from optishear.models.surgery import decoder_params

PREFILL, DECODE = 512, 128
RATES = (0.2, 0.3, 0.5)
ROOT = Path(__file__).resolve().parents[1]


def _recipes() -> dict[str, str]:
    """``searched-RUN`` -> recipe path, from ``OPTISHEAR_BENCH_RECIPE``."""
    paths = [p for p in os.environ.get("OPTISHEAR_BENCH_RECIPE", "").split(os.pathsep) if p]
    named = {f"searched-{Path(p).resolve().parent.name}": p for p in paths}
    if len(named) != len(paths):
        raise ValueError(f"OPTISHEAR_BENCH_RECIPE: two recipes in directories of the same name: {paths}")
    return named


def _providers():
    out = ["dense"] + [f"{kind}-{round(r * 100)}" for r in RATES for kind in ("uniform", "adaptive")]
    return out + list(_recipes())


def _build(provider: str):
    model, _ = load_model()
    if provider == "dense":
        return model
    if provider.startswith("searched-"):
        from optishear.recipe import recipe_plan

        plan = recipe_plan(_recipes()[provider])
        # speed depends on the shapes only: the recipe's rates with magnitude scores need no calibration
        plan = Plan(structured=True, rate=plan.rate, importance="magnitude", layer_rates=plan.layer_rates)
    else:
        kind, pct = provider.split("-")
        plan = Plan(structured=True, rate=int(pct) / 100, importance="magnitude",
                    layer_rates="adaptive" if kind == "adaptive" else None)  # fmt: skip
    prune(model, plan=plan, progress=False)
    return model


class _Models:
    """The dense model, kept for the run, and the last pruned one: a pruned model is built when a case first asks
    for it and freed when another is asked for, so the run's memory (and the cache the timings share) holds at most
    two models, not every provider's."""

    def __init__(self):
        self.dense = _build("dense")
        self.name, self.model = "dense", self.dense

    def __getitem__(self, provider: str):
        if provider == "dense":
            return self.dense
        if provider != self.name:
            self.name, self.model = None, None  # the previous one goes before the next is built
            self.model, self.name = _build(provider), provider
        return self.model


@pytest.fixture(scope="module")
def models():
    return _Models()


def _prefill(model, ids):
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)


def _decode(model, ids, steps=DECODE):
    from transformers import DynamicCache

    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)

        def run():
            c = copy.deepcopy(cache)
            t = nxt
            for _ in range(steps):
                o = model(input_ids=t, past_key_values=c, use_cache=True)
                t = o.logits[:, -1:].argmax(-1)

        return run


_PEAK = """
import resource, sys, torch
sys.path[:0] = [{root!r}, {kernels!r}]
from bench.test_structured_speed import _build, _prefill, _decode, PREFILL
model = _build({provider!r})
ids = torch.randint(0, 49152, (1, PREFILL), generator=torch.Generator().manual_seed(0))
_prefill(model, ids)
_decode(model, ids, 16)()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_mb(provider: str) -> float:
    code = _PEAK.format(root=str(ROOT), kernels=str(ROOT / "kernels"), provider=provider)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


@pytest.mark.parametrize("case", ["prefill", "decode"])
@pytest.mark.parametrize("provider", _providers())
def test_structured_speed(benchmark, machine_info, models, provider, case):
    import transformers

    model, dense = models[provider], models["dense"]
    ids = torch.randint(0, 49152, (1, PREFILL), generator=torch.Generator().manual_seed(0))
    n, n_dense = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in dense.parameters())
    dec, dec_dense = decoder_params(model), decoder_params(dense)
    machine_info(provider=provider, case=f"{case} {PREFILL}" if case == "prefill" else f"decode {DECODE} after "
                 f"{PREFILL}", params=n, params_dense=n_dense, decoder_params=dec, decoder_params_dense=dec_dense,
                 decoder_reduction=1 - dec / dec_dense, param_ratio=n_dense / n, decoder_param_ratio=dec_dense / dec,
                 transformers=transformers.__version__, python=platform.python_version(),
                 peak_rss_mb=_peak_rss_mb(provider) if case == "prefill" else None)  # fmt: skip
    if case == "prefill":
        benchmark.pedantic(lambda: _prefill(model, ids), rounds=5, iterations=1, warmup_rounds=1)
    else:
        benchmark.pedantic(_decode(model, ids), rounds=3, iterations=1, warmup_rounds=1)
