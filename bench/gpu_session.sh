#!/bin/bash
# GPU acceptance of the four new plugins in two <= 10-minute jobs on one H200 (session 4's plan).
# Two plugins share the GPU in each job, so every wall-clock number in their reports was measured
# under that shared load (each report says so). Each plugin's bench finishes all its stages inside
# its own --budget-s on a fresh machine and writes docs/results/<plugin>.md itself.
#   JOB=A bash bench/gpu_session.sh     # nerf_pvd + tracks4d
#   JOB=B bash bench/gpu_session.sh     # multispectral_det + diffusion_nera
# On the device (fresh machine, Python 3.12, torch 2.11): pure-python wheels in .whl (ultralytics,
# ultralytics-thop, diffusers, importlib_metadata) go to /tmp/site first, then
#   pip install --no-index --no-deps --no-build-isolation -e .
# Lesson of session 3 (all three benches in one job, fixed step counts): stages that count steps overran and a fresh
# machine keeps nothing, so every bench now trains for seconds inside its own --budget-s and writes its report itself.
# Seen on 2026-12-02: JOB=A 421 s and 404 s wall (BUDGET 465 / 420), JOB=B 423 s (BUDGET 470), pip install 5-6 s.
set -u
OUT=${OUT:-runs/gpu_out}; JOB=${JOB:-A}; BUDGET=${BUDGET:-480}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 YOLO_OFFLINE=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg
bench() {  # bench NAME SCRIPT -> runs/NAME_gpu, log in $OUT/NAME.log
  timeout $(( BUDGET + 60 )) python3 "bench/$2" --device cuda --out "runs/$1_gpu" --budget-s "$BUDGET" \
    > "$OUT/$1.log" 2>&1; echo "$1 exit $?" >> "$OUT/$1.log"
}
case "$JOB" in
  A) bench nerf_pvd nerf_pvd_gpu.py & bench tracks4d tracks4d_gpu.py & ;;
  B) bench detect detect_gpu.py & bench diffusion diffusion_gpu.py & ;;
  *) echo "JOB must be A or B" >&2; exit 2 ;;
esac
wait
nvidia-smi --query-gpu=name,memory.used --format=csv > "$OUT/gpu.txt" 2>&1
for name in nerf_pvd tracks4d detect diffusion; do  # one archive per plugin, each under 16 MB
  [ -f "$OUT/$name.log" ] || continue
  find docs/results/$name* "runs/${name}_gpu" -type f -size -12M ! -name '*.tif' ! -name '*.tiff' ! -name '*.pt' ! -name '*.onnx' ! -name '*.cache' \
    ! -path '*/images/*' ! -path '*/labels/*' ! -path '*/scene/*' ! -path '*/data/*' 2>/dev/null \
    | tar czf "$OUT/results_$name.tgz" -T -
done
ls -la "$OUT"
