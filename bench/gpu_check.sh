#!/usr/bin/env bash
# Issue 17's GPU checks as one prepared run for a lent GPU machine (the `device` tool), results under $OUT:
#   1. the GPU tests (every test marked `gpu`; skipped elsewhere);
#   2. SMPLify's fast mode on the GPU at batch 64, 1024 and 4096 (`fitloop bench smplify --batch N --device cuda`;
#      goal >= 20,000 fits/s on one H100/H200-class GPU), eager (early exit) and replayed from CUDA graphs
#      (--cuda-graph: fast-graphed, the whole budget; fitting/step_graph.py);
#   3. the training step on the GPU with SMPLify in the loop, timed per part: its SMPLify share (goal <= 30 %),
#      against the same step with SPIN's SMPLify (the GPU test of step 1 counts the step's CUDA syncs).
# The device image has torch, numpy, scipy, pyarrow, opencv, PIL, matplotlib but not smplx, webdataset,
# braceexpand, deltalake, arro3-core: `make gpu-pack` (here, with network to the registries) unpacks their wheels
# into .gpu-pack/site.tar.xz (33 MB; as wheels they would exceed the 64 MiB the tool carries with the repo).
# Run (device tool): carry [".gpu-pack"], command "bash bench/gpu_check.sh", timeout_s 540.
set -uo pipefail
OUT=${OUT:-gpu-out}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}  # a check of the script on a CPU machine: DEVICE=cpu BATCHES=8 STEP_BATCH=8 \
                        #   STEP_ARGS="--backbone 18 --img-res 64 --model open-small"
BATCHES=${BATCHES:-64 1024 4096}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/.gpu-site"
mkdir -p "$OUT" .gpu-site
tar -xJf .gpu-pack/site.tar.xz -C .gpu-site || { echo "no .gpu-pack/site.tar.xz: run make gpu-pack and carry .gpu-pack"; exit 2; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; } | tee "$OUT/gpu.txt"

echo "== 1. GPU tests"
timeout 150 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_body_model.py tests/test_collision.py \
    tests/test_dsr.py tests/test_host_syncs.py tests/test_silhouette.py tests/test_silhouette_term.py \
    tests/test_smplify.py tests/test_smplifyx.py tests/test_step_graph.py tests/test_training.py 2>&1 | tee \
    "$OUT/gpu_tests.log" | tail -15

echo "== 2. SMPLify on the GPU, batch 64 / 1024 / 4096 (fast mode, eager and graphed; test split)"
for batch in $BATCHES; do
    timeout 80 $PY -m fitloop bench smplify --device "$DEVICE" --split test --skip-reference --cases 8 \
        --calibration-people 32 --batch "$batch" --cuda-graph \
        --json > "$OUT/smplify_b$batch.json" 2> "$OUT/smplify_b$batch.err"
    echo "batch $batch: rc $? $(tail -c 300 "$OUT/smplify_b$batch.json")"
done

echo "== 3. The training step on the GPU, SMPLify in the loop: its share of the step (SPIN's configuration)"
timeout 150 $PY -m fitloop bench train-step --device "$DEVICE" --batch ${STEP_BATCH:-64} ${STEP_ARGS:-} --threads 4 \
    --out "$OUT/train_step.json" > "$OUT/train_step.txt" 2> "$OUT/train_step.err"
echo "rc $?"; cat "$OUT/train_step.txt"; tail -3 "$OUT/train_step.err"
