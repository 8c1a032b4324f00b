#!/bin/bash
# Acceptance runs of issues 4 (hemorrhage_seg) and 6 (sr_dsclora) on a machine with 2 GPUs, in jobs of at
# most LIMIT seconds. Every stage checkpoints or skips finished work, so running this again continues
# where the last job stopped. GPU 0: TBI pre-training, then the SAH strategy grid from its start; GPU 1:
# the SR benchmark, then the grid from its end. Results and logs are packed into $OUT.
#   OUT=/tmp/out LIMIT=540 bash bench/gpu_acceptance.sh
set -u
OUT=${OUT:-runs/gpu_out}; LIMIT=${LIMIT:-540}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
HS=runs/hseg_gpu; SR=runs/sr/bench_gpu
GRID="none full cp_lora cp_dora decoder lora_c dora_c conv_lora conv_dora"
REVERSED=$(echo $GRID | tr ' ' '\n' | tac | tr '\n' ' ')
(
  export CUDA_VISIBLE_DEVICES=0
  timeout "$LIMIT" bash -c "{ [ -f $HS/3d/pretrain.json ] || python3 bench/hemorrhage_gpu.py pretrain --out $HS --threads 8; } && \
    python3 bench/hemorrhage_gpu.py compare --out $HS --threads 8 --strategies $GRID"
  echo "gpu0 rc $?"
) >>"$OUT/gpu0.log" 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  timeout "$LIMIT" bash -c "python3 -m lowrank_vision.plugins.sr_dsclora.scripts.benchmark --preset gpu --out $SR && \
    while [ ! -f $HS/3d/pretrain.json ]; do sleep 5; done && \
    python3 bench/hemorrhage_gpu.py compare --out $HS --threads 8 --strategies $REVERSED"
  echo "gpu1 rc $?"
) >>"$OUT/gpu1.log" 2>&1 &
wait
python3 bench/hemorrhage_gpu.py report --out $HS > "$OUT/report.log" 2>&1
tar czf "$OUT/results.tgz" --exclude='data' --exclude='checkpoints' --exclude='pretrain_run' $HS $SR 2>/dev/null
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"
python3 -c "import torch, sys; print(sys.version, torch.__version__)" >> "$OUT/gpu.txt"
ls -la "$OUT"
