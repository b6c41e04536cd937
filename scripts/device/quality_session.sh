#!/usr/bin/env bash
# The teacher trained on at the GPU's speed and a student distilled from it, on one lent machine of 1+ GPUs, in
# back-to-back calls of < 10 minutes (a warm machine keeps runs/):
#   bash scripts/device/quality_session.sh teacher   # (PROBE=1: speed probe, the old and new training step and the
#                                                    # model alone) the main UNet trains on (DDP over every GPU) from
#                                                    # $TEACHER_INIT beside its kept high-noise expert, and is exported;
#                                                    # corpora build meanwhile
#   bash scripts/device/quality_session.sh student   # (TEACHER_SECONDS > 0: the teacher trains on first) the teacher is
#                                                    # scored; quadruples; two student arms, one per GPU: main (with the
#                                                    # input-view term) and noiv (without); NFIT=1 adds the N-fit probe
#   bash scripts/device/quality_session.sh finish    # the arms train on; evaluation (NO_EVAL=1: train on only; NO_STEP=1:
#                                                    # no student-step benchmark after it)
#   bash scripts/device/quality_session.sh expert    # the high-noise expert retrained beside the main UNet this machine
#                                                    # trained (runs/teacher; else a copy of $TEACHER_INIT's), then the
#                                                    # teacher's scores on the GPU
#   bash scripts/device/quality_session.sh pair      # the main UNet and its expert trained at once, side by side on the
#                                                    # same GPUs (the expert's training never runs the main UNet), then
#                                                    # joined into runs/teacher and scored (PAIR_SCORE=1)
#   bash scripts/device/quality_session.sh score     # the teacher's scores alone (TQ_OBJECTS a split; REAL=<scans>: those too)
#   bash scripts/device/quality_session.sh sampler   # the teacher's sampler swept (SAMPLER="CFG:steps ..."), scored
#   bash scripts/device/quality_session.sh step      # the student's step against its model alone, eager and compiled
#   bash scripts/device/quality_session.sh shapes    # UNet shapes (SHAPES, MultiViewUNet.PRESETS) each trained from
#                                                    # scratch for SHAPE_SECONDS, timed and scored: quality per GPU-minute
# TEACHER_BACK=unet: a middle call of a teacher chain brings back only the main UNet it trained (17 MB, a handoff if the
# machine is lost; the whole 34 MB teacher takes much of the machine's 30 s idle window to come back, and the next call
# then starts bare); none: nothing of it. NO_CORPORA=1: the teacher stage builds no corpora. STUDENTS_BACK=none: a
# middle call of a student chain brings back no student (two exported arms are ~55 MB: at most two come back);
# STUDENTS_BACK="a b": only arms a and b (never more than two: the others stay on the machine).
# ARM_A / ARM_B ("name flags...") replace the two arms (none: no such arm); flags given there win over the script's
# (e.g. "--init-from <pipeline> --lr 1e-4": a warm start). ARMS="name flags... | name flags... | ..." any number of
# arms instead (an equal-budget ablation: the same ARM_STEPS each; see arm() for the verification and base3d arms). CORPUS_SEEDS=S: S seeds an image in the training quadruples
# (N_CORPUS x S of them; the evaluation sets keep 4). On a fresh machine the corpora are built on the CPUs while
# gsplat compiles, and the teacher's quadruples are made while the true renders wait for it. PRINT_FRACTION=P: the
# share of the teacher's pool objects with printed labels (training/synthetic.py; 0.5 by default, the shipped teacher's
# world since session 12), CORPUS_PRINT_FRACTION the same for the training corpus (0 by default; the evaluation sets
# always 0, so their figures compare across sessions); POOL_START=K: the pool is the train split's objects from index
# K on. TEACHER_SIZE=N: the teacher, expert and pair stages train at N px (train_teacher.py --sample-size), warm-started
# from TEACHER_INIT's weights of any size (the UNet has no size-bound parameters); by default TEACHER_INIT's own size.
# Every call brings back what exists through $OUT (see pack): the teacher (when trained in the call), else the
# students, logs, grids, scores (EVAL_SETS_BACK=1: the evaluation quadruples too). SIM_PROCESSES=K: K simulation
# processes over the GPUs (two on one H200 made 18 quadruples/s together against 30/s for one: keep 1 per GPU).
# SIM_EXTRA adds simulate.py flags to every simulation: --compile by default on a GPU (the teacher's UNets compiled:
# 3,072 quadruples at 128 px in 299 s, 10.3/s, against 412 s eager; session 22); SIM_EXTRA= turns it off.
# ARM_COMPILE: distill.py's --compile for every distillation arm, on by default on a GPU (the student's step 391 ms
# against 525 ms eager at 128 px, batch 64: student_step.py, session 22); ARM_COMPILE= turns it off. Both fall back
# to eager, from where they stopped, if the compiled run fails.
# Needs .wheels carried, and the model folders of hub/ that device-slim moved away (mvdm-tiny, efficientnet-lite0,
# lpips-alex) present. SMOKE=1 TEACHER_INIT=<toy teacher with an expert> rehearses it all on a CPU.
set -eo pipefail
stage=${1:?teacher, student, finish, expert, pair, score, sampler, step or shapes}
start=$(date +%s)
budget=${CHUNK_SECONDS:-560}
export PYTHONPATH=$PWD TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=60
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" runs
TEACHER_INIT=${TEACHER_INIT:-hub/mvdm-tiny} INIT_STEP=${INIT_STEP:-25441}  # the shipped main UNet's step
# A teacher carried without its tokenizer (hub folders link image_encoder to hub/efficientnet-lite0, which a copy made
# for the trip lacks) gets the link here: session 22 lost a call to a copy without it.
if [ -d "$TEACHER_INIT" ] && [ ! -e "$TEACHER_INIT/image_encoder" ] && [ -d hub/efficientnet-lite0 ]; then
    ln -sfn "$PWD/hub/efficientnet-lite0" "$TEACHER_INIT/image_encoder"
