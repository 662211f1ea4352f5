"""Search runs as a user lives them: resumes that must be refused, failing trials, disjoint windows, every space."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from optishear import CalibSpec, Plan, calibration_windows, model_linears, prune, window_sets
from optishear.recipe import recipe_plan
from optishear.search import SearchConfig, search

from ..conftest import random_windows, tiny_llama


class CharTokenizer:
    """Bytes as tokens (vocabulary 256): enough to draw windows from real text without a model download."""

    bos_token_id = eos_token_id = 0

    def __call__(self, text, return_tensors=None):
        return SimpleNamespace(input_ids=torch.tensor([list(text.encode("utf-8"))], dtype=torch.long))

    def get_vocab(self):
        return {bytes([i]).decode("latin-1"): i for i in range(256)}


def _text(tmp_path, n_words=6000, seed=0):
    rng = np.random.RandomState(seed)
    words = ["pruning", "weights", "model", "layer", "the", "of", "sparse", "token", "search", "metric", "a", "is"]
    path = tmp_path / "calib.txt"
    path.write_text(" ".join(rng.choice(words, size=n_words)))
    return path


def _cfg(calib=None, **kw):
    plan_kw = {k: kw.pop(k) for k in list(kw) if k in Plan.__dataclass_fields__}
    plan = Plan(**{**dict(nsamples=4, seqlen=32, batch_size=2, stats="dense", calib=calib), **plan_kw})
    return SearchConfig(plan=plan, **{**dict(space="metric", pop_size=6, generations=2, objective_windows=2,
                                             objective_seqlen=24, validate_top=2, validate_windows=2,
                                             validate_seqlen=32), **kw})  # fmt: skip


def test_windows_are_disjoint_and_the_first_set_is_the_calibration_draw(tmp_path):
    path, tok = _text(tmp_path), CharTokenizer()
    sets = window_sets(str(path), tok, [("statistics", 8, 64, 0), ("objective", 6, 48, 1), ("validation", 5, 64, 2)])
    assert torch.equal(sets["statistics"].tokens, calibration_windows(CalibSpec(str(path), 8, 64, 0), tok))
    spans = {name: [(s, s + ws.tokens.shape[1]) for s in ws.starts] for name, ws in sets.items()}
    ids = tok(path.read_text()).input_ids[0]
    for name, ws in sets.items():
        for s, row in zip(ws.starts, ws.tokens):
            assert torch.equal(ids[s : s + len(row)], row)  # the recorded offsets are where the windows are
    names = list(spans)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for s1, e1 in spans[a]:
                for s2, e2 in spans[b]:
                    assert e1 <= s2 or e2 <= s1, f"{a} window {s1}-{e1} overlaps {b} window {s2}-{e2}"
    with pytest.raises(ValueError, match="too short"):
        window_sets(str(path), tok, [("statistics", 8, 64, 0), ("validation", 2000, 64, 2)])


def test_search_manifest_records_disjoint_window_offsets(tmp_path):
    path = _text(tmp_path)
    search(tiny_llama(), CharTokenizer(), _cfg(str(path)), tmp_path / "run", progress=False)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    windows = manifest["data"]["windows"]
    assert set(windows) == {"statistics", "objective", "validation"}
    taken = []
    for name, w in windows.items():
        spans = [(s, s + w["seqlen"]) for s in w["starts"]]
        for s, e in spans:
            assert all(e <= s2 or e2 <= s for s2, e2 in taken), name
        taken += spans
    assert manifest["data"]["source_digest"] and manifest["model"]["weights"] and manifest["tokenizer"]["vocab_digest"]


def test_resume_is_refused_on_another_model_edited_text_or_other_plan(tmp_path):
    path, tok = _text(tmp_path), CharTokenizer()
    cfg = _cfg(str(path))
    search(tiny_llama(), tok, cfg, tmp_path / "run", progress=False)
    again = search(tiny_llama(), tok, cfg, tmp_path / "run", resume=True, progress=False)  # same everything: fine
    assert again.distinct >= 1
    with pytest.raises(ValueError, match=r"model\.weights"):
        search(tiny_llama(seed=1), tok, cfg, tmp_path / "run", resume=True, progress=False)
    with pytest.raises(ValueError, match=r"config\.plan\.sparsity"):
        search(tiny_llama(), tok, _cfg(str(path), sparsity=0.45), tmp_path / "run", resume=True, progress=False)
    text = path.read_text()
    path.write_text(text.replace("model", "MODEL"))  # edited in place
    with pytest.raises(ValueError, match=r"data\.source_digest") as err:
        search(tiny_llama(), tok, cfg, tmp_path / "run", resume=True, progress=False)
    assert "data.windows" in str(err.value)  # the windows drawn from it changed too, and are named


@pytest.mark.parametrize("space", ["metric", "symbolic"])
def test_a_resume_with_more_generations_extends_the_run_to_the_longer_runs_result(tmp_path, space):
    """A run of 2 generations resumed with 4 gives the 4-generation run: its trials first, then the rest, and the
    same choice; the short run's trials are not run again."""
    kw = dict(windows=random_windows(4, 32), progress=False)
    cfg = lambda g: _cfg(space=space, pop_size=6, generations=g, validate_top=0, objective_windows=0)  # noqa: E731
    short = search(tiny_llama(layers=3), None, cfg(2), tmp_path / "run", **kw)
    n_short = len((tmp_path / "run" / "trials.jsonl").read_text().splitlines())
    longer = search(tiny_llama(layers=3), None, cfg(4), tmp_path / "run", resume=True, **kw)
    whole = search(tiny_llama(layers=3), None, cfg(4), tmp_path / "whole", **kw)

    def log(name):
        return [(t["key"], t["objective"]) for t in map(json.loads, (tmp_path / name / "trials.jsonl").open())]

    assert log("run") == log("whole") and len(log("run")) > n_short  # each trial once, in the same order
    assert (longer.metric, longer.objective, longer.trials, longer.distinct) == (
        whole.metric, whole.objective, whole.trials, whole.distinct)  # fmt: skip
    assert short.trials == 12 and longer.trials == 24
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]["generations"] == 4
    with pytest.raises(ValueError, match=r"config\.generations: 4 -> 3 \(a resume may add generations"):
        search(tiny_llama(layers=3), None, cfg(3), tmp_path / "run", resume=True, **kw)


