#!/usr/bin/env bash
# Measure a model with the README's eval commands, each part a process of one thread (run one
# at a time, or PARALLEL=1 for all three at once), each part's full report kept as JSON:
#
#   bash benchmarks/prompt_ab_eval.sh runs/ab/rephrase/final     # a contender of prompt_ab.sh
#   bash benchmarks/prompt_ab_eval.sh shapes runs/ab/shipped      # the shipped model
#
# Writes OUT/eval-{t2i,edit,cap}.json (OUT: the second argument, else the model's folder):
#   t2i   one- and two-object prompts, in the training wording and paraphrased (240 + 240)
#   edit  edits of 300 held-out two-object scenes, both prompt styles and brush blobs
#   cap   captioning and reconstruction inpainting (300 each), held-out loss per task
# then prints the rows with benchmarks/prompt_ab_table.py. Parts whose JSON exists are kept
# (delete it to measure again). DATA: held-out shapes shards (default data/shapes, made by
# `cogview data shapes --out data/shapes --n 20000 --seed 0`); EXTRA: flags for the t2i part
# (for instance "--rerank-by caption,contrastive --n-retrieval 1000").
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1
OUT=${2:-$1}
BIN=${BIN:-.venv/bin}
DATA=${DATA:-data/shapes}
mkdir -p "$OUT"
NONE=(--n-prompts 0 --n-paraphrase 0 --n-captions 0 --n-inpaint 0 --n-edit 0 --n-loss 0
      --n-retrieval 0)
part() {  # name, flags that override NONE
  local name=$1; shift
  [[ -s "$OUT/eval-$name.json" ]] && return 0
  "$BIN/cogview" eval --model "$MODEL" --data "$DATA" --threads 1 "${NONE[@]}" "$@" \
    --json "$OUT/eval-$name.tmp.json" > "$OUT/eval-$name.log"
  mv "$OUT/eval-$name.tmp.json" "$OUT/eval-$name.json"
}
# shellcheck disable=SC2086
parts=("part t2i --n-prompts 240 --n-paraphrase 240 ${EXTRA:-}"
       "part edit --n-edit 300"
       "part cap --n-captions 300 --n-inpaint 300 --n-loss 256")
if [[ -n "${PARALLEL:-}" ]]; then
  pids=()
  for p in "${parts[@]}"; do $p & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid"; done  # a part that fails fails the script
else
  for p in "${parts[@]}"; do $p; done
fi
"$BIN/python" benchmarks/prompt_ab_table.py "$OUT"
