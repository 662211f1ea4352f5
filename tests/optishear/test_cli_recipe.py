import json

import pytest
import torch
from optishear import PruneConfig, load_model, model_linears, recipe_plan
from optishear.cli import main

from ..conftest import need_wikitext


def _last_json(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_cli_prune_save_eval_and_recipe_round_trip(tiny_model_dir, tmp_path, capsys):
    wiki = need_wikitext()
    out_dir = tmp_path / "pruned"
    rc = main(["prune", "--model", str(tiny_model_dir), "--metric", "ria", "--sparsity", "0.5",
               "--calib", str(wiki / "wiki.valid.raw"), "--nsamples", "4", "--seqlen", "64", "--seed", "1",
               "--save", str(out_dir), "--eval-ppl", str(wiki / "wiki.test.raw"), "--eval-seqlen", "64",
               "--eval-windows", "3", "--json", "--quiet"])  # fmt: skip
    assert rc == 0
    res = _last_json(capsys)
    assert res["windows"] == 3 and res["ppl"] > 1 and res["sparsity"] == pytest.approx(0.5, abs=0.01)
    recipe = json.loads((out_dir / "optishear_recipe.json").read_text())
    assert recipe["plan"]["metric"] == "ria" and recipe["plan"]["seed"] == 1 and len(recipe["block_sparsity"]) == 2
    assert recipe["mask_digest"] == res["mask_digest"]
    assert set(recipe["versions"]) >= {"optishear", "torch", "transformers"}
    assert all(abs(v - 0.5) < 0.01 for v in recipe["achieved"]["layers"].values())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers

    # the saved model evaluates to the same perplexity
    assert main(["eval", "--model", str(out_dir), "--ppl", str(wiki / "wiki.test.raw"), "--seqlen", "64",
                 "--windows", "3", "--json", "--quiet"]) == 0  # fmt: skip
    assert _last_json(capsys)["ppl"] == pytest.approx(res["ppl"], rel=1e-4)

    # applying the recipe to the dense model reproduces the pruned weights exactly
    again = tmp_path / "again"
    assert main(["prune", "--model", str(tiny_model_dir), "--recipe", str(out_dir), "--save", str(again),
                 "--json", "--quiet"]) == 0  # fmt: skip
    a, _ = load_model(out_dir)
    b, _ = load_model(again)
    for ra, rb in zip(sum(model_linears(a), []), sum(model_linears(b), [])):
        assert torch.equal(ra.weight2d(), rb.weight2d()), ra.full_name


def test_recipe_plan_round_trip(tmp_path):
    cfg = PruneConfig(metric="w:row*sqrt,x:none*log", block_sparsity=[0.4, 0.6], calib="x.txt", nsamples=3)
    assert PruneConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="not an OptiShear recipe"):
        recipe_plan({"format": "other"})
    with pytest.raises(FileNotFoundError):
        recipe_plan(tmp_path / "none.json")


@pytest.mark.parametrize(
    "argv,match",
    [
        (["prune", "--sparsity", "1.5"], "sparsity must be a number in \\[0, 1\\)"),
        (["prune", "--metric", "nope"], "unknown metric"),
        (["prune", "--structure", "3:2"], "0 <= N < M"),
        (["prune", "--model", "/does/not/exist", "--metric", "magnitude"], "does not exist"),
        (["eval", "--model", "./missing-dir", "--ppl", "x"], "does not exist"),
    ],
)
def test_cli_bad_input_exits_2_with_a_clear_message(argv, match, capsys):
    assert main(argv + ["--quiet"]) == 2
    import re

    assert re.search(match, capsys.readouterr().err)


def test_cli_block_sparsity_file_of_wrong_length(tiny_model_dir, tmp_path, capsys):
    f = tmp_path / "blocks.txt"
    f.write_text("0.5\n0.5\n0.5\n")
    assert main(["prune", "--model", str(tiny_model_dir), "--metric", "magnitude", "--block-sparsity", str(f),
                 "--quiet"]) == 2  # fmt: skip
    assert "block_sparsity has 3 values but the model has 2 decoder blocks" in capsys.readouterr().err


def test_cli_search_and_its_recipe_apply_as_is(tiny_model_dir, tmp_path, capsys):
    wiki = need_wikitext()
    out = tmp_path / "search"
    argv = ["search", "--model", str(tiny_model_dir), "--space", "joint", "--pop-size", "4", "--generations", "2",
            "--calib", str(wiki / "wiki.valid.raw"), "--nsamples", "2", "--seqlen", "32", "--out", str(out),
            "--json", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    res = _last_json(capsys)
    assert res["trials"] >= 4 and 1 <= res["distinct"] <= res["trials"]
    assert main(argv + ["--resume"]) == 0  # a finished run resumes to the same answer without new trials
    again = _last_json(capsys)
    assert (again["metric"], again["objective"]) == (res["metric"], res["objective"])
    assert main(["prune", "--model", str(tiny_model_dir), "--recipe", res["recipe"], "--json", "--quiet"]) == 0
    applied = _last_json(capsys)
    recipe = json.loads((out / "optishear_recipe.json").read_text())
    assert applied["metric"] == recipe["plan"]["metric"]
    assert applied["mask_digest"] == recipe["mask_digest"]  # the replay prunes exactly what the search chose
    assert applied["sparsity"] == pytest.approx(0.5, abs=0.01)