fi
if [ -z "$SMOKE" ]; then SIM_EXTRA=${SIM_EXTRA---compile} ARM_COMPILE=${ARM_COMPILE---compile}; fi  # compiling on a CPU takes minutes
if [ -n "$SMOKE" ]; then
    N_CORPUS=8 N_TEST=4 N_HELDOUT=4 N_FIT_SEEDS=4 SIZE=32 TEACHER_EXTRA="--tiny-test --pool-size 4 --sample-steps 2 --max-steps 6"
    SIM_EXTRA="--steps 2${SIM_EXTRA:+ $SIM_EXTRA}" DISTILL_EXTRA="--tiny-test" EVAL_EXTRA="--fit-steps 2 --device cpu --batch 4" PROBE_EXTRA="--tiny-test --device cpu --steps 2 --warmup 1 --batch-size 2"
    TQ_EXTRA="--objects 2 --batch 2 --fit-steps 2 --steps 2 --num-gaussians 256 --input-size 32 --device cpu"
fi
N_CORPUS=${N_CORPUS:-1024} N_TEST=${N_TEST:-48} N_HELDOUT=${N_HELDOUT:-32} SIZE=${SIZE:-128} N_FIT_SEEDS=${N_FIT_SEEDS:-64}
left() { echo $(( budget - ($(date +%s) - start) )); }
box() { local t=$(( $(left) - $1 )); [ "$t" -lt 30 ] && t=30; echo "$t"; }  # what is left less $1, >= 30 s
pack() {  # on every exit, failures included: bring back what exists (8 files, 64 MiB at most come back)
    # The teacher only when this machine trained it (a carried one is already here); the students whenever they
    # exist, so a machine given back before the next call loses nothing that was exported.
    if [ -n "$teacher_trained" ] && [ -f runs/teacher/model_index.json ]; then
        case ${TEACHER_BACK:-all} in
            all) tar -C runs --exclude image_encoder -cf - teacher | split -b 15m - "$OUT/teacher.tar.part-" ;;
            unet) tar -C runs -cf - teacher/unet | split -b 15m - "$OUT/teacher-unet.tar.part-" ;;
        esac
    fi
    if [ -z "$teacher_trained" ] && [ "${STUDENTS_BACK:-all}" != none ]; then
        local packed=0
        for arm in runs/d-*/pipeline; do
            [ -f $arm/model_index.json ] || continue
            name=$(basename "$(dirname $arm)")
            case " ${STUDENTS_BACK:-all} " in " all "|*" ${name#d-} "*) ;; *) continue ;; esac
            # two students (~27 MB each) fill what a call can bring back beside the results: the rest stay here
            [ $packed -lt 2 ] || { echo "not brought back: $name (two students already; STUDENTS_BACK names them)"; continue; }
            tar -C runs/$name --exclude image_encoder -cf - pipeline | split -b 15m - "$OUT/$name.tar.part-"
            packed=$(( packed + 1 ))
        done
    fi
    if [ -n "$EVAL_SETS_BACK" ] && [ -d runs/gt-heldout ]; then  # the evaluation quadruples, to score on another machine
        tar -C runs -cf - q-test gt-test q-heldout gt-heldout | split -b 15m - "$OUT/evalsets.tar.part-"
    fi
    tar -czf "$OUT/results.tgz" --exclude checkpoints runs/probe runs/*.log runs/t-*/log.jsonl runs/t-*/samples runs/tq* runs/d-*/log.jsonl \
        runs/d-*/samples runs/eval runs/shapes/*.log runs/shapes/*.json runs/shapes/*-tq runs/shapes/*/log.jsonl runs/shapes/*/samples 2>/dev/null || true
    ls -la "$OUT"; echo "$stage took $(( $(date +%s) - start )) s"
}
trap pack EXIT
source scripts/device/common.sh  # wheels, NGPU, on_gpu, launch

train_teacher() {  # $1: seconds to keep after training
    teacher_trained=1
    # The schedule is set for a chain of sessions (--max-steps 30000); --resume latest goes on within this machine, and
    # a later machine continues from the exported teacher (--init-from it with its step).
    launch training/train_teacher.py --output-dir runs/t-main --resume latest --init-from "$TEACHER_INIT" --init-step "$INIT_STEP" \
        --keep-expert-from "$TEACHER_INIT" --max-steps ${TEACHER_MAX_STEPS:-30000} --warmup-steps 200 \
        --canonical-fraction ${CANONICAL_FRACTION:-0.75} --lighting ${LIGHTING:-mixed} --batch-size 64 --pool-size ${POOL_SIZE:-2048} \
        --print-fraction ${PRINT_FRACTION:-0.5} --pool-start ${POOL_START:-0} \
        --checkpoint-every 500 --sample-every 1000 --log-every 50 --time-limit "$(box "$1")" --export runs/teacher \
        ${TEACHER_SIZE:+--sample-size $TEACHER_SIZE} $TEACHER_EXTRA > runs/teacher-$stage.log 2>&1 || { tail -30 runs/teacher-$stage.log; return 1; }
    tr "\r" "\n" < runs/teacher-$stage.log | grep -E "initialised|resumed|time limit" || true
    grep camera_sensitivity runs/t-main/log.jsonl | tail -2; tail -1 runs/t-main/log.jsonl
}

build_corpora() {  # procedural corpora, CPU work, niced beside whatever runs on the GPUs
    # the training corpus gets CORPUS_PRINT_FRACTION; the evaluation sets stay unprinted, comparable across sessions
    local specs=("corpus $N_CORPUS c-corpus ${CORPUS_PROCESSES:-4} ${CORPUS_PRINT_FRACTION:-0}" "test $N_TEST c-test 1 0" "heldout $N_HELDOUT c-heldout 1 0")
    [ -n "$NFIT" ] && specs+=("corpus 8 c-nfit 1 0")
    for spec in "${specs[@]}"; do
        set -- $spec
        for k in $(seq 0 $(( $4 - 1 ))); do
            OMP_NUM_THREADS=2 nice -n 5 python3 training/build_corpus.py --source procedural --split $1 --num-images $2 --size $SIZE \
                --print-fraction $5 --out runs/$3 --process-index $k --num-processes $4 --no-progress > runs/$3-$k.log 2>&1 &
        done
    done
    wait; tail -qn1 runs/c-*.log
}

gsplat_ready() {  # gsplat compiles once, before anything else imports it (processes compiling at once broke each other's build)
    [ -n "$SMOKE" ] || python3 -c "from dd3g.rendering import render; from training import synthetic; from dd3g.cameras import ViewLayout
g = synthetic.batch_objects([0], 64).to('cuda'); render(g, ViewLayout().cameras(32, 32)); print('gsplat ready')"
}

if [ "$stage" = teacher ]; then
    echo "[$(left) s left] gsplat compile"
    gsplat_ready
    if [ -n "$PROBE" ]; then
    echo "[$(left) s left] speed probe"
    mkdir -p runs/probe
    # Before: the training script as it was (a copy carried in .gpu), 80 steps; after: the same flags now; and the
    # step against the model alone (benchmarks/teacher_step.py), eager on GPU 0 and compiled on GPU 1.
    probe="--max-steps 100000 --stop-after 80 --pool-size 256 --batch-size 64 --log-every 10 --checkpoint-every 100000 --sample-every 100000"
    [ -n "$SMOKE" ] && probe="--tiny-test --max-steps 100 --stop-after 4 --log-every 1 --checkpoint-every 100 --sample-every 100"
    if [ -z "$SMOKE" ]; then  # compiling on a CPU takes minutes: the rehearsal skips it
        on_gpu 1 timeout 200 python3 benchmarks/teacher_step.py --compile --json runs/probe/step_compiled.json > runs/probe/compiled.log 2>&1 &
    else true & fi
    compiled=$!
    on_gpu 0 python3 benchmarks/teacher_step.py --json runs/probe/step_eager.json $PROBE_EXTRA > runs/probe/eager.log 2>&1 || tail -20 runs/probe/eager.log
    for which in before after; do
        script=training/train_teacher.py; [ $which = before ] && script=.gpu/train_teacher_before.py
        on_gpu 0 python3 $script --output-dir runs/probe/$which $probe > runs/probe/$which.log 2>&1 || tail -20 runs/probe/$which.log
    done
    wait $compiled || echo "compiled probe did not finish (runs/probe/compiled.log)"
    python3 - <<'PY'
import json, pathlib
out = {}
for which in ("before", "after"):
    rows = {r["step"]: r["elapsed_s"] for r in map(json.loads, pathlib.Path(f"runs/probe/{which}/log.jsonl").read_text().splitlines()) if "elapsed_s" in r}
    first, last = sorted(rows)[len(rows) // 4], max(rows)
    out[f"train_script_{which}_steps_per_s"] = (last - first) / (rows[last] - rows[first])
for name in ("eager", "compiled"):
    path = pathlib.Path(f"runs/probe/step_{name}.json")
    if path.is_file():
        out[name] = json.loads(path.read_text())
pathlib.Path("runs/probe/summary.json").write_text(json.dumps(out, indent=1))
print(json.dumps(out, indent=1))
PY
    fi
    echo "[$(left) s left] teacher training$([ -z "$NO_CORPORA" ] && echo "; corpora (background)")"
    [ -n "$NO_CORPORA" ] || { build_corpora > runs/corpora.log 2>&1 & }
    train_teacher ${TEACHER_MARGIN:-75}
    wait; [ -f runs/corpora.log ] && cat runs/corpora.log
    exit 0
fi

export_newest_teacher() {  # runs/teacher from runs/t-main's newest checkpoint: the run resumes at its step and stops
    local last=$(ls runs/t-main/checkpoints | sed -n 's/^step-0*\([0-9]*\)$/\1/p' | sort -n | tail -1)
    echo "[$(left) s left] teacher export at step $last"
    TEACHER_EXTRA="$TEACHER_EXTRA --stop-after $last" train_teacher 0
}

train_expert() {  # $1: the main UNet's teacher to sample beside (grids, export), $2: seconds to keep after training
    # The expert (t >= $TEACHER_INIT's high_noise_start) goes on from $TEACHER_INIT's (at EXPERT_INIT_STEP, the shipped
    # expert's step) in the world the main UNet trains in (canonical layout, mixed light); its schedule ends at
    # EXPERT_MAX_STEPS. EXPERT_POOL_START: its pool's first train-split object (POOL_START by default).
    local expert_start=$(python3 -c "import json; print(json.load(open('$TEACHER_INIT/model_index.json'))['high_noise_start'])")
    python3 training/train_teacher.py --output-dir runs/t-expert --resume latest --expert-for "$1" \
        --high-noise-start $expert_start --init-from "$TEACHER_INIT" --init-step ${EXPERT_INIT_STEP:-5656} \
        --max-steps ${EXPERT_MAX_STEPS:-8000} --warmup-steps 100 --ema-decay 0.998 --canonical-fraction ${CANONICAL_FRACTION:-0.75} \
        --lighting ${LIGHTING:-mixed} --print-fraction ${PRINT_FRACTION:-0.5} --pool-start ${EXPERT_POOL_START:-${POOL_START:-0}} \
        --batch-size 64 --pool-size ${POOL_SIZE:-2048} --checkpoint-every 500 --sample-every 1000 --log-every 50 \
        --time-limit "$(box "$2")" --export runs/teacher-expert ${TEACHER_SIZE:+--sample-size $TEACHER_SIZE} $TEACHER_EXTRA \
        > runs/expert-$stage.log 2>&1 || { tail -30 runs/expert-$stage.log; return 1; }
    grep camera_sensitivity runs/t-expert/log.jsonl | tail -3; tail -1 runs/t-expert/log.jsonl
}

ensure_teacher() {  # runs/teacher: kept if there, else this machine's newest main-UNet checkpoint, else $TEACHER_INIT as it is
    if [ ! -f runs/teacher/model_index.json ] && [ -d runs/t-main/checkpoints ]; then export_newest_teacher
    elif [ ! -f runs/teacher/model_index.json ]; then cp -rL "$TEACHER_INIT" runs/teacher; fi
}

teacher_here() { [ -f runs/teacher/model_index.json ] && echo runs/teacher || echo "$TEACHER_INIT"; }  # this machine's teacher, else the carried one

score_teacher() {  # $1: a teacher folder, $2: results in runs/tq-$2, $3: the GPU, then flags that win over these:
    # TQ_OBJECTS objects a split with TQ_FIT consistency-fit steps, in what time is left; SCORE_SIZE=N: scored at N px
    local folder=$1 name=$2 gpu=$3; shift 3
    on_gpu $gpu timeout $(box 5) python3 benchmarks/teacher_quality.py --teacher "$folder" --objects ${TQ_OBJECTS:-100} --batch 50 \
        --fit-steps ${TQ_FIT:-150} --colour-check ${SCORE_SIZE:+--score-size $SCORE_SIZE} --out runs/tq-$name "$@" $TQ_EXTRA \
        > runs/tq-$name.log 2>&1 || tail -20 runs/tq-$name.log
}

if [ "$stage" = expert ]; then
    # The expert retrained beside the main UNet of runs/teacher (see train_expert).
    gsplat_ready
    ensure_teacher  # on a fresh machine, the expert alone trains on beside $TEACHER_INIT's main UNet
    teacher_trained=1
    echo "[$(left) s left] expert training"
    train_expert runs/teacher ${TQ_SECONDS:-110} || exit 1
    rm -rf runs/teacher-main && mv runs/teacher runs/teacher-main && mv runs/teacher-expert runs/teacher
    echo "[$(left) s left] teacher scores"
    # EXPERT_SCORES=teacher: the new expert's scores alone (the kept one's are in the card, from the same command)
    for which in ${EXPERT_SCORES:-teacher teacher-main}; do  # with the new expert, and with the main UNet's kept one
        [ $which = teacher-main ] && [ -n "$SMOKE" ] && continue
        score_teacher runs/$which $which 0
    done
    exit 0
fi

if [ "$stage" = pair ]; then
    # Both UNets of the teacher at once, e.g. when both change resolution (TEACHER_SIZE): the main UNet (train_teacher,
    # beside $TEACHER_INIT's expert, kept) and the expert (train_expert, beside $TEACHER_INIT's main UNet, used only for
    # its grids) share the GPUs, so one chain of calls trains both. No faster than one after the other: at 128 px on one
    # H200 each ran 1.5 steps/s, 3.0 together (session 16). A later call with the same settings resumes both. Then the
    # two exports are joined: runs/teacher is the new main UNet with the new expert.
    gsplat_ready
    echo "[$(left) s left] main UNet and expert, side by side"
    train_teacher ${TEACHER_MARGIN:-60} > runs/pair-main.out 2>&1 &
    main_job=$!
    train_expert "$TEACHER_INIT" ${TEACHER_MARGIN:-60} > runs/pair-expert.out 2>&1 || echo "expert failed"
    wait $main_job || echo "main UNet failed"
    cat runs/pair-main.out runs/pair-expert.out
    teacher_trained=1
    [ -f runs/teacher/model_index.json ] && [ -f runs/teacher-expert/model_index.json ] || exit 1
    rm -rf runs/teacher/high_noise_unet && cp -r runs/teacher-expert/high_noise_unet runs/teacher/
    echo "[$(left) s left] joined: runs/teacher = the new main UNet + the new expert"
    [ -n "$PAIR_SCORE" ] && score_teacher runs/teacher teacher 0
    exit 0
fi

if [ "$stage" = score ]; then
    # The teacher's scores, a call of their own (session 17 lost two calls to improvised ones): runs/teacher when this
    # machine has one, else TEACHER_INIT; on TQ_OBJECTS procedural objects a split (score_teacher) and, with REAL=<a
    # carried folder of .glb scans>, on those beside it (GPU 1, no fit). At 128 px 100 objects a split with the fit
    # took more than 170 s on one H200: give it the call (CHUNK_SECONDS). The 30 scans (12 MB) do not travel beside
    # .wheels and a 34-MB teacher within 64 MiB: carry them in a later call on the warm machine, without .wheels.
    gsplat_ready
    teacher=$(teacher_here)
    [ -n "$REAL" ] && { score_teacher "$teacher" real 1 --real "$REAL" --splits '' --fit-steps 0 & }
    score_teacher "$teacher" "$(basename "$teacher")" 0
    wait
    tail -n 4 runs/tq-*.log
    exit 0
fi

if [ "$stage" = sampler ]; then
    # Issue 14: the teacher's sampler swept. SAMPLER lists "CFG:steps" settings, in the order they run (the call's time
    # ends the list: put the most wanted first). Each is scored on TQ_OBJECTS procedural objects a split at the teacher's
    # size (no consistency fit) and, with REAL=<a carried folder of .glb scans>, beside it on those scans at
    # REAL_SCORE_SIZE px (64: the teacher figures' size there), their truth renders cached once for every setting. No
    # gsplat is needed (the torch splatter renders), so a call may leave its wheel out of .wheels to carry the scans.
    teacher=$(teacher_here)
    for setting in ${SAMPLER:-3:30 2:30 4.5:30}; do
        g=${setting%%:*} s=${setting##*:}
        if [ "$(left)" -lt "${SAMPLER_MIN_SECONDS:-70}" ]; then echo "[$(left) s left] not run: $setting"; break; fi
        echo "[$(left) s left] CFG $g, $s DDIM steps"
        [ -n "$REAL" ] && { TQ_FIT=0 score_teacher "$teacher" real-cfg$g-s$s 0 --guidance-scale $g --steps $s --real "$REAL" \
            --real-cache runs/real-cache --splits '' --score-size ${REAL_SCORE_SIZE:-64} & }
        TQ_FIT=0 score_teacher "$teacher" cfg$g-s$s 0 --guidance-scale $g --steps $s
        wait
    done
    python3 - <<'PY' | tee runs/tq-sampler.md
import json, pathlib
print("| CFG:steps | val copied / imagined / ahead of copy | torus copied / imagined / ahead | real copied / imagined (copy) / ahead | colour, worst |")
print("|---|---|---|---|---|")
def row(report, split):  # "copied / imagined [(the copy's imagined)] / ahead of the copy"
    r = report.get(split)
    if not r:
        return "-"
    psnr = r["teacher"]["psnr"] if split == "real" else r["psnr"]
    copy = f" ({r['copy']['psnr']['imagined_views']:.2f})" if split == "real" else ""
    return f"{psnr['copied_view']:.2f} / {psnr['imagined_views']:.2f}{copy} / {r['imagined_ahead_of_copy_psnr']} of {r['objects']}"
runs = pathlib.Path("runs")
# every setting with a result, procedural or real (a setting the call's time cut may have only one of them)
settings = sorted({p.parent.name.split("cfg", 1)[1] for p in runs.glob("tq-*cfg*/teacher_quality.json")})
for setting in settings:
    procedural, real = runs / f"tq-cfg{setting}" / "teacher_quality.json", runs / f"tq-real-cfg{setting}" / "teacher_quality.json"
    report = json.loads(procedural.read_text()) if procedural.is_file() else {}
    if real.is_file():
        report["real"] = json.loads(real.read_text()).get("real")
    colour = max((c["copied_max_abs_diff"] for c in report.get("colour_check", {}).values()), default=float("nan"))
    print(f"| {setting.replace('-s', ':')} | {row(report, 'val')} | {row(report, 'heldout')} | {row(report, 'real')} | {colour} |")
