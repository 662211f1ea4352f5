"""Objectives: how good a pruned model is. Reconstruction error against dense outputs (the search's
objective, cheap per trial), perplexity (the standard evaluation) and zero-shot accuracy through lm-eval
(``zeroshot``, the optional extra ``optishear[eval]``)."""

from .perplexity import perplexity
from .reconstruction import DenseOutputs, reconstruction_error
from .zeroshot import zero_shot  # lm-eval is imported when it runs, not here

__all__ = ["perplexity", "DenseOutputs", "reconstruction_error", "zero_shot"]
