import json
import math

import pytest
import torch
import torch.nn.functional as F
from optishear import CalibSpec, DenseOutputs, calibration_windows, perplexity, read_text, reconstruction_error
from optishear.data import wikitext_rows

from ..conftest import WIKI, need_wikitext, random_windows, tiny_llama


class CharTokenizer:
    """A byte-level stand-in tokenizer for tiny models (ids < 256)."""

    bos_token_id = 1
    eos_token_id = 2

    def __call__(self, text, return_tensors=None):
        class Out:
            pass

        out = Out()
        out.input_ids = torch.tensor([[b for b in text.encode("utf-8")]])
        return out


def test_wikitext_rows_and_protocol_text():
    wiki = need_wikitext()
    raw = (wiki / "wiki.test.raw").read_text(encoding="utf-8")
    rows = wikitext_rows(raw)
    assert len(rows) == 4358 and rows[0] == ""
    assert read_text(wiki / "wiki.test.raw") == "\n\n".join(rows)
    assert read_text(wiki) == read_text(wiki / "wiki.test.raw")  # a directory means its test split


def test_jsonl_and_plain_text(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert read_text(tmp_path / "a.jsonl") == "one\n\ntwo"
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="'text' field"):
        read_text(tmp_path / "b.jsonl")
    (tmp_path / "c.txt").write_text("plain\ntext")
    assert read_text(tmp_path / "c.txt") == "plain\ntext"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_text(tmp_path / "missing.txt")


def test_calibration_windows_are_seeded(tmp_path):
    (tmp_path / "t.txt").write_text("abcdefghij" * 300)
    tok = CharTokenizer()
    a = calibration_windows(CalibSpec(str(tmp_path / "t.txt"), 6, 16, seed=3), tok)
    b = calibration_windows(CalibSpec(str(tmp_path / "t.txt"), 6, 16, seed=3), tok)
    c = calibration_windows(CalibSpec(str(tmp_path / "t.txt"), 6, 16, seed=4), tok)
    assert a.shape == (6, 16) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="fewer than seqlen"):
        calibration_windows(CalibSpec(str(tmp_path / "t.txt"), 2, 5000), tok)
    with pytest.raises(ValueError, match="nsamples must be a positive integer"):
        calibration_windows(CalibSpec(str(tmp_path / "t.txt"), 0, 16), tok)


def test_default_calibration_is_generated_by_the_model_and_seeded():
    model, tok = tiny_llama(), CharTokenizer()
    a = calibration_windows(CalibSpec(None, 3, 12, seed=1), tok, model)
    b = calibration_windows(CalibSpec(None, 3, 12, seed=1), tok, model)
    assert a.shape == (3, 12) and torch.equal(a, b) and (a[:, 0] == tok.bos_token_id).all()


def test_perplexity_protocol_matches_a_plain_loop():
    model = tiny_llama()
    tokens = torch.randint(0, 256, (1, 5 * 16 + 7), generator=torch.Generator().manual_seed(0))
    ppl, n = perplexity(model, tokens, 16, batch_size=2, progress=False)
    assert n == 5  # remainder of 7 tokens dropped
    nlls = []
    with torch.no_grad():
        for i in range(5):
            ids = tokens[:, i * 16 : (i + 1) * 16]
            loss = model(input_ids=ids, labels=ids).loss.float()
            nlls.append(loss * 16)
    assert math.isclose(ppl, torch.exp(torch.stack(nlls).sum() / (5 * 16)).item(), rel_tol=1e-5)
    assert perplexity(model, tokens, 16, windows=2, progress=False)[1] == 2


