#!/usr/bin/env bash
# A contender against the shipped CogLM at the shipped recipe's budget: the recipe's three CogLM
# stages (4500 + 2000 + 1000 steps, the flags of `make default-models`) with the contender's
# flags, on the recipe's token shards, the shipped tokenizer and VQVAE; resumable (rerun to
# continue).
#
#   bash benchmarks/prompt_ab.sh rephrase --rephrase 0.5          # caption augmentation
#   bash benchmarks/prompt_ab.sh minilm --text-encoder minilm     # frozen text encoder
#   bash benchmarks/prompt_ab.sh contrastive-last --contrastive-weight 0.1 --contrastive-pool last
#
# Outputs: runs/ab/NAME/{coglm,coglm-edit,coglm-edit2,final}. The baseline is the 3-stage model
# (the same stages without either flag). Measure each `final` with the README's eval commands.
# TOKENS defaults to the recipe's runs/default/tokens-big (`make default-models` makes it).
# RUNS (default runs/ab) holds the outputs; STAGE1_STEPS=N STAGE1_ONLY=1 runs N steps of the
# first stage alone (benchmarks/prompt_ab_speed.py times the contenders so).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=$1; shift
BIN=${BIN:-.venv/bin}
TOKENS=${TOKENS:-runs/default/tokens-big}
OUT=${RUNS:-runs/ab}/$NAME
COMMON=(--data "$TOKENS" --tokenizer cogview/defaults/shapes/tokenizer.json
        --vqvae cogview/defaults/shapes/vqvae --preset small --batch-size 64 --ema 0.999
        --save-every 250 --resume --no-progress)
"$BIN/cogview" train "${COMMON[@]}" "$@" --out "$OUT/coglm" --steps "${STAGE1_STEPS:-4500}"
[[ -n "${STAGE1_ONLY:-}" ]] && exit 0
"$BIN/cogview" train "${COMMON[@]}" "$@" --init-from "$OUT/coglm" --out "$OUT/coglm-edit" \
  --steps 2000 --lr 3e-4 --warmup 50 --min-lr 3e-5 --tasks "t2i=0.55,cap=0.15,inp=0.3"
"$BIN/cogview" train "${COMMON[@]}" "$@" --init-from "$OUT/coglm-edit" --out "$OUT/coglm-edit2" \
  --steps 1000 --lr 1e-4 --warmup 20 --min-lr 1e-5 --tasks "t2i=0.5,cap=0.15,inp=0.35" \
  --region-prompts 0.25 --seed 1
"$BIN/cogview" export "$OUT/coglm-edit2" "$OUT/final" --temperature 0.7 --rerank 16 \
  --inpaint-temperature 1.0 --inpaint-rerank 32 \
  --restate shapes