PY
    exit 0
fi

if [ "$stage" = step ]; then
    # The student's distillation step against its model alone (benchmarks/student_step.py), eager then compiled, one
    # after the other on GPU 0, after gsplat is built (session 22 lost a pair of runs whose time limit the build ate).
    gsplat_ready
    mkdir -p runs/eval
    teacher=$(teacher_here)
    for compiled in "" $([ -z "$SMOKE" ] && echo --compile); do  # compiling on a CPU takes minutes: the rehearsal skips it
        name=student_step${compiled:+_compiled}
        on_gpu 0 timeout $(box 10) python3 benchmarks/student_step.py --device cuda --teacher "$teacher" --steps 40 $compiled \
            --json runs/eval/$name.json $PROBE_EXTRA > runs/eval/$name.log 2>&1 || tail -20 runs/eval/$name.log
    done
    cat runs/eval/student_step*.json 2>/dev/null || true
    exit 0
fi

if [ "$stage" = shapes ]; then
    # Issue 14's "a shape that uses the card": each UNet shape of SHAPES trained from scratch (main UNet only, no
    # expert; the shipped teacher's world and batch, lr 3e-4) for SHAPE_SECONDS of this call, its step timed against
    # the model alone (teacher_step.py), then scored on TQ_OBJECTS val and torus objects (teacher_quality.py, no fit):
    # the shapes compare by quality per GPU-minute. The same SHAPES in a later call train on (--resume latest).
    # The time limit counts the pool's build: 2,048 objects took ~110 s of a 115-s limit on one H200 (session 15), so
    # the study draws a pool of SHAPE_POOL (512) objects, built in ~30 s.
    gsplat_ready
    mkdir -p runs/shapes
    for shape in ${SHAPES:-tiny tiny-wide}; do
        echo "[$(left) s left] shape $shape"
        [ -f runs/shapes/$shape-step.json ] || on_gpu 0 timeout 150 python3 benchmarks/teacher_step.py --unet-preset $shape --steps 30 \
            --warmup 5 --json runs/shapes/$shape-step.json $PROBE_EXTRA > runs/shapes/$shape-step.log 2>&1 || tail -5 runs/shapes/$shape-step.log
        launch training/train_teacher.py --output-dir runs/shapes/$shape --resume latest --unet-preset $shape \
            --max-steps ${SHAPE_MAX_STEPS:-30000} --warmup-steps 200 --canonical-fraction 0.75 --lighting mixed --print-fraction 0.5 \
            --batch-size 64 --pool-size ${SHAPE_POOL:-512} --checkpoint-every 500 --sample-every 100000 --log-every 50 \
            --time-limit ${SHAPE_SECONDS:-150} --export runs/shapes/$shape/teacher $TEACHER_EXTRA > runs/shapes/$shape-train.log 2>&1 \
            || { tail -20 runs/shapes/$shape-train.log; continue; }
        on_gpu 0 timeout $(box 5) python3 benchmarks/teacher_quality.py --teacher runs/shapes/$shape/teacher --objects ${TQ_OBJECTS:-100} \
            --batch 50 --fit-steps 0 --out runs/shapes/$shape-tq $TQ_EXTRA > runs/shapes/$shape-tq.log 2>&1 || tail -5 runs/shapes/$shape-tq.log
    done
    python3 benchmarks/teacher_shapes.py runs/shapes ${SHAPES:-tiny tiny-wide} --json runs/shapes/summary.json | tee runs/shapes/summary.md
    exit 0
