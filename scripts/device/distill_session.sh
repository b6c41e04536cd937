#!/usr/bin/env bash
# Teacher fine-tuning and distillation on one lent machine of 1+ GPUs, in back-to-back calls of < 10 minutes (a
# warm machine keeps runs/):
#   bash scripts/device/distill_session.sh teacher   # corpora; TEACHER_VARIANTS (high-noise expert candidates for
#                                                    # hub/mvdm-tiny) side by side, the one whose imagined views
#                                                    # match the truth best becomes runs/teacher; quadruples
#   bash scripts/device/distill_session.sh prepare   # corpora and quadruples (time-boxed; rerun to go on),
#                                                    # then the arms start if time is left
#   bash scripts/device/distill_session.sh train     # the arms train on (repeat while the budget allows)
#   bash scripts/device/distill_session.sh finish    # the arms train on, then evaluation
# Every call brings back the students and the results through $OUT (see pack).
# The 4 arms share the GPUs at equal budget (same --max-steps and batch): main (explicit + implicit verification,
# the teacher's N), no-verification, fresh-noise, and the 3D-only baseline (ground-truth renders, fresh N).
# A speed probe (the arms' first 20 steps) sets --max-steps so that the slowest arm finishes in TRAIN_SECONDS
# (default 700) of training. Needs .wheels carried; the teacher is runs/teacher when the teacher stage made one,
# else hub/mvdm-tiny. Jobs spread over the GPUs (CUDA_VISIBLE_DEVICES); with 2+ GPUs the prepare and finish stages
# also measure 1- vs K-GPU scaling of simulate.py and distill.py under accelerate launch (runs/scaling.json;
# SCALING=0 skips it).
# SMOKE=1 TEACHER_INIT=<toy teacher> INIT_STEP=<its step> rehearses it all on a CPU (or TEACHER=<toy teacher>
# without the teacher stage).
set -eo pipefail
stage=${1:?teacher, prepare, train or finish}
start=$(date +%s)
budget=${CHUNK_SECONDS:-560}
export PYTHONPATH=$PWD TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=60
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" runs
if [ -z "$TEACHER" ]; then TEACHER=hub/mvdm-tiny; [ -f runs/teacher/model_index.json ] && TEACHER=runs/teacher; fi
echo "teacher: $TEACHER"
# Sizes; SMOKE=1 shrinks everything for a CPU rehearsal of the orchestration (with TEACHER=a toy teacher).
if [ -n "$SMOKE" ]; then
    N_CORPUS=8 N_TRAIN=8 N_TEST=4 N_HELDOUT=4 SIZE=32 SIM_EXTRA="--steps 2" DISTILL_EXTRA="--tiny-test" EVAL_EXTRA="--fit-steps 2 --device cpu --batch 4"
    TEACHER_EVAL_EXTRA="--objects 2 --batch 2 --fit-steps 2 --steps 2 --num-gaussians 256 --input-size 32 --device cpu"
    TEACHER_TRAIN_EXTRA="--tiny-test --stop-after 4 --sample-steps 2" SCALE_IMAGES=2 SCALE_STEPS=10