def test_reconstruction_error_forms():
    model = tiny_llama()
    windows = random_windows(5, 16)
    dense = DenseOutputs(model, windows, batch_size=2)
    assert reconstruction_error(model, dense, "fro") == 0.0
    assert abs(reconstruction_error(model, dense, "kl")) < 1e-6
    pruned = tiny_llama()
    with torch.no_grad():
        for p in pruned.model.layers.parameters():
            p.mul_(0.9)
        full_ref = model(input_ids=windows).logits
        full = pruned(input_ids=windows).logits
    fro = reconstruction_error(pruned, dense, "fro")
    assert math.isclose(fro, torch.linalg.norm((full - full_ref).double()).item(), rel_tol=1e-5)
    kl = reconstruction_error(pruned, dense, "kl")
    ref_kl = F.kl_div(F.log_softmax(full, -1).reshape(-1, 256), F.log_softmax(full_ref, -1).reshape(-1, 256),
                      log_target=True, reduction="batchmean")  # fmt: skip
    # float32 logits either way: the per-token KL is a difference of O(1) terms, each rounded to ~1e-7
    assert kl > 0 and math.isclose(kl, ref_kl.item(), rel_tol=1e-4, abs_tol=2e-7)
    spilled = DenseOutputs(model, windows, batch_size=2, head_shortcut=False, max_memory_bytes=0)
    assert len(spilled) == 3 and spilled._files
    assert math.isclose(reconstruction_error(pruned, spilled, "fro"), fro, rel_tol=1e-6)  # logits vs Gram
    with pytest.raises(ValueError, match="'fro' or 'kl'"):
        reconstruction_error(pruned, dense, "l2")


def test_objectives_through_the_head_weights_equal_the_full_logits_ones():
    model, pruned = tiny_llama(), tiny_llama()
    with torch.no_grad():
        for p in pruned.model.layers.parameters():
            p.mul_(0.8)
    windows = random_windows(5, 16)
    fro_only = DenseOutputs(model, windows, batch_size=2, objective="fro")
    kl_only = DenseOutputs(model, windows, batch_size=2, objective="kl")
    logits = DenseOutputs(model, windows, batch_size=2, head_shortcut=False)
    assert fro_only.gram is not None and not fro_only.has_logits and not kl_only.has_logits
    assert logits.gram is None and logits.has_logits
    via_gram = reconstruction_error(pruned, fro_only, "fro")
    assert via_gram > 0 and math.isclose(via_gram, reconstruction_error(pruned, logits, "fro"), rel_tol=1e-5)
    via_head = reconstruction_error(pruned, kl_only, "kl")
    assert via_head > 0 and math.isclose(via_head, reconstruction_error(pruned, logits, "kl"), rel_tol=1e-4)
    assert abs(reconstruction_error(model, kl_only, "kl")) < 1e-6
    with pytest.raises(ValueError, match="built for objective='fro'"):
        reconstruction_error(pruned, fro_only, "kl")
    with pytest.raises(ValueError, match="built for objective='kl'"):
        reconstruction_error(pruned, kl_only, "fro")


def test_a_nonlinear_head_falls_back_to_full_logits():
    """Soft-capped logits (Gemma 2) are not H W^T: the Gram shortcut must not be taken."""
    model, pruned = tiny_llama(), tiny_llama()
    cap = lambda module, args, out: 3.0 * torch.tanh(out / 3.0)  # noqa: E731
    model.lm_head.register_forward_hook(cap)
    pruned.lm_head.register_forward_hook(cap)
    with torch.no_grad():
        for p in pruned.model.layers.parameters():
            p.mul_(0.8)
    windows = random_windows(4, 16)
    dense = DenseOutputs(model, windows, batch_size=2, objective="fro")
    assert dense.gram is None and dense.has_logits
    with torch.no_grad():
        ref = torch.linalg.norm((pruned(input_ids=windows).logits - model(input_ids=windows).logits).double())
    assert math.isclose(reconstruction_error(pruned, dense, "fro"), ref.item(), rel_tol=1e-5)
    model.get_output_embeddings = lambda: None  # a model that does not expose its head: full logits too
    assert DenseOutputs(model, windows, batch_size=2, objective="fro").has_logits


def test_shared_text_is_not_committed():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert not list(root.rglob("wiki.*.raw")), "WikiText must be read from ../shared, never committed"
    assert WIKI.name == "wikitext-2-raw"
