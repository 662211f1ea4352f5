import os

os.environ.setdefault("TRITON_INTERPRET", "0")  # benches time real backends, never the interpreter

import platform  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Llama-2-7B linear shapes [out, in]: q/k/v/o, gate/up, down.
LLAMA2_7B = {"4096x4096": (4096, 4096), "11008x4096": (11008, 4096), "4096x11008": (4096, 11008)}


@pytest.fixture
def machine_info(benchmark):
    def record(**extra):
        benchmark.extra_info.update(
            machine=platform.machine(), cpus=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
            cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None, **extra,
        )  # fmt: skip

    return record


WIKI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw" / "wiki.valid.raw"
NSAMPLES, SEQLEN = 32, 512  # calibration: the statistics
PROMPTS, PROMPT_LEN = 4, 256  # the objective's prompts, other positions of the same text


@pytest.fixture(scope="module")
def smollm2():
    """The bundled SmolLM2-135M with 32 x 512 calibration windows (WikiText-2 valid, seed 0) and 4 x 256 objective
    prompts (seed 1), loaded once per bench module; skipped when ``../shared`` is absent."""
    if not WIKI.is_file():
        pytest.skip(f"{WIKI} not found")
    from optishear import CalibSpec, calibration_windows, load_model
    from optishear.models import default_model_dir

    path = default_model_dir()
    model, tok = load_model(path)
    return SimpleNamespace(
        path=path, model=model, tok=tok, nsamples=NSAMPLES, seqlen=SEQLEN,
        windows=calibration_windows(CalibSpec(str(WIKI), NSAMPLES, SEQLEN, 0), tok),
        prompts=calibration_windows(CalibSpec(str(WIKI), PROMPTS, PROMPT_LEN, 1), tok),
    )  # fmt: skip