fi
N_CORPUS=${N_CORPUS:-1024} N_TRAIN=${N_TRAIN:-1024} N_TEST=${N_TEST:-48} N_HELDOUT=${N_HELDOUT:-32} SIZE=${SIZE:-128}
left() { echo $(( budget - ($(date +%s) - start) )); }
box() { local t=$(( $(left) - $1 )); [ "$t" -lt 60 ] && t=60; echo "$t"; }  # a time box: what is left less $1, >= 60 s
pack() {  # on every exit, failures included: bring back what exists, so nothing done is lost
    # The students (fp16 shards; the frozen tokenizer is hub/efficientnet-lite0): main always, the 3D-only baseline
    # from the train stage on (8 files of 16 MiB come back; a tiny student is 26 MiB). The held-out quadruple sets once
    # (prepare), so the evaluation can be rerun on the CPU. Logs, the plan, sample grids, evaluation results.
    local students=runs/d-main/pipeline
    [ "$stage" = train ] || [ "$stage" = finish ] && students="$students runs/d-baseline-3d/pipeline"
    tar --exclude image_encoder -cf - $students 2>/dev/null | split -b 15m - "$OUT/students.tar.part-" || true
    [ "$stage" = teacher ] && [ -d runs/teacher ] && tar -C runs --exclude image_encoder -cf - teacher | split -b 15m - "$OUT/teacher.tar.part-"
    [ "$stage" = prepare ] && tar -cf - runs/q-test runs/q-heldout runs/gt-test runs/gt-heldout 2>/dev/null | split -b 15m - "$OUT/eval-sets.tar.part-"
    tar -czf "$OUT/results.tgz" runs/plan.json runs/scaling.json runs/teacher-choice.json runs/choice runs/t-*/log.jsonl runs/t-*/samples runs/eval runs/d-*/log.jsonl runs/d-*/samples runs/*.log runs/c-test/README.md \
        runs/q-corpus/README.md 2>/dev/null || true
    ls -la "$OUT"; echo "$stage took $(( $(date +%s) - start )) s"
}
trap pack EXIT
source scripts/device/common.sh  # wheels, NGPU, on_gpu, launch

ARMS="main no-verification fresh-noise baseline-3d"
# Batch 64, not 16: one arm's step is mostly host work (kernel launches of a tiny model: 3 steps/s alone at batch 16
# with the GPU busy 12% of the time), so a larger batch is nearly free samples.
export ARM_BATCH=${ARM_BATCH:-64}
# The arms share the CPU: at torch's default (a thread per core each) the 4 arms ran 5-12x slower than one alone
# (2026-11-30, 2x H200, 32 cores: 0.25-0.6 steps/s against 3.0), their forward being mostly host work.
ARM_THREADS=${ARM_THREADS:-$(( $(nproc) / 4 > 0 ? $(nproc) / 4 : 1 ))}
arm_command() {  # arm, max steps, time limit
    local common="--teacher $TEACHER --output-dir runs/d-$1 --max-steps $2 --batch-size $ARM_BATCH --lr 2e-4 --warmup-steps 200
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
    local k=0
    for arm in $ARMS; do
        OMP_NUM_THREADS=$ARM_THREADS on_gpu $k python3 $(arm_command $arm "$1" "$2") > "runs/d-$arm.log" 2>&1 &
        k=$(( k + 1 ))
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
    # The probe's steps are the arms' first steps (same folders, resumed later): the warm-up and the verification
    # ramp do not depend on --max-steps this early (the ramp's weight is ~0 before 20% of the run).
    local k=0
    for arm in $ARMS; do
        OMP_NUM_THREADS=$ARM_THREADS on_gpu $k python3 $(arm_command $arm 100000 600 | sed "s#--log-every 25#--log-every 5#; s#--export [^ ]*##") \
            --stop-after 20 > runs/probe-$arm.log 2>&1 &
        k=$(( k + 1 ))
    done
    wait
    # TRAIN_SECONDS: the training time the arms will get over all calls; 10% is kept as a margin.
    python3 - <<'PY'
import json, pathlib, os
rates = {}
for arm in "main no-verification fresh-noise baseline-3d".split():
    rows = {r["step"]: r["elapsed_s"] for r in map(json.loads, pathlib.Path(f"runs/d-{arm}/log.jsonl").read_text().splitlines()) if "elapsed_s" in r}
    rates[arm] = 15 / (rows[20] - rows[5])
train_seconds = float(os.environ.get("TRAIN_SECONDS", "700"))
max_steps = max(int(os.environ.get("MIN_STEPS", "100")), int(min(rates.values()) * train_seconds * 0.9) // 50 * 50)
json.dump({"rates_steps_per_s_side_by_side": rates, "gpus": int(os.environ["NGPU"]), "batch_size": int(os.environ["ARM_BATCH"]),
           "max_steps": max_steps, "train_seconds": train_seconds}, open("runs/plan.json", "w"), indent=1)
print(json.dumps(json.load(open("runs/plan.json"))))
PY
}

warm_gsplat() {  # gsplat JIT-compiles its CUDA code once per machine (~80 s of CPU)
    [ -n "$SMOKE" ] || python3 -c "from dd3g.rendering import render; from training import synthetic; from dd3g.cameras import ViewLayout
g = synthetic.batch_objects([0], 64).to('cuda'); render(g, ViewLayout().cameras(32, 32)); print('gsplat ready')"
}

build_corpora() {  # $1: seconds to keep free after the build
    # Object generation is CPU work (~12 items/s a process in the first run): 3 processes for each large corpus
    # (shards split by number), 2 threads each, so 8 builds share the cores instead of oversubscribing them.
    for spec in "corpus $N_CORPUS c-corpus 3" "train $N_TRAIN c-train 3" "test $N_TEST c-test 1" "heldout $N_HELDOUT c-heldout 1"; do
        set -- $spec "$1"
        for k in $(seq 0 $(( $4 - 1 ))); do
            OMP_NUM_THREADS=2 nice -n 5 python3 training/build_corpus.py --source procedural --split $1 --num-images $2 --size $SIZE \
                --out runs/$3 --process-index $k --num-processes $4 --time-limit $(box $5) --no-progress > runs/$3-$k.log 2>&1 &
        done
    done
    wait; tail -qn1 runs/c-*.log
}

# Teacher variants, one per line: name, then train_teacher.py flags. Uniform timesteps left hub/mvdm-tiny
# camera-blind: at 64 px only t >= ~995 hides every view's mean colour in the noise, and there (the sampler's first
# step, which lays the views out) the UNet reads the noise instead of the cameras. Fine-tuning it with more top-noise
# samples did not fix that at toy scale; a separate high-noise expert (--expert-for) is the main candidate.
TEACHER_INIT=${TEACHER_INIT:-hub/mvdm-tiny}
INIT_HUB="--init-from $TEACHER_INIT --init-step ${INIT_STEP:-8038}"
TEACHER_VARIANTS=${TEACHER_VARIANTS:-"expert-scratch --expert-for $TEACHER_INIT --high-noise-start 995
expert-hub --expert-for $TEACHER_INIT --high-noise-start 995 $INIT_HUB"}
train_teacher_variant() {  # name, flags...: train until the box closes
    local name=$1; shift
    # 4 threads: the corpus builds share the CPU (at the default of one thread per core, the first try ran 10x slow).
    # The time limit starts after the pool build (~30 s); TEACHER_TAIL (s) is kept for the choice and the quadruples.
    OMP_NUM_THREADS=4 python3 training/train_teacher.py --output-dir runs/t-$name --resume latest --max-steps 20000 \
        --warmup-steps 100 --batch-size 64 --pool-size 1024 --ema-decay 0.998 --checkpoint-every 250 --sample-every 250 \
        --log-every 50 --time-limit $(box $(( ${TEACHER_TAIL:-150} + 40 ))) --export runs/t-$name/teacher "$@" \
        $TEACHER_TRAIN_EXTRA > runs/t-$name.log 2>&1
}
choose_teacher() {  # the variant (or the starting teacher) whose imagined views match the true renders best
    local k=0 quick="--objects ${CHOICE_OBJECTS:-16} --batch 16 --fit-steps 0 --splits val"
    [ -n "$SMOKE" ] && quick="$TEACHER_EVAL_EXTRA --splits val"
    for folder in $TEACHER_INIT runs/t-*/teacher; do
        [ -f "$folder/model_index.json" ] || continue
        name=$(basename "$(dirname "$folder")"); [ "$folder" = "$TEACHER_INIT" ] && name=start
        on_gpu $k python3 benchmarks/teacher_quality.py --teacher "$folder" $quick --out runs/choice/$name > runs/choice-$name.log 2>&1 &
        k=$(( k + 1 ))
    done
    wait
    python3 - <<'PY'
import json, pathlib, shutil
rows = {}
for report in sorted(pathlib.Path("runs/choice").glob("*/teacher_quality.json")):
    r = json.loads(report.read_text())
    rows[report.parent.name] = {"teacher": r["teacher"], "imagined_psnr": r["val"]["psnr"]["imagined_views"],
                                "copied_psnr": r["val"]["psnr"]["copied_view"], "camera_sensitivity": r["val"]["camera_sensitivity"]}
if not rows:
    raise SystemExit("no teacher could be scored")
chosen = max(rows, key=lambda k: rows[k]["imagined_psnr"])
shutil.rmtree("runs/teacher", ignore_errors=True)
shutil.copytree(rows[chosen]["teacher"], "runs/teacher")
report = {"variants": rows, "chosen": chosen, "rule": "the best PSNR of the imagined views (val objects, 30-step DDIM)"}
pathlib.Path("runs/teacher-choice.json").write_text(json.dumps(report, indent=1))
print(json.dumps(report, indent=1))
PY
}

