"""Text for calibration and evaluation: local files first, Hugging Face datasets by name when online."""

from __future__ import annotations

import bisect
import hashlib
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
        if isinstance(self.nsamples, bool) or not isinstance(self.nsamples, int) or self.nsamples < 1:
            raise ValueError(f"nsamples must be a positive integer, got {self.nsamples!r}")
        if isinstance(self.seqlen, bool) or not isinstance(self.seqlen, int) or self.seqlen < 2:
            raise ValueError(f"seqlen must be an integer >= 2, got {self.seqlen!r}")


@dataclass
class WindowSet:
    """Token windows drawn for one purpose, with where they came from.

    Attributes:
        name: ``statistics``, ``objective``, ``validation``...
        tokens: [n, seqlen] token ids.
        starts: the token offset of each window in the tokenized text (None for generated text; for C4,
            ``document * 2**32 + offset``).
        seed: the seed of the draw.
    """

    name: str
    tokens: torch.Tensor
    starts: list[int] | None
    seed: int

    @property
    def digest(self) -> str:
        return tokens_digest(self.tokens)

    def describe(self) -> dict:
        return {"n": int(self.tokens.shape[0]), "seqlen": int(self.tokens.shape[1]), "seed": self.seed,
                "starts": self.starts, "digest": self.digest}  # fmt: skip


def tokens_digest(tokens: torch.Tensor) -> str:
    """A digest of token windows (shape and ids)."""
    t = tokens.detach().to("cpu", torch.int64).contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def source_digest(source: str | None) -> str | None:
    """sha256 of a local text source (every file of a directory, in name order); None otherwise."""
    if source is None or not Path(source).expanduser().exists():
        return None
    p = Path(source).expanduser()
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


class _Spans:
    """Token intervals already taken, for drawing windows that overlap none of them."""

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.max_len = 0

    def add(self, start: int, length: int) -> None:
        i = bisect.bisect_left(self.starts, start)
        self.starts.insert(i, start)
        self.ends.insert(i, start + length)
        self.max_len = max(self.max_len, length)

    def free(self, start: int, length: int) -> bool:
        # Only intervals starting in (start - max_len, start + length) can overlap [start, start + length).
        lo = bisect.bisect_right(self.starts, start - self.max_len)
        hi = bisect.bisect_left(self.starts, start + length)
        return all(self.ends[j] <= start for j in range(lo, hi))


def _draw(n_tokens: int, n: int, seqlen: int, rng: random.Random, taken: _Spans | None, what: str) -> list[int]:
    if n_tokens <= seqlen:
        raise ValueError(f"the {what} text has {n_tokens} tokens, fewer than seqlen={seqlen}")
    too_short = ValueError(f"cannot draw {n} {what} windows of {seqlen} tokens apart from the other windows: the "
                           f"text ({n_tokens} tokens) is too short for all the windows asked for")  # fmt: skip
    if taken is not None and n * seqlen + sum(e - s for s, e in zip(taken.starts, taken.ends)) > n_tokens:
        raise too_short
    starts = []
    tries = 0
    while len(starts) < n:
        s = rng.randint(0, n_tokens - seqlen - 1)
        tries += 1
        if taken is None or taken.free(s, seqlen):
            starts.append(s)
        elif tries > 200 * n + 2000:
            raise too_short
    return starts


def window_sets(source: str | None, tokenizer, sets: list[tuple[str, int, int, int]],
                model=None) -> dict[str, WindowSet]:
    """Several sets of windows from one text, pairwise disjoint.

    Args:
        sets: ``(name, n, seqlen, seed)`` per set. The first set is drawn exactly as ``calibration_windows``
            draws it (so a search's statistics windows are a prune's calibration windows); every later set
            rejects any window that overlaps a window of an earlier set (within a set, windows may overlap,
            as in the Wanda/SparseGPT protocol). With no source the model writes each set from its own seed.

    Returns:
        ``{name: WindowSet}``; every set's offsets are recorded (``WindowSet.starts``) for the manifest.
    """
    out: dict[str, WindowSet] = {}
    if source is None:
        if model is None:
            raise ValueError("no calibration text given and no model to generate it")
        for name, n, seqlen, seed in sets:
            generated = generated_windows(model, tokenizer, CalibSpec(None, n, seqlen, seed))
            out[name] = WindowSet(name, generated, None, seed)
        return out
    for name, n, seqlen, _ in sets:
        CalibSpec(source, n, seqlen).validate()
    if source == "c4" and not Path(source).exists():
        docs = _hf_text("c4", "train")
        used: set[int] = set()
        for name, n, seqlen, seed in sets:
            rng = random.Random(seed)
            tokens, starts, tries = [], [], 0
            while len(tokens) < n:
                tries += 1
                if tries > 100 * n + 1000:
                    raise ValueError(f"C4: found only {len(tokens)} of {n} documents longer than {seqlen} tokens "
                                     f"in {tries - 1} draws")  # fmt: skip
                d = rng.randint(0, len(docs) - 1)
                ids = tokenizer(docs[d], return_tensors="pt").input_ids[0]
                if ids.numel() > seqlen and (not out or d not in used):
                    s = rng.randint(0, ids.numel() - seqlen - 1)
                    tokens.append(ids[s : s + seqlen])
                    starts.append(d * 2**32 + s)
            used |= {s >> 32 for s in starts}
            out[name] = WindowSet(name, torch.stack(tokens), starts, seed)
        return out
    if Path(source).expanduser().exists():
        text = read_text(source)
    else:
        text = "\n\n".join(_hf_text(source, "train"))
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    taken = _Spans()
    for k, (name, n, seqlen, seed) in enumerate(sets):
        starts = _draw(ids.numel(), n, seqlen, random.Random(seed), taken if k else None, name)
        for s in starts:
            taken.add(s, seqlen)
        out[name] = WindowSet(name, torch.stack([ids[s : s + seqlen] for s in starts]), starts, seed)
    return out


def calibration_windows(spec: CalibSpec, tokenizer, model=None) -> torch.Tensor:
    """``[nsamples, seqlen]`` token windows, reproducible from ``spec.seed``.

    Local text is tokenized once and windows start at uniformly drawn offsets (``random.Random(seed)``).
    For C4 (the Wanda/SparseGPT protocol) a random document long enough is drawn for each window.
    With no source, the documented default: ``model`` writes its own calibration text, sampled
    from the BOS token with a seeded generator (no download, no data file).
    """
    spec.validate()
    sets = window_sets(spec.source, tokenizer, [("statistics", spec.nsamples, spec.seqlen, spec.seed)], model)
    return sets["statistics"].tokens


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
