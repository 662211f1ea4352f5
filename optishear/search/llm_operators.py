"""LLM-driven evolutionary operators, as Self-Pruner (arXiv 2502.14413) uses them: an instruct model, given the
population with its fitness as text, proposes the parents, the crossover and the mutation.

Every answer is parsed strictly (``parse_parents``, ``parse_genome``); an answer that does not parse, or whose child
repeats a genotype already proposed, falls back to the plain operator (``evolution.PlainOperators``), and every
outcome is counted in ``stats``: per operator, ``calls``, ``valid`` (parsed), ``invalid`` (fell back) and, for
children, ``repaired`` (parsed, then moved onto the parameter budget by the space's repair).

The prompts are files in ``search/prompts`` (``structured_*.v1.txt``: ``string.Template`` with ``$name`` fields),
versioned by file name; the chat template of the operator model wraps them. Sampling is seeded per call from the
search seed, the generation and the call's index (``temperature`` 0: greedy), so the same run gives the same
answers. Each call's prompt digest and answer is journaled; the driver writes the journal next to the trial log and
hands it back on resume, so a resumed search replays the answers instead of generating them again.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from importlib import resources
from string import Template

import numpy as np
import torch

from .evolution import PlainOperators

logger = logging.getLogger(__name__)

PROMPT_VERSION = "v1"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def load_prompt(name: str, version: str = PROMPT_VERSION) -> tuple[str, str]:
    """Prompt ``structured_<name>.<version>.txt`` from the package: (the user message, the start of the answer).

    A file holds the user message, then optionally a line ``---answer---`` and the text the assistant's answer starts
    with (``A:``): the answer is generated on from there, which keeps a small model on the format."""
    text = resources.files("optishear.search").joinpath("prompts", f"structured_{name}.{version}.txt").read_text()
    user, _, prefix = text.partition("\n---answer---\n")
    return user.strip() + "\n", prefix.rstrip("\n")


def genome_done(n: int):
    """A stop test: the answer's line for the last block is written."""
    last = re.compile(rf"^\W*block\s*#?\s*{n - 1}\b[^\n]*M\s*[=:]?\s*\d+", flags=re.IGNORECASE | re.MULTILINE)
    return lambda text: last.search(text) is not None


def parents_done(text: str) -> bool:
    return "\n" in text.strip() or len(_NUMBER.findall(text)) >= 2


class ParseError(ValueError):
    """An operator answer that does not say what was asked."""


def _ints(text: str, what: str) -> list[int]:
    out = []
    for tok in _NUMBER.findall(text):
        v = float(tok)
        if v != int(v):
            raise ParseError(f"{what}: {tok} is not a whole number")
        out.append(int(v))
    return out


def parse_parents(text: str, pop_size: int) -> tuple[int, int]:
    """``Parents: 3, 5`` (``#3`` accepted) -> (3, 5).

    Raises:
        ParseError: no ``Parents`` line, not two numbers, the same twice, or an index outside the population.
    """
    m = re.search(r"parents?\s*[:=]\s*(.*)", text, flags=re.IGNORECASE)
    if m is None:
        raise ParseError("no 'Parents:' line")
    nums = _ints(m.group(1).split("\n")[0], "parents")
    if len(nums) != 2:
        raise ParseError(f"expected two parent numbers, got {len(nums)}")
    i, j = nums
    if i == j:
        raise ParseError(f"the same parent twice ({i})")
    for v in (i, j):
        if not 0 <= v < pop_size:
            raise ParseError(f"parent {v} is not in the population (0..{pop_size - 1})")
    return i, j


def parse_genome(text: str, n: int, a_max: list[int] | int, m_max: int) -> tuple[list[int], list[int]]:
    """One line per block, ``block 3: A=2 M=5`` (``A 2, M 5`` and ``#3`` accepted), every block 0..n-1 exactly once
    -> (attention levels, MLP levels).

    Raises:
        ParseError: a block missing or given twice, a block number out of range, a level that is not a whole number
            or out of range.
    """
    a_max = [a_max] * n if isinstance(a_max, int) else list(a_max)
    line_re = re.compile(r"^\W*block\s*#?\s*(-?\d+)\s*[:.)-]?\s*A\s*[=:]?\s*(-?[\d.]+)\s*[,;]?\s*"
                         r"M\s*[=:]?\s*(-?[\d.]+)", flags=re.IGNORECASE)  # fmt: skip
    att: dict[int, int] = {}
    mlp: dict[int, int] = {}
    for line in text.splitlines():
        m = line_re.match(line)
        if m is None:
            continue
        b = int(m.group(1))
        a, mm = _ints(m.group(2), f"block {b} A"), _ints(m.group(3), f"block {b} M")
        if len(a) != 1 or len(mm) != 1:
            raise ParseError(f"block {b}: malformed levels")
        if not 0 <= b < n:
            raise ParseError(f"block {b} is not a block of the model (0..{n - 1})")
        if b in att:
            raise ParseError(f"block {b} is given twice")
        if not 0 <= a[0] <= a_max[b]:
            raise ParseError(f"block {b}: A={a[0]} is outside 0..{a_max[b]}")
        if not 0 <= mm[0] <= m_max:
            raise ParseError(f"block {b}: M={mm[0]} is outside 0..{m_max}")
        att[b], mlp[b] = a[0], mm[0]
    missing = [b for b in range(n) if b not in att]
    if missing:
        raise ParseError(f"{len(missing)} blocks missing (first: block {missing[0]})")
    return [att[b] for b in range(n)], [mlp[b] for b in range(n)]