fi

sim="training/simulate.py --teacher runs/teacher --elevation-from-origin --batch-size ${SIM_BATCH:-256} --shard-size 256 --no-progress --dtype bfloat16 $SIM_EXTRA"
[ -n "$SMOKE" ] && sim="${sim/bfloat16/float32}"
# SIM_EXTRA (e.g. --compile) must not lose the call: the training quadruples are its biggest job, so a simulation
# that fails with it goes on without it (from the shards it wrote).
# The retry's time limit is what is left now (a later --time-limit wins), and it starts only with SIM_MIN_SECONDS left,
# else it says "incomplete" so that the student stage stops and the same command goes on in the next call.
sim_or_plain() {  # launcher ("launch" or "python3"), then simulate.py's flags after $sim; output to stdout
    $1 $sim "${@:2}" && return 0
    [ -n "$SIM_EXTRA" ] || return 1
    echo "simulate.py failed with SIM_EXTRA=$SIM_EXTRA: going on without it"
    if [ $(( $(left) - ${SIM_MARGIN:-40} )) -lt ${SIM_MIN_SECONDS:-120} ]; then echo "quadruples incomplete: no retry with $(left) s left"; return 0; fi
    $1 ${sim% $SIM_EXTRA} "${@:2}" $(sim_limit)
}
corpus_seeds="--seeds-per-image ${CORPUS_SEEDS:-4}"  # the training quadruples only: the evaluation sets keep 4 seeds an image
# Every simulation stops starting shards SIM_MARGIN s (40) before the call's budget ends, so a data stage that does
# not fit in one call (at 128 px on a fresh H200: 3,072 training quadruples took 438 s after ~100 s of set-up) ends
# cleanly and the same command goes on from its shards in the next call (session 18 lost a call's output to that).
shards_complete() { python3 -c "import sys; from training.data import validate_shards; validate_shards(sys.argv[1])" "$1" 2>/dev/null; }  # a finished quadruple build in folder $1
sim_limit() { echo --time-limit "$(box ${SIM_MARGIN:-40})"; }
# An evaluation set is one shard, which --time-limit cannot cut: start it only with SIM_MIN_SECONDS (120) left before
# the margin, else write "incomplete" to its log so that the student stage stops and the next call makes it (session
# 19's first call started one with ~40 s left and ran past the 600-s call limit).
sim_eval() {  # the set's folder, simulate.py flags...
    local out=$1; shift
    if shards_complete "$out"; then
        echo "quadruples complete: $out (made by an earlier call)"; return 0
    fi
    local t=$(( $(left) - ${SIM_MARGIN:-40} ))
    if [ "$t" -lt ${SIM_MIN_SECONDS:-120} ]; then echo "quadruples incomplete: not started with $(left) s left"; return 0; fi
    sim_or_plain python3 --time-limit "$t" --out "$out" "$@"
}
simulate_teacher() {  # the teacher's quadruples (no rendering: runs while gsplat compiles), spread over the GPUs
    if [ "${SIM_PROCESSES:-1}" -gt 1 ]; then  # K independent processes, one per GPU (not several on one)
        for k in $(seq 0 $(( SIM_PROCESSES - 1 ))); do
            on_gpu $k python3 $sim $(sim_limit) --corpus runs/c-corpus --out runs/q-corpus $corpus_seeds --process-index $k --num-processes $SIM_PROCESSES > runs/q-corpus-$k.log 2>&1 &
        done
        wait
    else sim_or_plain launch $(sim_limit) --corpus runs/c-corpus --out runs/q-corpus $corpus_seeds > runs/q-corpus.log 2>&1; fi
    if [ -n "$NFIT" ]; then
        on_gpu 0 python3 $sim --corpus runs/c-nfit --seeds-per-image $N_FIT_SEEDS --out runs/q-nfit > runs/q-nfit.log 2>&1 &
        on_gpu 1 python3 $sim --corpus runs/c-nfit --seeds-per-image 8 --seed 1 --out runs/q-nfit-new > runs/q-nfit-new.log 2>&1 &
    fi
    on_gpu 0 sim_eval runs/q-test --corpus runs/c-test > runs/q-test.log 2>&1 &
    on_gpu 1 sim_eval runs/q-heldout --corpus runs/c-heldout > runs/q-heldout.log 2>&1 &
    wait
}
simulate_truth() {  # the evaluation sets' true renders (gsplat)
    on_gpu 0 sim_eval runs/gt-test --ground-truth --corpus runs/c-test > runs/gt-test.log 2>&1 &
    on_gpu 1 sim_eval runs/gt-heldout --ground-truth --corpus runs/c-heldout > runs/gt-heldout.log 2>&1 &
    wait
}
sim_report() { for f in runs/q-*.log runs/gt-*.log; do echo "$f: $(tr '\r' '\n' < $f | grep -E "wrote|complete" | tail -1)"; done; }

