"""Why structured magnitude pruning collapses on SmolLM2: the MLP channels it removes carry the largest activations.

    python scripts/structured_outliers.py --calib ../shared/data/wikitext-2-raw/wiki.valid.raw [--rate 0.25]

Per decoder block: the down projection's input channels ranked by their activation statistic (``act_norm``, mean
x_j^2 over the calibration tokens), and whether the ``--rate`` fraction of channels that magnitude (sum of |W| over a
channel's gate/up rows and down column) and Wanda-sp (the same sums weighed by ||X_j||) would remove contains the
block's five most active channels. Prints one line per block and a summary.
"""

from __future__ import annotations

import argparse

import torch

from optishear import CalibSpec, calibration_windows, load_model
from optishear.calibrate import ACT_NORM, walk
from optishear.methods.structured import block_scores
from optishear.models import find_blocks, model_linears
from optishear.models.surgery import family_for


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="local model directory (default: the bundled SmolLM2-135M)")
    ap.add_argument("--calib", required=True, help="calibration text")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--rate", type=float, default=0.25, help="fraction of each block's MLP channels removed")
    args = ap.parse_args(argv)
    if not 0 < args.rate < 1:
        ap.error(f"--rate must be in (0, 1), got {args.rate}")

    model, tok = load_model(args.model)
    windows = calibration_windows(CalibSpec(args.calib, args.nsamples, args.seqlen, 0), tok)
    stats = walk(model, windows, model_linears(model), {ACT_NORM}, batch_size=4)
    family = family_for(model)
    hit = {"magnitude": 0, "wanda-sp": 0}
    top_hit = {"magnitude": 0, "wanda-sp": 0}
    blocks = find_blocks(model)[1]
    for i, block in enumerate(blocks):
        down = family.mlp_weights(block).out_name
        x = stats[i][down][ACT_NORM].double()
        top = torch.argsort(x, descending=True)[:5].tolist()
        line = [f"block {i:2d}: top channel {top[0]} at {float(x[top[0]] / x.median()):.0f}x the median mean x^2"]
        for imp in hit:
            scores = block_scores(family, block, stats[i], imp).channels
            removed = set(torch.argsort(scores)[: int(args.rate * scores.numel())].tolist())
            lost = [c for c in top if c in removed]
            hit[imp] += len(lost)
            top_hit[imp] += top[0] in removed
            rank = int((scores < scores[top[0]]).sum())
            line.append(f"{imp} removes {len(lost)} of the top 5 (top channel's rank {rank}/{scores.numel()})")
        print("; ".join(line))
    n = len(blocks)
    for imp in hit:
        print(f"{imp}: removes {hit[imp]} of the {5 * n} most active channels ({top_hit[imp]} of {n} blocks lose their "
              f"most active one) at {args.rate:g} of the channels")  # fmt: skip


if __name__ == "__main__":
    main()
