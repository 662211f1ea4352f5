"""How much does a perplexity move from numerical noise alone? Wanda at 50% with X perturbed at float32's last bit.

    python scripts/noise_floor.py --calib ../shared/data/wikitext-2-raw/wiki.valid.raw \
        --eval ../shared/data/wikitext-2-raw/wiki.test.raw --seeds 5 --out runs/noise_floor.jsonl

Each run multiplies every activation statistic X by (1 + u), u uniform in +-2^-24 (about one float32 rounding
of X), drawn from its own seed, and prunes with the sequential protocol exactly as ``optishear prune`` does. A
different CPU, a float32 accumulation order or a batch size used to perturb X by about this much; what moves
is which near-ties win, and the sequential walk amplifies a flip into later blocks. One JSON line per run, then
the spread of the perplexities.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

import optishear.calibrate.collectors as collectors
from optishear import CalibSpec, Plan, WeightSnapshot, calibration_windows, eval_tokens, load_model, model_linears
from optishear import perplexity, prune


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--metric", default="wanda")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--eval-windows", type=int, default=40)
    ap.add_argument("--out", default="runs/noise_floor.jsonl")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model, tok = load_model(args.model)
    windows = calibration_windows(CalibSpec(args.calib, 32, 512, 0), tok)
    tokens = eval_tokens(args.eval, tok)
    snap = WeightSnapshot().save_all(model_linears(model))
    real = collectors.ActNormCollector.result
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with out.open("w") as f:
        for seed in [None, *range(args.seeds)]:
            gen = torch.Generator().manual_seed(seed if seed is not None else 0)

            def perturbed(self, _gen=gen, _seed=seed):
                x = real(self)
                if _seed is None:
                    return x
                u = (torch.rand(x.shape, generator=_gen, dtype=torch.float64) * 2 - 1) * 2.0**-24
                return (x.double() * (1 + u)).float()

            collectors.ActNormCollector.result = perturbed
            res = prune(model, tok, Plan(metric=args.metric, sparsity=0.5, nsamples=32, seqlen=512), windows=windows,
                        progress=False)  # fmt: skip
            ppl, _ = perplexity(model, tokens, 512, args.eval_windows, progress=False)
            row = {"seed": seed, "ppl": ppl, "mask_digest": res.mask_digest}
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(row, flush=True)
            snap.restore()
    collectors.ActNormCollector.result = real
    ppls = [r["ppl"] for r in rows if r["seed"] is not None]
    base = rows[0]["ppl"]
    spread = (max(ppls) - min(ppls)) / base
    print(f"unperturbed {base:.3f}; perturbed min {min(ppls):.3f} max {max(ppls):.3f} (spread {100 * spread:.2f}%), "
          f"{len({r['mask_digest'] for r in rows})} distinct mask sets of {len(rows)}")


if __name__ == "__main__":
    main()
