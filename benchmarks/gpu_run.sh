#!/usr/bin/env bash
# One call on a CUDA machine: GPU speed figures, then CogLM trainings, results into $OUT.
#
# Prepare the inputs on the machine that holds the data (token shards travel packed):
#   python benchmarks/token_pack.py pack runs/big/tokens .gpu/shapes.npz --sizes 32
#   python benchmarks/token_pack.py pack runs/fashion/tokens .gpu/fashion.npz --sizes 32
#   cp data/fashion-tokenizer.json .gpu/ && cp -r runs/vqvae-fashion-final .gpu/vqvae-fashion
# then, on the GPU machine, from the repository root (Python packages missing there can come as
# wheels in .whl/):
#   OUT=out/gpu TRAIN_SECONDS=330 bash benchmarks/gpu_run.sh
#
# It writes to $OUT: run.log (everything printed), results.tar.gz (benchmark JSON, each run's
# config, metrics and log) and each trained model's weights in bf16 as safetensors parts of at
# most 15 MB (`benchmarks/gpu_weights.py join` puts them back together).
#
# SCALE=1: only the training-at-scale suite (no inputs needed; at most 8 minutes):
#   OUT=out/gpu-scale SCALE=1 bash benchmarks/gpu_run.sh
# writes $OUT/scale.json and run.log: base (~100M) and large (~350M) at 256 px / f=16 on
# streamed shards, eager vs compiled, DeepSpeed ZeRO-2 vs the plain loop, MFU and the share of
# each step spent waiting for a batch (`python benchmarks/gpu.py --suite scale`).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
TRAIN_SECONDS=${TRAIN_SECONDS:-330}
BATCH=${BATCH:-256}
CALIB_STEPS=${CALIB_STEPS:-40}
IN=${GPU_INPUTS:-.gpu}
DEADLINE=${DEADLINE:-560}  # seconds from the start by which everything must be written
PY=${PYTHON:-python3}
W=${WORK:-/tmp/gpu-work}
mkdir -p "$OUT" "$W"
exec > >(tee "$OUT/run.log") 2>&1
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
WHEELS=${WHEELS:-.whl}
if [ -d "$WHEELS" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
date -u

if [ -n "${SCALE:-}" ]; then
  # rows start only within the first 380 s; each writes scale.json when it ends
  timeout -s INT 470 $PY benchmarks/gpu.py --suite scale --budget 380 --json "$OUT/scale.json"
  date -u
  exit 0
fi

# the data sets unpack on the CPU while the GPU benchmarks run
( $PY benchmarks/token_pack.py unpack "$IN/shapes.npz" "$W/shapes" &&
  $PY benchmarks/token_pack.py unpack "$IN/fashion.npz" "$W/fashion" ) > "$W/unpack.log" 2>&1 &
UNPACK=$!
if [ -z "${SKIP_BENCH:-}" ]; then
  timeout 150 $PY benchmarks/gpu.py --json "$W/gpu.json"
  timeout 60 $PY benchmarks/sr_speed.py --device cuda --preset small --batch 1,8 --reps 5
fi
wait $UNPACK
cat "$W/unpack.log"
date -u

# name -> data, tokenizer, VQVAE, preset
declare -A RUN=(
  [shapes-medium]="$W/shapes cogview/defaults/shapes/tokenizer.json cogview/defaults/shapes/vqvae medium"
  [shapes-small]="$W/shapes cogview/defaults/shapes/tokenizer.json cogview/defaults/shapes/vqvae small"
  [fashion]="$W/fashion $IN/fashion-tokenizer.json $IN/vqvae-fashion small"
)
for r in "${!RUN[@]}"; do  # ONLY="a b": train only those
  [[ -z "${ONLY:-}" || " $ONLY " == *" $r "* ]] || unset "RUN[$r]"
done
train() {  # name out steps [timeout]
  read -r data tok vq preset <<< "${RUN[$1]}"
  timeout -s INT "${4:-600}" $PY -m cogview train --data "$data" --tokenizer "$tok" \
    --vqvae "$vq" --preset "$preset" --out "$2" --steps "$3" --batch-size "$BATCH" --lr 1e-3 \
    --warmup 200 --ema 0.999 --save-every 1000 --eval-every 1000 --no-progress
}
# calibration: a few steps of every run at once (as they will run), to size each run's schedule
# (`wait` names its jobs: a bare one would also wait for the `tee` of the log)
PIDS=()
for r in "${!RUN[@]}"; do
  train "$r" "$W/calib-$r" "$CALIB_STEPS" > "$W/calib-$r.log" 2>&1 &
  PIDS+=($!)
done
wait "${PIDS[@]}"
# what is left of the deadline after the calibration, less export and packing, is training
TRAIN_SECONDS=$(( DEADLINE - SECONDS - 75 < TRAIN_SECONDS ? DEADLINE - SECONDS - 75 : TRAIN_SECONDS ))
declare -A STEPS
for r in "${!RUN[@]}"; do
  STEPS[$r]=$($PY - "$W/calib-$r/metrics.jsonl" "$TRAIN_SECONDS" <<'EOF'
import json, sys
rows = [json.loads(x) for x in open(sys.argv[1])]
times = [r["step_s"] for r in rows if "step_s" in r][10:]
print(int(0.9 * float(sys.argv[2]) * len(times) / sum(times)))  # 10% spare
EOF
  ) || { echo "calibration of $r failed:"; tail -5 "$W/calib-$r.log"; continue; }
  echo "$r: ${STEPS[$r]} steps in ${TRAIN_SECONDS} s"
done
PIDS=()
for r in "${!STEPS[@]}"; do
  train "$r" "$W/$r" "${STEPS[$r]}" $((TRAIN_SECONDS + 30)) > "$W/$r.log" 2>&1 &
  PIDS+=($!)
done
wait "${PIDS[@]}"
date -u

for r in "${!STEPS[@]}"; do
  tail -3 "$W/$r.log"
  $PY -m cogview export "$W/$r" "$W/export-$r" &&
    $PY benchmarks/gpu_weights.py split "$W/export-$r/model.safetensors" "$OUT/$r" &&
    cp "$W/export-$r/config.json" "$W/$r/config-export.json"
done
tar -czf "$OUT/results.tar.gz" -C "$W" $(cd "$W" && ls -d gpu.json unpack.log calib-*.log \
  shapes-*.log fashion.log shapes-*/metrics.jsonl fashion/metrics.jsonl \
  shapes-*/config-export.json fashion/config-export.json 2>/dev/null)
ls -la "$OUT"
date -u
