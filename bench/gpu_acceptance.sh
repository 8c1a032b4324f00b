#!/bin/bash
# Acceptance runs of hemorrhage_seg (docs/results/hemorrhage.md) and sr_dsclora (docs/results/sr.md) on a machine with 2 GPUs, in jobs of at
# most LIMIT seconds. Every stage checkpoints or skips finished work, so running this again on the same
# machine continues where the last job stopped.
#   GPU 0: TBI pre-training, then the SAH strategies in G0;
#   GPU 1: the SAH strategies in G1 once pre-training is done, and the SR benchmark (SR_ARGS) beside them.
# Results (JSON/Markdown/PNG/weights, no data or checkpoints) and logs are packed into $OUT.
#   OUT=/tmp/out LIMIT=540 G0="none full" G1="cp_lora" SR_ARGS="--teacher-steps 4000" bash bench/gpu_acceptance.sh
set -u
OUT=${OUT:-runs/gpu_out}; LIMIT=${LIMIT:-540}
G0=${G0:-"none full cp_lora cp_dora decoder"}; G1=${G1:-"lora_c dora_c conv_lora conv_dora"}; SR_ARGS=${SR_ARGS:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
HS=runs/hseg_gpu; SR=runs/sr/bench_gpu
(
  export CUDA_VISIBLE_DEVICES=0
  timeout "$LIMIT" bash -c "{ [ -f $HS/3d/pretrain.json ] || python3 bench/hemorrhage_gpu.py pretrain --out $HS --threads 8; } && \
    python3 bench/hemorrhage_gpu.py compare --out $HS --threads 8 --strategies $G0"
  echo "gpu0 rc $?"
) >>"$OUT/gpu0.log" 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  timeout "$LIMIT" bash -c "while [ ! -f $HS/3d/pretrain.json ]; do sleep 5; done && \
    python3 bench/hemorrhage_gpu.py compare --out $HS --threads 8 --strategies $G1"
  echo "gpu1 rc $?"
) >>"$OUT/gpu1.log" 2>&1 &
if [ -n "$SR_ARGS" ]; then
  ( export CUDA_VISIBLE_DEVICES=1
    timeout "$LIMIT" python3 bench/sr_dsclora.py --preset gpu --out $SR $SR_ARGS
    echo "sr rc $?" ) >>"$OUT/sr.log" 2>&1 &
fi
wait
python3 bench/hemorrhage_gpu.py report --out $HS > "$OUT/report.log" 2>&1
find $HS/3d $SR \( -name 'results.json' -o -name 'pretrain.json' -o -name 'report.*' -o -name '*.png' -o -name 'bench.*' \
  -o -name '*.safetensors' -o -name 'metrics.jsonl' \) -not -path '*/checkpoints/*' 2>/dev/null | tar czf "$OUT/results.tgz" -T -
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"
python3 -c "import torch, sys; print(sys.version, torch.__version__)" >> "$OUT/gpu.txt"
ls -la "$OUT"
