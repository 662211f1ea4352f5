"""The structured speed table from a pytest-benchmark JSON of ``bench/test_structured_speed.py``: per pruned model,
prefill and decode speedups against dense measured in the same run, beside the parameter ratios, and peak memory.

    python bench/structured_report.py bench/structured.json
"""

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    args = ap.parse_args()
    data = json.load(open(args.json))
    rows: dict[str, dict] = {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        r = rows.setdefault(info["provider"], {"info": info})
        kind = "prefill" if info["case"].startswith("prefill") else "decode"
        r[kind] = b["stats"]["median"]
        if info.get("peak_rss_mb") is not None:
            r["rss"] = info["peak_rss_mb"]
    m = data["machine_info"]
    first = next(iter(rows.values()))["info"]
    print(f"machine: {m.get('cpu', {}).get('brand_raw', m.get('machine'))}, {first.get('cpus')} cores, "
          f"{first.get('threads')} threads; torch {first.get('torch')}, transformers {first.get('transformers')}, "
          f"python {first.get('python')}; {data['datetime']}")  # fmt: skip
    dense = rows["dense"]
    print("\n| model | decoder params removed | decoder param ratio | model param ratio | prefill 512 (ms) | prefill "
          "speedup | speedup / decoder ratio | decode 128 (ms) | decode speedup | peak RSS (MB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        i = r["info"]
        sp = dense["prefill"] / r["prefill"] if "prefill" in r else float("nan")
        sd = dense["decode"] / r["decode"] if "decode" in r else float("nan")
        print(f"| {name} | {i['decoder_reduction']:.1%} | {i['decoder_param_ratio']:.3f}x | {i['param_ratio']:.3f}x | "
              f"{r.get('prefill', float('nan')) * 1e3:.1f} | {sp:.2f}x | {sp / i['decoder_param_ratio']:.0%} | "
              f"{r.get('decode', float('nan')) * 1e3:.1f} | {sd:.2f}x | {r.get('rss', float('nan')):.0f} |")


if __name__ == "__main__":
    main()