def test_a_two_stage_search_cannot_be_extended(tmp_path):
    from optishear.search.config import SPACES
    from optishear.search.manifest import extendable

    assert {s for s in SPACES if not extendable(s)} == {"metric-then-blocks", "metric-then-modules"}
    kw = dict(windows=random_windows(4, 32), progress=False)
    cfg = lambda g: _cfg(space="metric-then-blocks", pop_size=6, generations=g, validate_top=0,  # noqa: E731
                         objective_windows=0)  # fmt: skip
    search(tiny_llama(layers=3), None, cfg(1), tmp_path / "run", **kw)
    with pytest.raises(ValueError, match="two-stage space 'metric-then-blocks' cannot be extended"):
        search(tiny_llama(layers=3), None, cfg(2), tmp_path / "run", resume=True, **kw)


def _fail_evaluations(monkeypatch, which):
    """Make the objective raise, as a non-finite error would, on the evaluations numbered ``which`` (1-based)."""
    import optishear.search.runner as runner_mod

    real = runner_mod.reconstruction_error
    calls = {"n": 0}

    def flaky(model, dense, kind):
        calls["n"] += 1
        if calls["n"] in which:
            raise FloatingPointError(f"reconstruction error ({kind}) is not finite")
        return real(model, dense, kind)

    monkeypatch.setattr(runner_mod, "reconstruction_error", flaky)


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    _fail_evaluations(monkeypatch, (2, 4))
    model = tiny_llama(layers=3)
    dense = {r.full_name: r.weight2d().clone() for refs in model_linears(model) for r in refs}
    cfg = _cfg(pop_size=8, generations=3, validate_top=0, objective_windows=0)
    res = search(model, None, cfg, tmp_path / "run", windows=random_windows(4, 32), progress=False)
    trials = [json.loads(line) for line in (tmp_path / "run" / "trials.jsonl").read_text().splitlines()]
    failed = [t for t in trials if t["status"] == "failed"]
    assert len(failed) == 2 and all("not finite" in t["error"] and t["objective"] is None for t in failed)
    assert res.failed == 2 and res.metric not in {t["metric"] for t in failed}
    assert all(t["objective"] is not None for t in trials if t["status"] == "ok")
    for refs in model_linears(model):  # the model is dense again after the search
        for r in refs:
            assert torch.equal(r.weight2d(), dense[r.full_name]), r.full_name


def test_too_many_failures_stop_the_search_and_a_resume_with_a_higher_limit_finishes(tmp_path, monkeypatch):
    _fail_evaluations(monkeypatch, (2, 3))
    cfg = _cfg(pop_size=8, generations=2, validate_top=0, objective_windows=0, max_failures=1)
    kw = dict(windows=random_windows(4, 32), progress=False)
    with pytest.raises(RuntimeError, match="2 trials failed"):
        search(tiny_llama(), None, cfg, tmp_path / "run", **kw)
    n_logged = len((tmp_path / "run" / "trials.jsonl").read_text().splitlines())
    res = search(tiny_llama(), None, _cfg(pop_size=8, generations=2, validate_top=0, objective_windows=0,
                                          max_failures=5), tmp_path / "run", resume=True, **kw)  # fmt: skip
    assert res.failed == 2 and res.trials == 16
    assert len((tmp_path / "run" / "trials.jsonl").read_text().splitlines()) >= n_logged


