"""Turn a pytest-benchmark JSON into a Markdown table of medians and ratios against a baseline provider.

    python bench/report.py bench/select.json [--baseline sort]
"""

import argparse
import json
from collections import defaultdict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--baseline", default="sort")
    args = ap.parse_args()
    data = json.load(open(args.json))
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b["extra_info"]
        key = tuple((k, info[k]) for k in sorted(info) if k in ("shape", "dtype", "structure", "case"))
        groups[key][info["provider"]] = b["stats"]["median"]
    m = data["machine_info"]
    print(f"machine: {m.get('cpu', {}).get('brand_raw', m.get('machine'))}, {m.get('node')}, "
          f"python {m.get('python_version')}; {data['datetime']}")  # fmt: skip
    providers = sorted({p for g in groups.values() for p in g}, key=lambda p: (p != args.baseline, p))
    head = " | ".join(f"{p} median (ms)" for p in providers)
    print(f"\n| case | {head} | " + " | ".join(f"{args.baseline} / {p}" for p in providers[1:]) + " |")
    print("|---" * (1 + 2 * len(providers) - 1) + "|")
    for key, vals in groups.items():
        case = ", ".join(str(v) for _, v in key)
        cells = " | ".join(f"{vals[p] * 1e3:.1f}" if p in vals else "-" for p in providers)
        base = vals.get(args.baseline)
        ratios = " | ".join(f"{base / vals[p]:.1f}x" if base and p in vals else "-" for p in providers[1:])
        print(f"| {case} | {cells} | {ratios} |")


if __name__ == "__main__":
    main()
