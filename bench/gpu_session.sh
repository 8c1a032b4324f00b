#!/bin/bash
# GPU acceptance runs in <= 10-minute jobs on one H200. Each plugin's bench finishes all its stages
# inside its own --budget-s on a fresh machine and writes docs/results/<plugin>.md itself; plugins
# listed together share the GPU (each report says so).
#   RUNS="nerf_pvd:450" bash bench/gpu_session.sh            # one plugin alone
#   RUNS="hsi:280 sr:280" bash bench/gpu_session.sh          # two side by side
# NAME is the bench's short name (bench/NAME_gpu.py, runs/NAME_gpu, docs/results/NAME*).
# On the device (fresh machine, Python 3.12, torch 2.11): pure-python wheels in .whl (ultralytics,
# ultralytics-thop, diffusers, importlib_metadata, ...) go to /tmp/site first, then
#   pip install --no-index --no-deps --no-build-isolation -e .
# Lesson of session 3 (all three benches in one job, fixed step counts): stages that count steps overran and a fresh
# machine keeps nothing, so every bench trains for seconds inside its own --budget-s and writes its report itself.
# Seen on 2026-12-02 (session 4): two benches side by side 421 s and 404 s wall (budget 465 / 420), pip install 5-6 s.
set -u
OUT=${OUT:-runs/gpu_out}; RUNS=${RUNS:?set RUNS="name:budget_s ..."}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 YOLO_OFFLINE=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg
names=()
for entry in $RUNS; do
  name=${entry%%:*}; budget=${entry#*:}; names+=("$name")
  extra=""; [ "$(echo $RUNS | wc -w)" = 1 ] && grep -q -- '--exclusive' "bench/${name}_gpu.py" && extra="--exclusive"
  ( timeout $(( budget + 60 )) python3 "bench/${name}_gpu.py" --device cuda --out "runs/${name}_gpu" \
      --budget-s "$budget" $extra > "$OUT/$name.log" 2>&1; echo "$name exit $?" >> "$OUT/$name.log" ) &
done
wait
nvidia-smi --query-gpu=name,memory.used --format=csv > "$OUT/gpu.txt" 2>&1
for name in "${names[@]}"; do  # one archive per plugin, each under 16 MB
  find docs/results/$name* "runs/${name}_gpu" -type f -size -12M ! -name '*.tif' ! -name '*.tiff' \( ! -name '*.pt' -o -path '*/weights/*' \) ! -name '*.onnx' ! -name '*.cache' \
    ! -path '*/images/*' ! -path '*/labels/*' ! -path '*/scene/*' ! -path '*/data/*' 2>/dev/null \
    | tar czf "$OUT/results_$name.tgz" -T -
done
ls -la "$OUT"
