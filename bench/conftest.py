import os

os.environ.setdefault("TRITON_INTERPRET", "0")  # benches time real backends, never the interpreter

import platform  # noqa: E402

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
