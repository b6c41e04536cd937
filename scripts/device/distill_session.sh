#!/usr/bin/env bash
# Distillation on one lent GPU machine, in back-to-back calls of < 10 minutes (a warm machine keeps runs/):
#   bash scripts/device/distill_session.sh prepare   # corpora and quadruples (time-boxed; rerun to go on),
#                                                    # then the arms start if time is left
#   bash scripts/device/distill_session.sh train     # the arms train on (repeat while the budget allows)
#   bash scripts/device/distill_session.sh finish    # the arms train on, then evaluation
# Every call brings back the main and baseline students and the results through $OUT.
# The 4 arms share the GPU at equal budget (same --max-steps and batch): main (explicit + implicit verification,
# the teacher's N), no-verification, fresh-noise, and the 3D-only baseline (ground-truth renders, fresh N).
# A speed probe (25 steps of each arm, the main one profiled) sets --max-steps so that the slowest arm finishes
# in TRAIN_SECONDS (default 700) of training. Needs .wheels carried; the teacher is hub/mvdm-tiny.
# SMOKE=1 TEACHER=<toy teacher> rehearses it all on a CPU.
set -eo pipefail
stage=${1:?prepare, train or finish}
start=$(date +%s)
budget=${CHUNK_SECONDS:-560}
export PYTHONPATH=$PWD TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=60
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" runs
TEACHER=${TEACHER:-hub/mvdm-tiny}
# Sizes; SMOKE=1 shrinks everything for a CPU rehearsal of the orchestration (with TEACHER=a toy teacher).
if [ -n "$SMOKE" ]; then
    N_CORPUS=8 N_TRAIN=8 N_TEST=4 N_HELDOUT=4 SIZE=32 SIM_EXTRA="--steps 2" DISTILL_EXTRA="--tiny-test" EVAL_EXTRA="--fit-steps 2 --device cpu --batch 4"
    TEACHER_EVAL_EXTRA="--objects 2 --batch 2 --fit-steps 2 --steps 2 --num-gaussians 256 --input-size 32 --device cpu"
