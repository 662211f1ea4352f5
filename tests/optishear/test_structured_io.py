"""Structurally pruned models saved and reloaded: in a fresh process with bit-identical weights and the same logits,
with plain ``from_pretrained`` where the config can say the sizes, refused by it where it cannot; files smaller in
proportion; the CLI; bad input leaves nothing written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optishear import Plan, make_recipe, prune, save_pruned
from optishear.cli import main

from ..conftest import assert_same_model, random_windows, tiny_gemma3, tiny_gpt2, tiny_llama, tiny_opt, tiny_qwen2

ROOT = Path(__file__).resolve().parents[2]

RELOAD = """
import sys, torch
import optishear
model, _ = optishear.load_model(sys.argv[1])
windows = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(input_ids=windows, use_cache=False).logits, sys.argv[3])
torch.save(model.state_dict(), sys.argv[4])
"""


def _env():
    import os

    env = dict(os.environ)
    extra = os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'kernels'}{extra}"
    return env


def _logits(model, windows):
    with torch.no_grad():
        return model(input_ids=windows, use_cache=False).logits


@pytest.mark.parametrize("build,importance,layer_rates", [
    (tiny_llama, "flap", "adaptive"),       # per-block sizes, added biases: optishear.load_model only
    (tiny_llama, "wanda-sp", None),         # uniform, no bias: plain from_pretrained as well
    (tiny_gemma3, "flap", None),
    (tiny_opt, "magnitude", "adaptive"),
    (tiny_gpt2, "wanda-sp", "adaptive"),
    (tiny_qwen2, "flap", "adaptive"),
])  # fmt: skip
def test_save_and_reload_in_a_fresh_process_gives_the_same_model(tmp_path, smollm2_dir, build, importance,
                                                                  layer_rates):  # fmt: skip
    from transformers import AutoTokenizer

    windows = random_windows(2, 24, seed=2)
    model = build()
    plan = Plan(structured=True, rate=0.35, importance=importance, layer_rates=layer_rates, nsamples=4, seqlen=24,
                batch_size=2)  # fmt: skip
    res = prune(model, plan=plan, windows=random_windows(4, 24), progress=False)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)  # load_model returns a tokenizer too
    out = save_pruned(model, tok, tmp_path / "pruned", make_recipe(plan, res, model))
    torch.save(windows, tmp_path / "w.pt")
    subprocess.run([sys.executable, "-c", RELOAD, str(out), str(tmp_path / "w.pt"), str(tmp_path / "l.pt"),
                    str(tmp_path / "s.pt")], check=True, env=_env(), cwd=tmp_path)  # fmt: skip
    assert_same_model(torch.load(tmp_path / "s.pt"), torch.load(tmp_path / "l.pt"), model, windows)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["optishear_structure"]["layers"] == res.structure["layers"]
    assert json.loads((out / "optishear_recipe.json").read_text())["plan"]["structured"] is True

    from transformers import AutoModelForCausalLM

    if res.structure["plain_loadable"]:
        plain = AutoModelForCausalLM.from_pretrained(out).eval()
        assert_same_model(plain.state_dict(), _logits(plain, windows), model, windows)
    else:  # the config keeps the dense sizes: plain loading stops on the shapes, it never loads random heads
        with pytest.raises(Exception, match="mismatch|size"):
            AutoModelForCausalLM.from_pretrained(out)


def test_uniform_llama_is_a_plain_config():
    model = tiny_llama(layers=3, inter=256)
    res = prune(model, plan=Plan(structured=True, rate=0.3, importance="magnitude"), progress=False)
    assert res.structure["plain_loadable"]
    shape = res.structure["layers"][0]
    assert model.config.num_key_value_heads == shape["kv_heads"]
    assert model.config.num_attention_heads == shape["kv_heads"] * shape["q_per_kv"]
    assert model.config.intermediate_size == shape["channels"] and model.config.head_dim == 16


def test_file_is_smaller_in_proportion_to_the_parameters_removed(tmp_path):
    model = tiny_llama(layers=4, hidden=128, inter=512, vocab=64)
    dense_dir = save_pruned(model, None, tmp_path / "dense", {"format": "dense"})
    n_dense = sum(p.numel() for p in model.parameters())
    plan = Plan(structured=True, rate=0.5, importance="magnitude", layer_rates="adaptive")
    res = prune(model, plan=plan, progress=False)
    out = save_pruned(model, None, tmp_path / "pruned", make_recipe(plan, res, model))
    n_pruned = sum(p.numel() for p in model.parameters())
    size = lambda d: (d / "model.safetensors").stat().st_size  # noqa: E731
    assert size(out) / size(dense_dir) == pytest.approx(n_pruned / n_dense, rel=0.01)
    assert size(out) < 0.62 * size(dense_dir)


# ---- CLI -----------------------------------------------------------------------------------------------------------


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_structured_prune_save_eval_recipe(tiny_model_dir, tmp_path, capsys):
    from ..conftest import need_wikitext

    wiki = need_wikitext()
    rates = tmp_path / "rates.json"
    rates.write_text(json.dumps({"attention": [1 / 3, 0.5], "mlp": [0.25, 0.5]}))
    out_dir = tmp_path / "pruned"
    common = ["--calib", str(wiki / "wiki.valid.raw"), "--nsamples", "4", "--seqlen", "64", "--json", "--quiet"]
    assert main(["prune", "--model", str(tiny_model_dir), "--structured", "--rate", "0.3", "--importance", "wanda-sp",
                 "--layer-rates", str(rates), "--save", str(out_dir), "--eval-ppl", str(wiki / "wiki.test.raw"),
                 "--eval-seqlen", "64", "--eval-windows", "3", *common]) == 0  # fmt: skip
    res = _last_json(capsys)
    assert res["layer_rates"]["attention"] == pytest.approx([1 / 3, 0.5]) and res["decoder_params"] < res[
        "decoder_params_dense"]  # fmt: skip
    assert main(["eval", "--model", str(out_dir), "--ppl", str(wiki / "wiki.test.raw"), "--seqlen", "64",
                 "--windows", "3", "--json", "--quiet"]) == 0  # fmt: skip
    assert _last_json(capsys)["ppl"] == pytest.approx(res["ppl"], rel=1e-5)
    again = tmp_path / "again"
    assert main(["prune", "--model", str(tiny_model_dir), "--recipe", str(out_dir), "--save", str(again),
                 "--json", "--quiet"]) == 0  # fmt: skip
    assert _last_json(capsys)["mask_digest"] == res["mask_digest"]

    # adaptive and uniform through the same flags
    for lr in ("adaptive", "uniform"):
        assert main(["prune", "--model", str(tiny_model_dir), "--structured", "--rate", "0.4", "--importance", "flap",
                     "--layer-rates", lr, *common]) == 0  # fmt: skip
        assert _last_json(capsys)["reduction"] == pytest.approx(0.4, abs=0.01)


@pytest.mark.parametrize("extra,match", [
    (["--rate", "1.0"], r"rate must be a number in \[0, 1\)"),
    (["--rate", "-0.1"], r"rate must be a number in \[0, 1\)"),
    (["--layer-rates", "RATES3"], "'attention' has 3 values but the model has 2 decoder blocks"),
    (["--layer-rates", "UNEVEN"], "block 1: attention rate 0.25 cannot be reached with 4 query heads in 2 KV groups"),
])  # fmt: skip
def test_cli_bad_structured_input_exits_2_and_writes_nothing(tiny_model_dir, tmp_path, capsys, extra, match):
    files = {"RATES3": {"attention": [0, 0, 0], "mlp": [0.1, 0.1, 0.1]},
             "UNEVEN": {"attention": [0, 0.25], "mlp": [0.1, 0.1]}}
    argv = []
    for a in extra:
        if a in files:
            (tmp_path / f"{a}.json").write_text(json.dumps(files[a]))
            a = str(tmp_path / f"{a}.json")
        elif a == "MISSING":
            a = str(tmp_path / "missing.json")
        argv.append(a)
    out_dir = tmp_path / "out"
    rc = main(["prune", "--model", str(tiny_model_dir), "--structured", "--importance", "magnitude", *argv,
               "--save", str(out_dir), "--quiet"])  # fmt: skip
    assert rc == 2
    import re

    assert re.search(match, capsys.readouterr().err)
    assert not out_dir.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_layer_rates_file_missing_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--structured", "--layer-rates", str(tmp_path / "missing.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--layer-rates" in err and "missing.json does not exist" in err


def test_cli_structured_search(tiny_model_dir, tmp_path, capsys):
    from ..conftest import need_wikitext

    wiki = need_wikitext()
    assert main(["search", "--model", str(tiny_model_dir), "--space", "structured", "--rate", "0.3", "--operators",
                 "ga", "--pop-size", "4", "--generations", "2", "--calib", str(wiki / "wiki.valid.raw"), "--nsamples",
                 "4", "--seqlen", "64", "--objective-windows", "2", "--objective-seqlen", "32", "--validate-top", "1",
                 "--validate-windows", "2", "--validate-seqlen", "32", "--out", str(tmp_path / "run"), "--json",
                 "--quiet"]) == 0  # fmt: skip
    res = _last_json(capsys)
    assert res["distinct"] == 8 and res["reduction"] == pytest.approx(0.3, abs=1e-3) and res["operators"] == "ga"
    assert main(["prune", "--model", str(tiny_model_dir), "--recipe", res["recipe"], "--json", "--quiet"]) == 0
    assert _last_json(capsys)["reduction"] == pytest.approx(res["reduction"], abs=1e-6)
