#!/usr/bin/env bash
# One <10-minute chunk of tiny-teacher training on a lent GPU machine, resumable across back-to-back calls.
#   bash scripts/device/teacher_chunk.sh first   # installs, compiles gsplat, ImageDream-size ODE throughput
#                                                # (eager, while gsplat compiles), profiles 10 steps, trains
#   bash scripts/device/teacher_chunk.sh next    # resumes runs/mvdm-tiny-s2 and trains on
# Each chunk exports the EMA teacher and returns it through $OUT as teacher.tar.part-* (join with cat, untar).
# Needs .wheels (scripts: ../shared/scripts/gpu-wheels.sh) carried. Continues hub/mvdm-tiny (EMA at step
# INIT_STEP, default 8,038); TEACHER_EXTRA passes more flags (e.g. "--high-noise-fraction 0.5").
# It trains the main UNet only: its export has no high-noise expert, so pair it with one afterwards
# (train_teacher.py --expert-for runs/teacher-export, or the teacher stage of distill_session.sh).
set -eo pipefail
mode=${1:-next}
start=$(date +%s)
budget=${CHUNK_SECONDS:-560}          # the whole chunk, install and export included
export PYTHONPATH=$PWD TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" runs
python3 -c "import gsplat, diffusers, datasets" 2>/dev/null || \
    python3 -m pip install -q --no-index --find-links .wheels gsplat plyfile diffusers datasets trimesh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ "$mode" = first ]; then
    # gsplat JIT-compiles on the CPU for ~90 s: measure the ImageDream-size ODE on the idle GPU meanwhile.
    python3 -c "import torch; from dd3g.rendering import render; from training import synthetic; from dd3g.cameras import ViewLayout
g = synthetic.batch_objects([0], 64).to('cuda'); render(g, ViewLayout().cameras(32, 32)); print('gsplat ready')" > runs/gsplat-warm.log 2>&1 &
    warm=$!
    timeout 240 python3 benchmarks/simulate_throughput.py --teacher imagedream --device cuda --batches 8,32 \
        --json "$OUT/imagedream_eager.json" 2>&1 | grep -v Warning || echo "imagedream throughput did not finish"
    wait $warm; cat runs/gsplat-warm.log | tail -2
    init="--init-from hub/mvdm-tiny --init-step ${INIT_STEP:-8038} --profile-steps 10"
else
    init="--init-from hub/mvdm-tiny --init-step ${INIT_STEP:-8038}"
fi
now=$(date +%s)
limit=$(( budget - (now - start) - 75 ))   # leave time for the pool build (~20 s) and the export
echo "training for ${limit} s"
python3 training/train_teacher.py --output-dir runs/mvdm-tiny-s2 --resume latest $init \
    --max-steps 12000 --warmup-steps 200 --batch-size 64 --pool-size 2048 --checkpoint-every 500 \
    --sample-every 1000 --log-every 50 --time-limit "$limit" --export runs/teacher-export $TEACHER_EXTRA 2>&1 \
    | tr "\r" "\n" | tee "$OUT/train_${mode}.log" | tail -60
tail -3 runs/mvdm-tiny-s2/log.jsonl
cp runs/mvdm-tiny-s2/log.jsonl "$OUT/log.jsonl"
last=$(ls runs/mvdm-tiny-s2/samples | tail -1); cp "runs/mvdm-tiny-s2/samples/$last" "$OUT/samples.png"
tar -C runs -cf - teacher-export | split -b 15m - "$OUT/teacher.tar.part-"
ls -la "$OUT"; echo "chunk took $(( $(date +%s) - start )) s"
