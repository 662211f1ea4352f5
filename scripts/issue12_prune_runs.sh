#!/usr/bin/env bash
# The SparseGPT / update rows of the README; one JSON line per run appended to runs12/prune.jsonl.
#   bash scripts/issue12_prune_runs.sh "sparsegpt50 --metric sparsegpt --sparsity 0.5" "wanda_upd24 --metric wanda --structure 2:4 --update sparsegpt"
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs12
D=../shared/data/wikitext-2-raw
COMMON="--calib $D/wiki.valid.raw --nsamples 32 --seqlen 512 --seed 0 --eval-ppl $D/wiki.test.raw --eval-seqlen 512 --eval-windows 40 --json --quiet"
run() {
  name=$1; shift
  /usr/bin/time -f "%e" -o runs12/$name.time nice -n 10 python -m optishear prune "$@" $COMMON > runs12/$name.out 2> runs12/$name.err
  echo "{\"run\": \"$name\", \"args\": \"$*\", \"wall\": $(cat runs12/$name.time | tail -1), \"result\": $(tail -1 runs12/$name.out)}" >> runs12/prune.jsonl
}
for spec in "$@"; do
  eval "run $spec"
done
