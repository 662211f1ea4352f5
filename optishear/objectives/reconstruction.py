"""The search's objective: model-wise reconstruction error (KL or Frobenius) of a pruned model against dense outputs."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class _HeadStop(Exception):
    """Ends a forward at the output head once its input is captured."""


class _HeadInput:
    """Forward pre-hook on the output head: records its input; with ``stop`` skips the head itself."""

    def __init__(self, head, stop: bool):
        self.stop = stop
        self.value = None
        self.handle = head.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.value = args[0]
        if self.stop:
            raise _HeadStop

    def remove(self):
        self.handle.remove()


def _head_inputs(model, ids: torch.Tensor) -> torch.Tensor:
    """The output head's input for ``ids`` ([b, t, d]), without computing the logits."""
    hook = _HeadInput(model.get_output_embeddings(), stop=True)
    try:
        model(input_ids=ids, use_cache=False)
    except _HeadStop:
        pass
    finally:
        hook.remove()
    if hook.value is None:
        raise RuntimeError("the model's forward never reached its output head")
    return hook.value


class DenseOutputs:
    """What a trial's objective needs of the dense model on calibration windows, computed once.

    When the model's logits are exactly a linear map of the head's input (``L = H W^T + b``: LLaMA,
    Mistral, Qwen, GPT-2, OPT...), no dense logits are kept at all:

    - Frobenius: ``||L_p - L_d||_F^2 = sum_t d_t^T G d_t`` with ``d = H_p - H_d`` and ``G = W^T W`` (float64,
      [d, d]); a trial then never computes logits (on SmolLM2 that skips a 576 x 49152 matmul per token);
    - KL: ``KL_t = sum_v p_tv log p_tv - (H_p,t . m_t + c_t - logsumexp_v L_p,tv)`` with the dense
      next-token distribution ``p_t``, ``m_t = p_t W`` and ``c_t = p_t . b`` kept per token ([t, d], not
      [t, vocab]); a trial computes its logits once for the log-sum-exp and nothing else.

    Whether the head is linear is checked on the first batch against the model's own logits (soft-capped
    logits, say, fail it); then, or with ``head_shortcut=False``, the dense logits are kept (in memory, or
    in files above ``max_memory_bytes``) and trials compare full logits.

    Args:
        model: the dense model (call before pruning).
        windows: [n, seqlen] calibration tokens.
        batch_size: windows per forward.
        objective: ``"fro"``, ``"kl"`` or ``"any"`` (both): what to keep.
        head_shortcut: use the linear-head identities above when they hold.
        max_memory_bytes: above this kept logits go to files in ``spill_dir`` (one per batch).
    """

    @torch.no_grad()
    def __init__(self, model, windows: torch.Tensor, *, batch_size: int = 4, objective: str = "any",
                 head_shortcut: bool = True, max_memory_bytes: int = 2 << 30,
                 spill_dir: str | os.PathLike | None = None, progress: bool = False):  # fmt: skip
        if objective not in ("fro", "kl", "any"):
            raise ValueError(f"objective must be 'fro', 'kl' or 'any', got {objective!r}")
        self.windows = windows
        self.batch_size = batch_size
        self.gram: torch.Tensor | None = None  # set when the head shortcut is in use
        self._hidden: list[torch.Tensor] = []  # dense head inputs (Frobenius)
        self._kl: list[tuple[torch.Tensor, torch.Tensor]] = []  # (m + c folded as [b, t, d], negentropy [b, t])
        self._mem: list[torch.Tensor] = []
        self._files: list[Path] = []
        self._tmp = None
        device = next(model.parameters()).device
        head = model.get_output_embeddings()
        want_fro, want_kl = objective in ("fro", "any"), objective in ("kl", "any")
        self.shortcut = False
        for j, i in enumerate(tqdm(range(0, windows.shape[0], batch_size), desc="dense outputs", disable=not progress)):
            hook = _HeadInput(head, stop=False) if head is not None and (j == 0 or self.shortcut) else None
            try:
                logits = model(input_ids=windows[i : i + batch_size].to(device), use_cache=False).logits.float()
            finally:
                if hook is not None:
                    hook.remove()
            if j == 0:
                self.shortcut = head_shortcut and hook is not None and self._linear_head(head, hook.value, logits)
                if self.shortcut:
                    w = head.weight.detach().to(torch.float64)
                    self.gram = w.T @ w
                    self._w = head.weight.detach().float()
                    self._b = None if getattr(head, "bias", None) is None else head.bias.detach().float()
                else:
                    vocab = logits.shape[-1]
                    if windows.numel() * vocab * 4 > max_memory_bytes:
                        self._tmp = tempfile.TemporaryDirectory(prefix="optishear-dense-", dir=spill_dir)
            if not self.shortcut:
                self._keep_logits(j, logits.cpu())
                continue
            if want_fro:
                self._hidden.append(hook.value.detach().float().cpu())
            if want_kl:
                lp = F.log_softmax(logits, dim=-1)
                p = lp.exp()
                negent = (p * lp).sum(dim=-1, dtype=torch.float64)
                m = p.double() @ self._w.double()  # [b, t, d]: sum_v p_tv W_v
                if self._b is not None:
                    negent = negent - (p @ self._b).double()  # c_t folded into the constant
                self._kl.append((m.float().cpu(), negent.cpu()))

    def _keep_logits(self, j: int, logits: torch.Tensor) -> None:
        if self._tmp is not None:
            path = Path(self._tmp.name) / f"batch{j}.pt"
            torch.save(logits, path)
            self._files.append(path)
        else:
            self._mem.append(logits)

    @staticmethod
    def _linear_head(head, hidden, logits) -> bool:
        weight = getattr(head, "weight", None)
        if hidden is None or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            return False
        bias = getattr(head, "bias", None)
        expected = F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
        if expected.shape != logits.shape:
            return False
        tol = 1e-4 * max(float(expected.abs().max()), 1.0)
        ok = bool((expected - logits).abs().max() <= tol)
        if not ok:
            logger.info("the output head is not a plain linear map of its input: the objective uses full logits")
        return ok

    @property
    def has_logits(self) -> bool:
        return bool(self._files or self._mem)

    def __len__(self) -> int:
        return len(self._files) or len(self._mem) or len(self._hidden) or len(self._kl)

    def batch(self, j: int) -> torch.Tensor:
        """The dense logits of batch ``j`` [b, seqlen, vocab] (float32), when kept."""
        if not self.has_logits:
            raise ValueError("these DenseOutputs keep no logits (the linear-head shortcut is in use)")
        return torch.load(self._files[j]) if self._files else self._mem[j]

    @torch.no_grad()
    def error(self, model, kind: str) -> float:
        """The reconstruction error of ``model`` (its current weights) against these outputs."""
        if kind not in ("fro", "kl"):
            raise ValueError(f"objective kind must be 'fro' or 'kl', got {kind!r}")
        if self.shortcut and kind == "fro" and not self._hidden:
            raise ValueError("these DenseOutputs were built for objective='kl': build them with 'fro' or 'any'")
        if self.shortcut and kind == "kl" and not self._kl:
            raise ValueError("these DenseOutputs were built for objective='fro': build them with 'kl' or 'any'")
        device = next(model.parameters()).device
        gram = self.gram.to(device) if self.shortcut and kind == "fro" else None
        sq, kl, tokens = 0.0, 0.0, 0
        for j, i in enumerate(range(0, self.windows.shape[0], self.batch_size)):
            ids = self.windows[i : i + self.batch_size].to(device)
            if gram is not None:
                d = (_head_inputs(model, ids).float() - self._hidden[j].to(device)).reshape(-1, gram.shape[0])
                d = d.double()
                sq += float(((d @ gram) * d).sum())
            elif self.shortcut:
                h = _head_inputs(model, ids).float()
                lse = torch.logsumexp(F.linear(h, self._w.to(device), None if self._b is None else
                                               self._b.to(device)), dim=-1)  # fmt: skip
                m, negent = self._kl[j]
                dot = (h.double() * m.to(device).double()).sum(dim=-1)
                kl += float((negent.to(device) - dot + lse.double()).sum())
                tokens += h.shape[0] * h.shape[1]
            else:
                ref = self.batch(j)
                logits = model(input_ids=ids, use_cache=False).logits.float().cpu()
                if kind == "fro":
                    sq += float((logits - ref).double().square().sum())
                else:
                    lp_ref = F.log_softmax(ref, dim=-1)
                    lp = F.log_softmax(logits, dim=-1)
                    kl += float((lp_ref.exp() * (lp_ref - lp)).sum(dtype=torch.float64))
                    tokens += ref.shape[0] * ref.shape[1]
        value = math.sqrt(max(sq, 0.0)) if kind == "fro" else kl / tokens
        if not math.isfinite(value):
            raise FloatingPointError(f"reconstruction error ({kind}) is not finite")
        return value


@torch.no_grad()
def reconstruction_error(model, dense: DenseOutputs, kind: str = "fro") -> float:
    """Model-wise error between ``dense`` outputs and ``model``'s on the same windows, batch by batch.

    kind:
        ``"fro"``: Frobenius norm of the logits difference over all windows (OptiShear v1);
        ``"kl"``: mean over tokens of KL(dense || pruned) of next-token distributions (v2).
    Both are computed through the head's weights when ``dense`` uses the linear-head shortcut (same values,
    see ``DenseOutputs``).
    """
    return dense.error(model, kind)
