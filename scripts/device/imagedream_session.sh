#!/usr/bin/env bash
# Issue 16's GPU measurements at ImageDream's published sizes (random weights) on one lent GPU, in two calls of < 10
# minutes each (either may run on a cold machine):
#   bash scripts/device/imagedream_session.sh chain   # corpus -> simulate -> distil `base` (implicit verification from
#                                                     # the first step, batch 8) -> export -> DD3GPipeline, with samples/s,
#                                                     # peak memory and a profile of 5 steps; then the `base` student's
#                                                     # latency at batch 1, before (eager, CUDA graphs) and after
#                                                     # (channels_last, max-autotune), and with ImageDream's UNet as phase 1
#   bash scripts/device/imagedream_session.sh speed   # the 30-step CFG ODE in quadruples/s at batch 32, before (eager,
#                                                     # compiled) and after (compiled + channels_last + cuDNN benchmark;
#                                                     # then max-autotune if time is left), with TFLOP/s
# Everything lands in $OUT (JSON and logs). Needs .wheels carried; no hub/ weights. SMOKE=1 rehearses it on a CPU at
# toy sizes (imagedream-tiny, base-small).
set -eo pipefail
stage=${1:?chain or speed}
start=$(date +%s)
budget=${CHUNK_SECONDS:-570}
export PYTHONPATH=$PWD TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" runs
source scripts/device/common.sh  # wheels, NGPU
left() { echo $(( budget - ($(date +%s) - start) )); }
step() {  # name, seconds it may take at most (cut to what is left), command...: its log in $OUT, never fatal
    local name=$1 limit=$2; shift 2
    local t=$(( $(left) < limit ? $(left) : limit ))
    if [ "$t" -lt 20 ]; then echo "[$name] skipped: $(left) s left"; return 0; fi
    echo "[$(left) s left] $name (at most $t s)"
    timeout "$t" "$@" > "$OUT/$name.log" 2>&1 || echo "[$name] ended with $? (log: $name.log)"
    tail -3 "$OUT/$name.log"
}
if [ -n "$SMOKE" ]; then
    size=tiny teacher=imagedream-tiny scale=base-small device=cpu dtype=fp32 batches=1 steps=2 modes_before=eager modes_after=eager
    chain_size="--images 2 --seeds-per-image 1 --distill-steps 3 --batch-size 2 --profile-steps 0" repeats=1
else
    size=full teacher=imagedream scale=base device=cuda dtype=bf16 batches=32 steps=30 modes_before=eager,reduce-overhead modes_after=reduce-overhead,max-autotune
    chain_size="--images 16 --seeds-per-image 2 --distill-steps 60 --batch-size 8 --profile-steps 5" repeats=20
fi

if [ "$stage" = chain ]; then
    step chain 330 python3 benchmarks/imagedream_chain.py --size $size --work runs/imagedream-chain $chain_size --out "$OUT/chain.json"
    step latency-before 80 python3 benchmarks/latency.py --repeats $repeats --scale $scale --device $device --batches 1 --modes $modes_before --json "$OUT/latency-before.json"
    step latency-after 120 python3 benchmarks/latency.py --repeats $repeats --scale $scale --device $device --batches 1 --modes $modes_after --channels-last --json "$OUT/latency-after.json"
    step latency-imagedream 100 python3 benchmarks/latency.py --repeats $repeats --scale $scale --phase1 imagedream --device $device --batches 1 --modes $modes_before --json "$OUT/latency-imagedream.json"
elif [ "$stage" = speed ]; then
    ode="benchmarks/simulate_throughput.py --teacher $teacher --device $device --dtype $dtype --batches $batches --steps $steps --repeats 2 --workdir runs/ode"
    step ode-eager 120 python3 $ode --count-flops --json "$OUT/ode-eager.json"
    step ode-compiled 150 python3 $ode --compile --json "$OUT/ode-compiled.json"
    step ode-after 150 python3 $ode --compile --channels-last --cudnn-benchmark --json "$OUT/ode-after.json"
    [ -n "$SMOKE" ] || step ode-autotune 400 python3 $ode --compile max-autotune-no-cudagraphs --channels-last --cudnn-benchmark --json "$OUT/ode-autotune.json"
else
    echo "unknown stage $stage: chain or speed" >&2; exit 2
fi
ls -la "$OUT"; echo "$stage took $(( $(date +%s) - start )) s"