fi
N_CORPUS=${N_CORPUS:-1024} N_TRAIN=${N_TRAIN:-1024} N_TEST=${N_TEST:-48} N_HELDOUT=${N_HELDOUT:-32} SIZE=${SIZE:-128}
left() { echo $(( budget - ($(date +%s) - start) )); }
box() { local t=$(( $(left) - $1 )); [ "$t" -lt 60 ] && t=60; echo "$t"; }  # a time box: what is left less $1, >= 60 s
pack() {  # on every exit, failures included: bring back what exists, so nothing done is lost
    # The main and baseline students (fp16 shards; the frozen tokenizer is hub/efficientnet-lite0), logs, the
    # plan, sample grids and evaluation results.
    tar --exclude image_encoder -cf - runs/d-main/pipeline runs/d-baseline-3d/pipeline 2>/dev/null \
        | split -b 15m - "$OUT/students.tar.part-" || true
    tar -czf "$OUT/results.tgz" runs/plan.json runs/eval runs/d-*/log.jsonl runs/d-*/samples runs/*.log runs/c-test/README.md \
        runs/q-corpus/README.md 2>/dev/null || true
    ls -la "$OUT"; echo "$stage took $(( $(date +%s) - start )) s"
}
trap pack EXIT
python3 -c "import gsplat, diffusers, datasets" 2>/dev/null || \
    python3 -m pip install -q --no-index --find-links .wheels gsplat plyfile diffusers datasets trimesh
[ -n "$SMOKE" ] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

ARMS="main no-verification fresh-noise baseline-3d"
arm_command() {  # arm, max steps, time limit
    local common="--teacher $TEACHER --output-dir runs/d-$1 --max-steps $2 --batch-size 16 --lr 2e-4 --warmup-steps 200
        --checkpoint-every 200 --sample-every 100000 --log-every 25 --resume latest --time-limit $3 --export runs/d-$1/pipeline
        --allow-incomplete $DISTILL_EXTRA"
    case $1 in
        main) echo "training/distill.py --quadruples runs/q-corpus $common" ;;
        no-verification) echo "training/distill.py --quadruples runs/q-corpus $common --no-verification" ;;
        fresh-noise) echo "training/distill.py --quadruples runs/q-corpus $common --fresh-noise" ;;
        baseline-3d) echo "training/train_3d_baseline.py --quadruples runs/gt-train $common" ;;
    esac
}
train_arms() {  # max steps, time limit: all arms side by side
    for arm in $ARMS; do
        python3 $(arm_command $arm "$1" "$2") > "runs/d-$arm.log" 2>&1 &
    done
    wait
    for arm in $ARMS; do
        echo "== $arm"; tr "\r" "\n" < "runs/d-$arm.log" | grep -v "^\s*$" | tail -3 || true
        tail -1 "runs/d-$arm/log.jsonl" 2>/dev/null || echo "(no log line yet)"
    done
}

plan() {  # the speed probe and runs/plan.json, once
    [ -f runs/plan.json ] && return 0
    echo "[$(left) s left] speed probe"
    for arm in $ARMS; do
        profile=""; if [ $arm = main ]; then profile="--profile-steps 10"; fi
        python3 $(arm_command $arm 100000 600 | sed "s#runs/d-$arm#runs/probe-$arm#g; s#--log-every 25#--log-every 5#; s#--export [^ ]*##") \
            --stop-after 25 $profile > runs/probe-$arm.log 2>&1 &
    done
    wait
    tr '\r' '\n' < runs/probe-main.log | grep -A 22 "Self CPU %" | head -24
    # TRAIN_SECONDS: the training time the arms will get over all calls; 10% is kept as a margin.
    python3 - <<'PY'
import json, pathlib, os, time
rates = {}
for arm in "main no-verification fresh-noise baseline-3d".split():
    rows = {r["step"]: r["elapsed_s"] for r in map(json.loads, pathlib.Path(f"runs/probe-{arm}/log.jsonl").read_text().splitlines()) if "elapsed_s" in r}
    rates[arm] = 15 / (rows[25] - rows[10])
train_seconds = float(os.environ.get("TRAIN_SECONDS", "700"))
max_steps = max(int(os.environ.get("MIN_STEPS", "100")), int(min(rates.values()) * train_seconds * 0.9) // 50 * 50)
json.dump({"rates_steps_per_s_4_arms_sharing": rates, "max_steps": max_steps, "train_seconds": train_seconds}, open("runs/plan.json", "w"), indent=1)
print(json.dumps(json.load(open("runs/plan.json"))))
PY
}

if [ "$stage" = prepare ]; then
    [ -n "$SMOKE" ] || python3 -c "from dd3g.rendering import render; from training import synthetic; from dd3g.cameras import ViewLayout
g = synthetic.batch_objects([0], 64).to('cuda'); render(g, ViewLayout().cameras(32, 32)); print('gsplat ready')"
    echo "[$(left) s left] corpora"
    # Object generation is CPU work (~12 items/s a process in the first run): 3 processes for each large corpus
    # (shards split by number), 2 threads each, so 8 builds share the 16 cores instead of oversubscribing them.
    for spec in "corpus $N_CORPUS c-corpus 3" "train $N_TRAIN c-train 3" "test $N_TEST c-test 1" "heldout $N_HELDOUT c-heldout 1"; do
        set -- $spec
        for k in $(seq 0 $(( $4 - 1 ))); do
            OMP_NUM_THREADS=2 python3 training/build_corpus.py --source procedural --split $1 --num-images $2 --size $SIZE \
                --out runs/$3 --process-index $k --num-processes $4 --time-limit $(box 300) --no-progress > runs/$3-$k.log 2>&1 &
        done
    done
    wait; tail -qn1 runs/c-*.log
    echo "[$(left) s left] quadruples"
    # bf16 and a time box: the tiny teacher's 30-step CFG ODE ran at ~8 quadruples/s in fp32 beside two other builds.
    sim="python3 training/simulate.py --teacher $TEACHER --elevation-from-origin --batch-size 128 --shard-size 256 --no-progress
        --dtype bfloat16 --time-limit $(box 120) $SIM_EXTRA"
    for pair in "corpus q-corpus" "test q-test" "heldout q-heldout"; do set -- $pair
        $sim --corpus runs/c-$1 --out runs/$2 > runs/$2.log 2>&1 &
    done
    for pair in "train gt-train" "test gt-test" "heldout gt-heldout"; do set -- $pair
        $sim --ground-truth --corpus runs/c-$1 --out runs/$2 > runs/$2.log 2>&1 &
    done
    wait; for f in runs/q-*.log runs/gt-*.log; do echo "$f: $(tr '\r' '\n' < $f | grep -E "wrote|complete" | tr '\n' ' ')"; done
    if [ "$(left)" -gt 240 ]; then
        plan; steps=$(python3 -c "import json; print(json.load(open('runs/plan.json'))['max_steps'])")
        echo "[$(left) s left] training the arms to $steps steps"
        train_arms "$steps" $(box 75)
    fi
elif [ "$stage" = train ]; then
    plan; steps=$(python3 -c "import json; print(json.load(open('runs/plan.json'))['max_steps'])")
    train_arms "$steps" $(box 75)
else
    plan; steps=$(python3 -c "import json; print(json.load(open('runs/plan.json'))['max_steps'])")
    train_arms "$steps" $(box ${EVAL_SECONDS:-270})
    echo "[$(left) s left] evaluation"
    pipes=""; for arm in $ARMS; do pipes="$pipes --pipeline $arm=runs/d-$arm/pipeline"; done
    pipes="$pipes $EVAL_EXTRA"
    mkdir -p runs/eval
    ( python3 benchmarks/distill_quality.py --quadruples runs/q-test --truth runs/gt-test $pipes --count 192 --out runs/eval/test \
      && python3 benchmarks/distill_quality.py --quadruples runs/q-heldout --truth runs/gt-heldout $pipes --count 128 \
         --diversity-images 8 --out runs/eval/heldout ) > runs/eval/distill.log 2>&1 &
    python3 benchmarks/teacher_quality.py --teacher $TEACHER --objects 100 --batch 50 --fit-steps 200 --out runs/eval/teacher $TEACHER_EVAL_EXTRA \
        > runs/eval/teacher.log 2>&1 &
    wait; tail -n 12 runs/eval/distill.log; tail -n 40 runs/eval/teacher.log
fi