# The student: pixel-aligned Gaussians with view 0 anchored to the input's colours (the tiny preset), the seed-deviation
# term, quadruples on the GPU, no implicit verification (at equal steps it cost 0.24 dB and a third of the speed in
# an earlier ablation; an arm whose flags set --verification-weight keeps it). Arm main adds the input-view term (its
# render at the input camera against the input itself); arm noiv is the same without it. An arm named base3d* is the
# 3D-only baseline (training/train_3d_baseline.py: the corpus's true renders, fresh N). The N-fit probe (NFIT=1): the
# recipe on 8 images x 64 seeds, can N be fitted at all.
arm() {  # name, quadruples, gpu, seconds to keep after, extra distill flags...
    local name=$1 quadruples=$2 gpu=$3 margin=$4 script=training/distill.py verification=--no-verification compile=$ARM_COMPILE; shift 4
    case $name in base3d*) script=training/train_3d_baseline.py quadruples=gt-corpus compile=; corpus_truth || return 1 ;; esac
    case " $* " in *" --verification-weight "*) verification= ;; esac
    arm_run() {  # the same run, with or without $compile: a compiled run that fails goes on eager from its last checkpoint
        on_gpu $gpu python3 $script --teacher runs/teacher --quadruples runs/$quadruples --output-dir runs/d-$name --resume latest \
            --max-steps ${ARM_STEPS:-3000} --batch-size 64 --lr 2e-4 --warmup-steps 200 --checkpoint-every 200 --sample-every 500 \
            --log-every 25 --time-limit "$(box "$margin")" --export runs/d-$name/pipeline --preload $verification \
            --seed-deviation-weight ${SEED_DEVIATION_WEIGHT:-2} "$@" $DISTILL_EXTRA >> runs/d-$name-$stage.log 2>&1
    }
    arm_run $compile "$@" || { [ -n "$compile" ] && echo "arm $name failed with $compile: going on eager" >> runs/d-$name-$stage.log && arm_run "$@"; } \
        || tail -30 runs/d-$name-$stage.log
    tail -1 runs/d-$name/log.jsonl
}
arm_specs() {  # one "name flags..." a line: ARMS ("|" between arms, any number, job k on GPU k mod NGPU), else ARM_A and
    # ARM_B (none: no such arm; both none: no arm, e.g. a first call that only builds the data)
    if [ -n "$ARMS" ]; then tr '|' '\n' <<< "$ARMS" | sed 's/^ *//; s/ *$//; /^$/d'
    else printf '%s\n%s\n' "${ARM_A:-main --input-view-weight ${INPUT_VIEW_WEIGHT:-1}}" "${ARM_B:-noiv}"; fi
}
arms() {  # seconds to keep after. At most ARMS_AT_ONCE arms train at once (2 a GPU: at 128 px an arm peaks at ~63 GiB
    # of an H200's 139, over 50 GiB eager); the next starts when one ends, with the time then left. Arm k runs on GPU k mod
    # NGPU. An arm with implicit verification (--verification-weight) trains with no other arm beside it: eager at 128 px,
    # batch 64, it held ~90 GiB, and both arms started beside it died of CUDA OOM (session 26).
    local k=0 spec pids=() at_once=${ARMS_AT_ONCE:-$(( 2 * NGPU ))}
    while read -r spec; do
        if [ "$spec" = none ] || { [ -n "$NFIT" ] && [ $k = 1 ]; }; then k=$(( k + 1 )); continue; fi
        local running alone=
        case " $spec " in *" --verification-weight "*) alone=1 ;; esac
        while running=$(jobs -pr | grep -xF -f <(printf '%s\n' "${pids[@]}")) \
            && { [ -n "$alone" ] || [ $(wc -l <<< "$running") -ge "$at_once" ]; }; do
            wait -n $running || true
        done
        arm ${spec%% *} q-corpus $k $1 $([ "$spec" = "${spec%% *}" ] || echo "${spec#* }") &
        pids+=($!); k=$(( k + 1 ))
        if [ -n "$alone" ]; then wait $! || true; fi
    done < <(arm_specs)
    [ -n "$NFIT" ] && arm nfit q-nfit 1 $1 &
    wait
}
corpus_truth() {  # the 3D-only baseline's data: the corpus's true renders (gsplat, seconds), one an image (N is fresh)
    shards_complete runs/gt-corpus && return 0
    { sim_or_plain python3 --ground-truth --corpus runs/c-corpus --out runs/gt-corpus && shards_complete runs/gt-corpus; } > runs/gt-corpus.log 2>&1 \
        || { tail -20 runs/gt-corpus.log; return 1; }
}

