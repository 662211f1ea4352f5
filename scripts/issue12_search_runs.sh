#!/usr/bin/env bash
# The searched-policy rows of issue 12 on SmolLM2-135M (resumable: each search resumes from its trials.jsonl).
#   bash scripts/issue12_search_runs.sh [POP GENS [TAG [RUN...]]]
# RUN names which searches to run (default: policy50 metric24): policy50 (metric + per-module sparsities, the
# SparseGPT update), metric24 (metric at 2:4, the SparseGPT update), admm-modules50 (per-module sparsities with
# ADMM's own mask and update), admm-metric24 (metric at 2:4, the ADMM update with the metric's mask fixed),
# admm-gradual24 (metric at 2:4, ADMM's gradual pruning with the metric choosing each mask), admm-joint50 (metric
# and per-module sparsities at 50%, ADMM's gradual pruning with the metric choosing each mask).
# TAG is appended to every run's name (the README's 10 x 6 runs: `bash scripts/issue12_search_runs.sh 10 6 -10x6`), so
# that a search of another size starts its own directory instead of resuming one with another plan.
# Each search: statistics 32 x 512 from wiki.valid.raw (seed 0), dense statistics, KL on 4 x 256 prompts, candidates
# scored with the weight update on; then the chosen plan is applied with the standard protocol (sequential
# statistics) and evaluated on the first 40 windows of 512 tokens of wiki.test.raw (runs12/search.jsonl).
set -uo pipefail
cd "$(dirname "$0")/.."
POP=${1:-10}
GENS=${2:-4}
TAG=${3:-}
shift $(( $# < 3 ? $# : 3 ))
RUNS=${*:-policy50 metric24}
D=../shared/data/wikitext-2-raw
S="--calib $D/wiki.valid.raw --nsamples 32 --seqlen 512 --seed 0 --pop-size $POP --generations $GENS --validate-top 2 --quiet --json"
E="--stats sequential --eval-ppl $D/wiki.test.raw --eval-seqlen 512 --eval-windows 40 --quiet --json"
mkdir -p runs12
one() {  # name, search flags...
  name=$1$TAG; shift
  out=runs12/search-$name
  resume=""; [ -f $out/trials.jsonl ] && resume="--resume"
  /usr/bin/time -f "%e" -o $out.time nice -n 10 python -m optishear search "$@" $S --out $out $resume > $out.log 2>&1 || { echo "search $name failed"; return; }
  nice -n 10 python -m optishear prune --recipe $out/optishear_recipe.json $E > $out.prune.out 2> $out.prune.err
  echo "{\"run\": \"$name\", \"search_seconds\": $(tail -1 $out.time), \"search\": $(tail -1 $out.log), \"prune\": $(tail -1 $out.prune.out)}" >> runs12/search.jsonl
}
for run in $RUNS; do
  case $run in
    policy50) one policy50 --space metric-modules --sparsity 0.5 --update sparsegpt ;;
    metric24) one metric24 --space metric --structure 2:4 --update sparsegpt ;;
    admm-modules50) one admm-modules50 --space modules --metric admm --sparsity 0.5 --update admm ;;
    admm-metric24) one admm-metric24 --space metric --structure 2:4 --update admm ;;
    admm-gradual24) one admm-gradual24 --space metric --structure 2:4 --update admm-gradual ;;
    admm-joint50) one admm-joint50 --space metric-modules --sparsity 0.5 --update admm-gradual ;;
    *) echo "unknown run $run"; exit 2 ;;
  esac
done