scaling() {  # 1 GPU vs all of them through accelerate launch: simulate.py and distill.py, the same work
    [ -f runs/scaling.json ] || [ "${SCALING:-1}" = 0 ] && return 0
    { [ "$NGPU" -gt 1 ] || [ -n "$SMOKE" ]; } || return 0
    echo "[$(left) s left] scaling, 1 vs $NGPU GPUs"
    local n=${SCALE_IMAGES:-192} steps=${SCALE_STEPS:-40}
    local sim="training/simulate.py --teacher $TEACHER --corpus runs/c-corpus --num-images $n --elevation-from-origin
        --batch-size 64 --shard-size 64 --dtype bfloat16 --no-progress $SIM_EXTRA"
    local dis="training/distill.py --teacher $TEACHER --max-steps 1000 --stop-after $steps --batch-size 16 --log-every 5
        --checkpoint-every 100000 --sample-every 100000 $DISTILL_EXTRA"
    on_gpu 0 python3 $sim --out runs/scale-sim-1 > runs/scale-sim-1.log 2>&1
    launch $sim --out runs/scale-sim-K > runs/scale-sim-K.log 2>&1
    on_gpu 0 python3 $dis --quadruples runs/scale-sim-1 --output-dir runs/scale-d-1 > runs/scale-d-1.log 2>&1
    launch $dis --quadruples runs/scale-sim-1 --output-dir runs/scale-d-K > runs/scale-d-K.log 2>&1
    python3 - <<'PY'
import json, os, pathlib, re
import pyarrow.parquet as pq
def sim_rate(log):  # all processes' quadruples over the slowest process's build time
    rows = [(int(a), float(b)) for a, b in re.findall(r"wrote (\d+) quadruples in ([\d.]+) s", pathlib.Path(log).read_text())]
    return sum(r for r, _ in rows) / max(s for _, s in rows), len(rows)
def distill_rate(folder):
    rows = {r["step"]: r for r in map(json.loads, (pathlib.Path(folder) / "log.jsonl").read_text().splitlines()) if "elapsed_s" in r}
    last = max(rows); first = 10 if 10 in rows and last > 10 else min(rows)
    if last == first:
        return None, rows[last].get("loss")
    return (last - first) / (rows[last]["elapsed_s"] - rows[first]["elapsed_s"]), rows[last].get("loss")
def views(folder):
    shards = sorted(pathlib.Path(folder, "data").glob("*.parquet"))
    return [pq.read_table(s, columns=["views"]).column("views").to_pylist() for s in shards]
report = {"gpus": int(os.environ["NGPU"])}
(one, _), (many, procs) = sim_rate("runs/scale-sim-1.log"), sim_rate("runs/scale-sim-K.log")
report["simulate_quadruples_per_s"] = {"1": one, str(procs): many, "speedup": many / one}
report["simulate_outputs_identical"] = views("runs/scale-sim-1") == views("runs/scale-sim-K")
(s1, l1), (sk, lk) = distill_rate("runs/scale-d-1"), distill_rate("runs/scale-d-K")
report["distill_steps_per_s"] = {"1": s1, str(procs): sk}
if s1 and sk:
    report["distill_samples_per_s"] = {"1": 16 * s1, str(procs): 16 * procs * sk, "speedup": procs * sk / s1}
report["distill_last_loss"] = {"1": l1, str(procs): lk}
pathlib.Path("runs/scaling.json").write_text(json.dumps(report, indent=1))
print(json.dumps(report, indent=1))
PY
}