if [ "$stage" = student ]; then
    if [ "${TEACHER_SECONDS:-0}" -gt 0 ]; then
        echo "[$(left) s left] teacher training, continued"
        train_teacher $(( budget - TEACHER_SECONDS ))
    else ensure_teacher; fi  # nothing trained here: distil from $TEACHER_INIT as it is
    score_beside() {  # the teacher's scores (GPU 1) beside the simulation. Only once gsplat is compiled: a scorer that
        # imported it during the compile broke the build (session 17 lost a call to that)
        [ -n "$SKIP_TQ" ] && return
        echo "[$(left) s left] teacher scores (GPU 1), beside what follows"
        on_gpu 1 python3 benchmarks/teacher_quality.py --teacher runs/teacher --objects 100 --batch 50 --fit-steps 150 \
            --colour-check --out runs/tq $TQ_EXTRA > runs/tq.log 2>&1 &
    }
    if [ ! -d runs/c-corpus ]; then  # a fresh machine: corpora on the CPUs (the torch splatter) while gsplat compiles,
        # then the teacher's quadruples while the true renders wait for gsplat
        echo "[$(left) s left] gsplat compile; corpora on the CPUs, then the teacher's quadruples"
        gsplat_ready > runs/gsplat.log 2>&1 &
        warm=$!
        ( CUDA_VISIBLE_DEVICES= CORPUS_PROCESSES=${CORPUS_PROCESSES:-8} build_corpora )  # a subshell: its wait leaves $warm alone
        echo "[$(left) s left] corpora built"
        simulate_teacher &
        wait $warm; cat runs/gsplat.log
        score_beside
        simulate_truth  # its wait is also the one for the teacher's quadruples
    else
        score_beside
        ( simulate_teacher ); simulate_truth  # a subshell: its waits leave the teacher scores running beside
    fi
    wait  # the teacher scores
    sim_report
    if grep -qs "incomplete" runs/q-*.log runs/gt-*.log; then  # out of time (sim_limit): no student trains on part of it
        echo "[$(left) s left] the quadruples are incomplete: run the same command again to go on"; exit 0
    fi
    [ -f runs/tq.log ] && tail -25 runs/tq.log
    if [ -z "$THEN_FINISH" ]; then
        echo "[$(left) s left] students"
        arms ${ARM_MARGIN:-100}
        exit 0
    fi
    stage=finish  # THEN_FINISH=1: on in this call (pack brings the students back)
