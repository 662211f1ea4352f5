"""Loading a structurally pruned model saved by ``save_pretrained`` (``optishear.load_model(path)``).

transformers' configs for these families hold one head count and one MLP width for every block, so a model whose
blocks differ cannot be described by them. The pruned model's ``config.json`` therefore carries
``optishear_structure``: the family and every block's kept KV groups, query heads per group, MLP channels and output
biases. When every block is alike and the family's config can say so (LLaMA-family: ``num_attention_heads``,
``num_key_value_heads``, ``head_dim``, ``intermediate_size``; OPT ``ffn_dim`` and GPT-2 ``n_inner`` when no head was
removed), those fields are rewritten too and plain ``AutoModelForCausalLM.from_pretrained`` loads it. Otherwise the
config keeps the dense sizes, so that ``from_pretrained`` stops on the first mismatched shape instead of loading
random weights, and ``load_structured`` builds the dense model, cuts every block to its recorded shape and reads
the weights into it (strictly: a missing or unexpected tensor is an error).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .blocks import find_blocks
from .surgery import FAMILIES, BlockShape, StructureSnapshot, shape_block

logger = logging.getLogger(__name__)

STRUCTURE_KEY = "optishear_structure"


def structure_of(path) -> dict | None:
    """The ``optishear_structure`` record of a saved model directory (None for a dense or unstructured model)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get(STRUCTURE_KEY)


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path} has no model.safetensors (or index): not a saved pruned model")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(path / f)))
    return sd


@torch.no_grad()
def load_structured(path, *, dtype: torch.dtype = torch.float32):
    """Build the model saved at ``path`` with every block cut to its recorded shape, and load its weights.

    Raises:
        ValueError: an unknown structure format or family, a block count that differs, or tensors that do not match.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    record = getattr(config, STRUCTURE_KEY, None)
    if not isinstance(record, dict) or record.get("format") != "optishear-structure/1":
        raise ValueError(f"{path}: config.json has no readable {STRUCTURE_KEY} (format optishear-structure/1)")
    family = next((f for f in FAMILIES if f.name == record.get("family")), None)
    if family is None:
        raise ValueError(f"{path}: unknown structure family {record.get('family')!r}")
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    _, blocks = find_blocks(model)
    layers = record["layers"]
    if len(layers) != len(blocks):
        raise ValueError(f"{path}: the structure lists {len(layers)} blocks but the config builds {len(blocks)}")
    snap = StructureSnapshot()  # nothing to undo: the dense model only exists to be cut
    for i, (block, shape) in enumerate(zip(blocks, layers)):
        shape_block(family, block, BlockShape.from_dict(shape), snap, i)
    sd = _state_dict(path)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = set()
    if getattr(config, "tie_word_embeddings", False):
        head = model.get_output_embeddings()
        tied = {k for k in missing if head is not None and k.endswith(".weight") and "lm_head" in k}
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"{path}: saved tensors do not match the recorded structure: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")  # fmt: skip
    if tied:
        model.tie_weights()
    return model.eval()


__all__ = ["load_structured", "structure_of", "STRUCTURE_KEY"]
