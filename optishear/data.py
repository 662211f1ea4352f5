"""Text for calibration and evaluation: local files first, Hugging Face datasets by name when online."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

def wikitext_rows(raw: str) -> list[str]:
    """Rows of a WikiText raw file exactly as Hugging Face ``datasets`` gives them."""
    return [line if line.strip() else "" for line in raw.splitlines(keepends=True)]


def read_text(path: str | Path) -> str:
    """Text of a local file or directory.

    - ``*.raw`` (WikiText raw): rows joined with ``"\\n\\n"``, the Wanda/SparseGPT protocol;
    - ``*.jsonl``: the ``"text"`` field of each line, joined with ``"\\n\\n"``;
    - any other file: its text as is;
    - a directory: ``wiki.test.raw`` if present, else its files in name order, joined with ``"\\n\\n"``.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"text path {p} does not exist")
    if p.is_dir():
        if (p / "wiki.test.raw").is_file():
            return read_text(p / "wiki.test.raw")
        files = sorted(f for f in p.iterdir() if f.is_file())
        if not files:
            raise ValueError(f"text directory {p} has no files")
        return "\n\n".join(read_text(f) for f in files)
    raw = p.read_text(encoding="utf-8")
    if p.suffix == ".raw":
        return "\n\n".join(wikitext_rows(raw))
    if p.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                obj = json.loads(line)
                if "text" not in obj:
                    raise ValueError(f"{p}:{n}: a JSONL line needs a 'text' field")
                texts.append(obj["text"])
        return "\n\n".join(texts)
    return raw


def _hf_text(name: str, split: str) -> list[str]:
    try:
        import datasets
    except ImportError as err:
        raise FileNotFoundError(
            f"{name!r} is not a local file, and the 'datasets' package (for hub datasets) is not installed"
        ) from err
    if name in ("wikitext2", "wikitext"):
        return datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
    if name == "c4":
        shard = "en/c4-train.00000-of-01024.json.gz" if split == "train" else "en/c4-validation.00000-of-00008.json.gz"
        return datasets.load_dataset("allenai/c4", data_files={split: shard}, split=split)["text"]
    raise FileNotFoundError(f"text source {name!r} is neither a local path nor a known dataset (wikitext2, c4)")


@dataclass
class CalibSpec:
    """Where calibration windows come from (recorded in recipes)."""

    source: str | None  # a local path, "wikitext2" / "c4", or None for the model-generated default
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0

    def validate(self) -> None:
        if not isinstance(self.nsamples, int) or self.nsamples < 1:
            raise ValueError(f"nsamples must be a positive integer, got {self.nsamples!r}")
        if not isinstance(self.seqlen, int) or self.seqlen < 2:
            raise ValueError(f"seqlen must be an integer >= 2, got {self.seqlen!r}")


def calibration_windows(spec: CalibSpec, tokenizer, model=None) -> torch.Tensor:
    """``[nsamples, seqlen]`` token windows, reproducible from ``spec.seed``.

    Local text is tokenized once and windows start at uniformly drawn offsets (``random.Random(seed)``).
    For C4 (the Wanda/SparseGPT protocol) a random document long enough is drawn for each window.
    With no source, the documented default: ``model`` writes its own calibration text, sampled
    from the BOS token with a seeded generator (no download, no data file).
    """
    spec.validate()
    rng = random.Random(spec.seed)
    if spec.source is None:
        if model is None:
            raise ValueError("no calibration text given and no model to generate it")
        return generated_windows(model, tokenizer, spec)
    if spec.source == "c4" and not Path(spec.source).exists():
        docs = _hf_text("c4", "train")
        out = []
        while len(out) < spec.nsamples:
            ids = tokenizer(docs[rng.randint(0, len(docs) - 1)], return_tensors="pt").input_ids[0]
            if ids.numel() > spec.seqlen:
                start = rng.randint(0, ids.numel() - spec.seqlen - 1)
                out.append(ids[start : start + spec.seqlen])
        return torch.stack(out)
    if Path(spec.source).expanduser().exists():
        text = read_text(spec.source)
    else:
        text = "\n\n".join(_hf_text(spec.source, "train"))
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if ids.numel() <= spec.seqlen:
        raise ValueError(f"calibration text {spec.source} has {ids.numel()} tokens, fewer than seqlen={spec.seqlen}")
    starts = [rng.randint(0, ids.numel() - spec.seqlen - 1) for _ in range(spec.nsamples)]
    return torch.stack([ids[s : s + spec.seqlen] for s in starts])


@torch.no_grad()
def generated_windows(model, tokenizer, spec: CalibSpec, batch_size: int = 8) -> torch.Tensor:
    """Model-generated calibration text: seeded multinomial sampling (temperature 1) from BOS."""
    gen = torch.Generator().manual_seed(spec.seed)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out = []
    for start in range(0, spec.nsamples, batch_size):
        n = min(batch_size, spec.nsamples - start)
        ids = torch.full((n, 1), bos, dtype=torch.long)
        past = None
        cur = ids
        for _ in range(spec.seqlen - 1):
            res = model(input_ids=cur.to(device), past_key_values=past, use_cache=True)
            past = res.past_key_values
            probs = torch.softmax(res.logits[:, -1].float().cpu(), dim=-1)
            cur = torch.multinomial(probs, 1, generator=gen)
            ids = torch.cat([ids, cur], dim=1)
        out.append(ids)
    return torch.cat(out)


def eval_tokens(path: str | Path, tokenizer) -> torch.Tensor:
    """The evaluation text tokenized once: ``[1, n_tokens]`` (test rows joined with ``"\\n\\n"``)."""
    if Path(path).expanduser().exists():
        text = read_text(path)
    else:
        text = "\n\n".join(_hf_text(str(path), "test"))
    return tokenizer(text, return_tensors="pt").input_ids