@pytest.mark.parametrize("space,algorithm,structure", [
    ("blocks", "nsga3", "unstructured"), ("metric-then-blocks", "nsga2", "unstructured"), ("metric", "nsga2", "2:4"),
    ("joint", "nsga2", "unstructured"),
])  # fmt: skip
def test_every_space_end_to_end_and_its_recipe_replays_bit_for_bit(tmp_path, space, algorithm, structure):
    calib = random_windows(4, 32)
    cfg = _cfg(space=space, algorithm=algorithm, structure=structure, pop_size=6, generations=2, validate_top=2,
               objective_windows=0)  # fmt: skip
    res = search(tiny_llama(layers=4), None, cfg, tmp_path / "run", windows=calib, validation_windows=random_windows(
        2, 32, seed=3), progress=False)  # fmt: skip
    recipe = json.loads((tmp_path / "run" / "optishear_recipe.json").read_text())
    assert recipe["search"]["algorithm"] == algorithm and recipe["search"]["space"] == space
    if space != "metric":
        assert abs(np.mean(res.block_sparsity) - 0.5) < 1e-12
    model = tiny_llama(layers=4)
    replay = prune(model, plan=recipe_plan(recipe), windows=calib, keep_masks=True, progress=False)
    assert replay.mask_digest == recipe["mask_digest"]
    if structure == "2:4":
        for refs in model_linears(model):
            for r in refs:
                assert ((r.weight2d() == 0).reshape(r.weight2d().shape[0], -1, 4).sum(-1) == 2).all()


def test_recipe_replay_gives_the_same_masks_bit_for_bit_not_just_the_same_objective(tmp_path):
    calib = random_windows(4, 32)
    cfg = _cfg(space="joint", pop_size=6, generations=2, validate_top=0, objective_windows=0)
    search(tiny_llama(layers=4), None, cfg, tmp_path / "run", windows=calib, progress=False)
    recipe = json.loads((tmp_path / "run" / "optishear_recipe.json").read_text())
    a, b = tiny_llama(layers=4), tiny_llama(layers=4)
    ra = prune(a, plan=recipe_plan(recipe), windows=calib, keep_masks=True, progress=False)
    rb = prune(b, plan=recipe_plan(tmp_path / "run" / "optishear_recipe.json"), windows=calib, keep_masks=True,
               progress=False)  # fmt: skip
    assert ra.mask_digest == rb.mask_digest == recipe["mask_digest"]
    assert ra.masks.keys() == rb.masks.keys() and all(torch.equal(ra.masks[k], rb.masks[k]) for k in ra.masks)


def test_masks_do_not_depend_on_the_batch_size():
    windows = random_windows(8, 32)
    digests = set()
    for bs in (1, 3, 8):
        for stats in ("sequential", "dense"):
            res = prune(tiny_llama(layers=3), plan=Plan(batch_size=bs, stats=stats), windows=windows, progress=False)
            digests.add((stats, res.mask_digest))
    assert len(digests) == 2  # one digest per statistics mode, whatever the batch size


def test_the_backend_chosen_at_the_entry_point_reaches_every_kernel(monkeypatch):
    import optishear_kernels.backend as backend

    seen = []
    real = backend.choose

    def spy(t, name=None):
        seen.append(name)
        return real(t, name)

    monkeypatch.setattr(backend, "choose", spy)
    prune(tiny_llama(), plan=Plan(stats="sequential", block_sparsity="owl", batch_size=2), windows=random_windows(),
          backend="torch", progress=False)  # fmt: skip
    assert seen and set(seen) == {"torch"}, set(seen)


def test_c4_without_a_long_enough_document_is_an_error_not_an_endless_loop(monkeypatch):
    import optishear.data as data

    monkeypatch.setattr(data, "_hf_text", lambda name, split: ["short text"] * 50)
    with pytest.raises(ValueError, match="C4: found only 0 of 2 documents longer than 64 tokens"):
        calibration_windows(CalibSpec("c4", 2, 64, 0), CharTokenizer())


def test_optishear_search_is_the_function_and_the_package(tmp_path):
    import optishear

    res = optishear.search(tiny_llama(), None, _cfg(pop_size=4, generations=1, validate_top=0, objective_windows=0),
                           tmp_path / "run", windows=random_windows(4, 32), progress=False)  # fmt: skip
    assert isinstance(res, optishear.SearchResult) and res.trials == 4
    assert optishear.search.SearchConfig is SearchConfig