fi

# finish: train on, then score
echo "[$(left) s left] students$([ -z "$THEN_FINISH" ] && echo ", continued")"
arms ${EVAL_SECONDS:-150}
[ -n "$NO_EVAL" ] && exit 0  # a middle call of a chain: train, bring the students back
echo "[$(left) s left] evaluation"
mkdir -p runs/eval
pipelines=(); for arm in runs/d-*/pipeline; do [ -f $arm/model_index.json ] && pipelines+=(--pipeline "$(basename "$(dirname $arm)" | sed 's/^d-//')=$arm"); done
on_gpu 0 timeout $(box 25) python3 benchmarks/distill_quality.py --quadruples runs/q-test --truth runs/gt-test "${pipelines[@]}" \
    --count 192 --diversity-images 16 --fit-steps 0 --out runs/eval/test $EVAL_EXTRA > runs/eval/test.log 2>&1 &
on_gpu 1 timeout $(box 25) python3 benchmarks/distill_quality.py --quadruples runs/q-heldout --truth runs/gt-heldout "${pipelines[@]}" \
    --count 128 --diversity-images 16 --fit-steps 0 --out runs/eval/heldout $EVAL_EXTRA > runs/eval/heldout.log 2>&1 &
wait
if [ -f benchmarks/student_step.py ] && [ -z "$SMOKE" ] && [ -z "$NO_STEP" ]; then  # the student's step against its model alone (NO_STEP=1: not)
    on_gpu 0 timeout $(box 10) python3 benchmarks/student_step.py --teacher runs/teacher --steps 40 --json runs/eval/student_step.json > runs/eval/student_step.log 2>&1 &
    [ -n "$STEP_COMPILED" ] && on_gpu 1 timeout $(box 10) python3 benchmarks/student_step.py --teacher runs/teacher --steps 40 --compile \
        --json runs/eval/student_step_compiled.json > runs/eval/student_step_compiled.log 2>&1 &
    wait
fi
tail -n 20 runs/eval/*.log