class ChatModel:
    """An instruct model answering one prompt at a time through its chat template (seeded sampling or greedy)."""

    def __init__(self, model, tokenizer, *, temperature: float = 0.7, top_p: float = 0.95):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the operator model's tokenizer has no chat template: give an instruct model")
        self.model = model.eval()
        self.tok = tokenizer
        self.temperature = temperature
        self.top_p = top_p
        self.seconds = 0.0

    @torch.no_grad()
    def answer(self, system: str, user: str, *, prefix: str = "", max_new_tokens: int, seed: int,
               done=None) -> str:  # fmt: skip
        """The model's answer to ``user`` (after ``system``), continuing from ``prefix``; returns prefix + the
        generated text. ``done(text)``: stop as soon as the answer so far is complete."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        t0 = time.perf_counter()
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        text = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + prefix
        ids = self.tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        ids = ids.to(next(self.model.parameters()).device)
        n0 = ids.shape[1]
        tok = self.tok

        class _Done(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return done is not None and done(prefix + tok.decode(input_ids[0, n0:], skip_special_tokens=True))

        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        kw = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, use_cache=True,
                  stopping_criteria=StoppingCriteriaList([_Done()]))  # fmt: skip
        if self.temperature > 0:
            kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
        self.seconds += time.perf_counter() - t0
        return prefix + self.tok.decode(out[0, n0:], skip_special_tokens=True)


class LLMOperators:
    """Parents, crossover and mutation from an instruct model, falling back to ``PlainOperators``.

    Args:
        space: the ``StructuredSpace``.
        chat: a ``ChatModel`` (or anything with ``answer(system, user, max_new_tokens=, seed=)``).
        seed: the search seed (each call's sampling seed derives from it).
        rate: the target reduction (shown in the prompts).
    """

    name = "llm"

    def __init__(self, space, chat, *, seed: int = 0, rate: float = 0.3, version: str = PROMPT_VERSION):
        self.space = space
        self.chat = chat
        self.seed = seed
        self.rate = rate
        self.plain = PlainOperators(space)
        self.system = load_prompt("system", version)[0].strip()
        self.templates, self.prefixes = {}, {}
        for k in ("select", "crossover", "mutate"):
            user, prefix = load_prompt(k, version)
            self.templates[k], self.prefixes[k] = Template(user), prefix
        self.version = version
        self.counts = {k: {"calls": 0, "valid": 0, "invalid": 0, "repaired": 0} for k in self.templates}
        self.errors: dict[str, int] = {}
        self._journal: list[dict] = []
        self._replay: dict[tuple[int, str, int], dict] = {}
        self._call = 0
        self._gen = None

    @property
    def stats(self) -> dict:
        out = {"operators": "llm", "prompt_version": self.version,
               "llm_seconds": round(getattr(self.chat, "seconds", 0.0), 1)}  # fmt: skip
        for k, c in self.counts.items():
            out[k] = dict(c)
        calls = sum(c["calls"] for c in self.counts.values())
        out["valid_fraction"] = sum(c["valid"] for c in self.counts.values()) / calls if calls else None
        out["errors"] = dict(sorted(self.errors.items(), key=lambda kv: -kv[1])[:8])
        return out

    # -- journal ----------------------------------------------------------------------------------------------------
    def drain_journal(self) -> list[dict]:
        out, self._journal = self._journal, []
        return out

    def replay(self, records: list[dict]) -> None:
        self._replay = {(r["generation"], r["op"], r["index"]): r for r in records}

    def _ask(self, op: str, generation: int, fields: dict, max_new_tokens: int) -> str:
        if generation != self._gen:
            self._gen, self._call = generation, 0
        index = self._call
        self._call += 1
        prompt = self.templates[op].substitute(fields)
        digest = hashlib.blake2b(prompt.encode(), digest_size=12).hexdigest()
        old = self._replay.get((generation, op, index))
        if old is not None and old["prompt_digest"] == digest:
            return old["answer"]  # already in the journal
        else:
            if old is not None:
                logger.warning("operator replay diverged at generation %d %s #%d: asking the model again", generation,
                               op, index)  # fmt: skip
            seed = int.from_bytes(hashlib.blake2b(f"{self.seed}:{generation}:{op}:{index}".encode(),
                                                  digest_size=4).digest(), "little")  # fmt: skip
            done = parents_done if op == "select" else genome_done(self.space.n)
            answer = self.chat.answer(self.system, prompt, prefix=self.prefixes[op], max_new_tokens=max_new_tokens,
                                      seed=seed, done=done)  # fmt: skip
        self._journal.append({"generation": generation, "op": op, "index": index, "prompt_digest": digest,
                              "answer": answer})  # fmt: skip
        return answer

    def _common(self) -> dict:
        return {"n_blocks": self.space.n, "last": self.space.n - 1, "a_max": max(self.space.n_att) - 1,
                "m_max": self.space.steps,
                "rate_pct": f"{100 * self.rate:g}"}  # fmt: skip

    @staticmethod
    def _row(vals) -> str:
        return " ".join(str(int(v)) for v in vals)

    def _fail(self, op: str, err: Exception) -> None:
        self.counts[op]["invalid"] += 1
        reason = re.sub(r"\d+", "N", str(err))
        self.errors[f"{op}: {reason}"] = self.errors.get(f"{op}: {reason}", 0) + 1

    def _genome_tokens(self) -> int:
        return 12 * self.space.n + 16  # one line per block: "block 12: A=2 M=5" is 9 to 11 tokens

    # -- operators ----------------------------------------------------------------------------------------------------
    def select(self, pop, fit, rng, generation: int):
        self.counts["select"]["calls"] += 1
        lines = []
        for k, (g, f) in enumerate(zip(pop, fit)):
            att, mlp = self.space.rows(g)
            lines.append(f"#{k} error {f:.4f}\nA: {self._row(att)}\nM: {self._row(mlp)}")
        answer = self._ask("select", generation, {**self._common(), "population": "\n".join(lines)}, 16)
        try:
            i, j = parse_parents(answer, len(pop))
        except ParseError as err:
            self._fail("select", err)
            return self.plain.select(pop, fit, rng, generation)
        self.counts["select"]["valid"] += 1
        return i, j

    def _genome(self, op: str, answer: str) -> np.ndarray | None:
        try:
            att, mlp = parse_genome(answer, self.space.n, [k - 1 for k in self.space.n_att], self.space.steps)
        except ParseError as err:
            self._fail(op, err)
            return None
        self.counts[op]["valid"] += 1
        g = np.array(att + mlp, dtype=float)
        if self.space.key(self.space.repair_one(g)) != self.space.key(g):
            self.counts[op]["repaired"] += 1
        return g

    def crossover(self, a, b, fa, fb, rng, generation: int):
        self.counts["crossover"]["calls"] += 1
        (aa, am), (ba, bm) = self.space.rows(a), self.space.rows(b)
        pairs = "\n".join(f"block {i}: A={aa[i]} M={am[i]} (parent 2: A={ba[i]} M={bm[i]})"
                          for i in range(self.space.n))  # fmt: skip
        fields = {**self._common(), "error_a": f"{fa:.4f}", "error_b": f"{fb:.4f}", "pairs": pairs}
        g = self._genome("crossover", self._ask("crossover", generation, fields, self._genome_tokens()))
        return g if g is not None else self.plain.crossover(a, b, fa, fb, rng, generation)

    def mutate(self, g, rng, generation: int, best=None):
        self.counts["mutate"]["calls"] += 1
        att, mlp = self.space.rows(g)
        bg, bf = best if best is not None else (g, float("nan"))
        ba, bm = self.space.rows(bg)
        pairs = "\n".join(f"block {i}: A={att[i]} M={mlp[i]} (best: A={ba[i]} M={bm[i]})" for i in range(self.space.n))
        fields = {**self._common(), "pairs": pairs, "best_error": f"{bf:.4f}"}
        out = self._genome("mutate", self._ask("mutate", generation, fields, self._genome_tokens()))
        return out if out is not None else self.plain.mutate(g, rng, generation)


def load_chat_model(path=None, *, temperature: float = 0.7) -> ChatModel:
    """The operator model: ``path`` (a local instruct model) or the packaged SmolLM2-135M-Instruct."""
    from ..models import load_model

    model, tok = load_model(path)
    model.config.use_cache = True
    return ChatModel(model, tok, temperature=temperature)


__all__ = ["LLMOperators", "ChatModel", "ParseError", "parse_parents", "parse_genome", "load_prompt", "load_chat_model",
           "PROMPT_VERSION"]  # fmt: skip