simulate_all() {  # $1: seconds to keep free after the builds
    echo "[$(left) s left] quadruples"
    # bf16 and a time box: the tiny teacher's 30-step CFG ODE ran at ~8 quadruples/s in fp32 beside two other builds.
    # The training quadruples over all GPUs (accelerate launch); the small builds beside them, spread over the GPUs.
    sim="training/simulate.py --teacher $TEACHER --elevation-from-origin --batch-size 128 --shard-size 256 --no-progress
        --dtype bfloat16 --time-limit $(box $1) $SIM_EXTRA"
    launch $sim --corpus runs/c-corpus --out runs/q-corpus > runs/q-corpus.log 2>&1 &
    local k=0
    for pair in "test q-test" "heldout q-heldout"; do set -- $pair
        on_gpu $k python3 $sim --corpus runs/c-$1 --out runs/$2 > runs/$2.log 2>&1 &
        k=$(( k + 1 ))
    done
    for pair in "test gt-test" "heldout gt-heldout"; do set -- $pair
        on_gpu $k python3 $sim --ground-truth --corpus runs/c-$1 --out runs/$2 > runs/$2.log 2>&1 &
        k=$(( k + 1 ))
    done
    # The 3D-only baseline's targets: its noise is fresh, so one seed per object; object generation is CPU work
    # (~4 quadruples/s a process), so 4 processes split the shards.
    for j in 0 1 2 3; do
        OMP_NUM_THREADS=2 on_gpu $j python3 $sim --ground-truth --seeds-per-image 1 --batch-size 64 --shard-size 64 --corpus runs/c-train --out runs/gt-train \
            --process-index $j --num-processes 4 > runs/gt-train-$j.log 2>&1 &
    done
    wait; for f in runs/q-*.log runs/gt-*.log; do echo "$f: $(tr '\r' '\n' < $f | grep -E "wrote|complete" | tr '\n' ' ')"; done
}

