"""The weights fingerprint (run manifests, Ray workers' check) names the weights, not the machine computing it."""

import torch
from optishear.models import weights_fingerprint

from ..conftest import tiny_llama


def test_weights_fingerprint_is_the_same_on_any_thread_count_and_changes_with_any_weight():
    model = tiny_llama(vocab=16384)  # 1M-value embeddings: the float64 sums of the old digest differed by threads
    threads = torch.get_num_threads()
    try:
        digests = set()
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            digests.add(weights_fingerprint(model))
    finally:
        torch.set_num_threads(threads)
    assert len(digests) == 1
    before = digests.pop()
    with torch.no_grad():
        w = model.model.layers[0].mlp.up_proj.weight
        w[3, 5] = torch.nextafter(w[3, 5], torch.tensor(float("inf")))  # one ulp of one weight
    assert weights_fingerprint(model) != before
    assert weights_fingerprint(tiny_llama(vocab=16384).to(torch.bfloat16)) != before
