"""Objectives: how good a pruned model is. Reconstruction error against dense outputs (the search's
objective, cheap per trial) and perplexity (the standard evaluation)."""

from .perplexity import perplexity
from .reconstruction import DenseOutputs, reconstruction_error

__all__ = ["perplexity", "DenseOutputs", "reconstruction_error"]
