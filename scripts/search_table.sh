#!/usr/bin/env bash
# The README's search table on SmolLM2-135M: a metric search, then a block-sparsity search with the found
# metric, then every method applied with the baselines' calibration (32 x 512) and evaluated on 40 x 512.
# Usage: bash scripts/search_table.sh [OUT_DIR]   (about 30 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs}
WIKI=${OPTISHEAR_SHARED:-../shared}/data/wikitext-2-raw
mkdir -p "$OUT"
# Search: statistics from the same 32 x 512 calibration as the evaluation runs, objective (KL) on 4 prompts of
# 256 tokens drawn elsewhere in the same text, the 4 best finalists and the seeded baseline re-scored on 16
# held-out prompts of 512 tokens (the defaults). The metric search is the 300-trial one of bench/RESULTS.md.
SEARCH=(--calib "$WIKI/wiki.valid.raw" --nsamples 32 --seqlen 512 --objective kl --objective-windows 4
        --objective-seqlen 256 --sparsity 0.5 --seed 0 --quiet --json)
EVAL=(--calib "$WIKI/wiki.valid.raw" --nsamples 32 --seqlen 512 --seed 0 --eval-ppl "$WIKI/wiki.test.raw"
      --eval-seqlen 512 --eval-windows 40 --quiet --json)

optishear search --space metric --pop-size 20 --generations 15 --out "$OUT/search-metric" "${SEARCH[@]}" \
  | tail -n 1 > "$OUT/search-metric.json"
METRIC=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['metric'])" "$OUT/search-metric.json")
optishear search --space blocks --metric "$METRIC" --pop-size 16 --generations 6 --out "$OUT/search-blocks" \
  "${SEARCH[@]}" | tail -n 1 > "$OUT/search-blocks.json"

optishear prune --metric wanda --block-sparsity owl "${EVAL[@]}" | tail -n 1 > "$OUT/eval-owl-wanda.json"
optishear prune --metric "$METRIC" --sparsity 0.5 "${EVAL[@]}" | tail -n 1 > "$OUT/eval-searched-metric.json"
optishear prune --metric "$METRIC" --block-sparsity "$OUT/search-blocks/optishear_recipe.json" "${EVAL[@]}" \
  | tail -n 1 > "$OUT/eval-searched-metric-blocks.json"
optishear prune --recipe "$OUT/search-metric/optishear_recipe.json" "${EVAL[@]}" | tail -n 1 \
  > "$OUT/eval-searched-metric-recipe.json"
tail -n 1 "$OUT"/*.json