if [ "$stage" = teacher ]; then
    warm_gsplat
    echo "[$(left) s left] corpora (background) and teacher variants"
    build_corpora $(( ${TEACHER_TAIL:-150} + 40 )) > runs/corpora.log 2>&1 &
    k=0
    while read -r variant; do
        on_gpu $k train_teacher_variant $variant &
        k=$(( k + 1 ))
    done <<< "$TEACHER_VARIANTS"
    wait; cat runs/corpora.log
    for log in runs/t-*/log.jsonl; do echo "$log"; grep camera_sensitivity "$log" | tail -2; done
    echo "[$(left) s left] choosing the teacher"
    choose_teacher
    TEACHER=runs/teacher
    simulate_all 15
    exit 0
fi

if [ "$stage" = prepare ]; then
    warm_gsplat
    echo "[$(left) s left] corpora"
    build_corpora 300
    scaling || echo "scaling measurement failed (see runs/scale-*.log); going on"
    simulate_all 120
    if [ "$(left)" -gt 240 ]; then
        plan; steps=$(python3 -c "import json; print(json.load(open('runs/plan.json'))['max_steps'])")
        echo "[$(left) s left] training the arms to $steps steps"
        train_arms "$steps" $(box 75)
    fi
elif [ "$stage" = train ]; then
    plan; steps=$(python3 -c "import json; print(json.load(open('runs/plan.json'))['max_steps'])")
    train_arms "$steps" $(box 75)
else
    scaling || echo "scaling measurement failed (see runs/scale-*.log); going on"
    plan; steps=$(python3 -c "import json; print(json.load(open('runs/plan.json'))['max_steps'])")
    train_arms "$steps" $(box ${EVAL_SECONDS:-270})
    echo "[$(left) s left] evaluation"
    pipes=""; for arm in $ARMS; do pipes="$pipes --pipeline $arm=runs/d-$arm/pipeline"; done
    pipes="$pipes $EVAL_EXTRA"
    mkdir -p runs/eval
    # Held-out objects of the teacher's test split (vs the teacher, the truth, the per-sample ceiling; determinism)
    # and of the held-out family (diversity across seeds), side by side.
    on_gpu 0 timeout $(box 15) python3 benchmarks/distill_quality.py --quadruples runs/q-test --truth runs/gt-test $pipes \
        --count ${TEST_COUNT:-192} --out runs/eval/test > runs/eval/distill-test.log 2>&1 &
    on_gpu 1 timeout $(box 15) python3 benchmarks/distill_quality.py --quadruples runs/q-heldout --truth runs/gt-heldout $pipes \
        --count ${HELDOUT_COUNT:-128} --diversity-images 8 --out runs/eval/heldout > runs/eval/distill-heldout.log 2>&1 &
    if [ "$NGPU" -gt 1 ]; then  # the ImageDream-size ODE, torch.compile'd, beside the last GPU's evaluation (not a clean figure)
        on_gpu $(( NGPU - 1 )) timeout $(box 20) python3 benchmarks/simulate_throughput.py --teacher imagedream --device cuda \
            --batches 32 --repeats 2 --compile --json runs/eval/imagedream_compiled.json > runs/eval/imagedream.log 2>&1 &
    fi
    wait; tail -n 14 runs/eval/distill-*.log; tail -n 3 runs/eval/imagedream.log 2>/dev/null || true
fi

