"""Models: loading (the packaged default, local directories) and walking (decoder blocks, their linears)."""

from .blocks import LinearRef, find_blocks, find_linears, model_linears
from .identity import model_identity, tokenizer_identity, weights_fingerprint
from .loading import DEFAULT_MODEL, cache_dir, default_model_dir, load_model, resolve_model_path
from .snapshot import WeightSnapshot

__all__ = ["LinearRef", "find_blocks", "find_linears", "model_linears", "DEFAULT_MODEL", "cache_dir",
           "default_model_dir", "load_model", "resolve_model_path", "WeightSnapshot", "model_identity",
           "tokenizer_identity", "weights_fingerprint"]  # fmt: skip
