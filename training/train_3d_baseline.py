"""The 3D-only baseline (docs/design.md section 6): the DD3G student trained on ground-truth renders, not on a teacher.

The same PEPD architecture, the same phase-1 initialisation from the teacher's UNet, the same optimizer, steps
and batch as a distillation run (training/distill.py, whose code this reuses unchanged), but:
* the targets OI are the objects' true renders at the cameras C (quadruples made by `simulate.py --ground-truth`
  from a procedural corpus of the teacher's own training objects, `build_corpus.py --split train`);
* N is fresh noise at every step (no teacher sample exists for it to align with);
* no implicit verification (the teacher's score never enters).

    python training/build_corpus.py --source procedural --split train --num-images 2048 --size 128 --out runs/corpus-train
    python training/simulate.py --ground-truth --teacher hub/mvdm-tiny --corpus runs/corpus-train --out runs/truth-train
    accelerate launch training/train_3d_baseline.py --teacher hub/mvdm-tiny --quadruples runs/truth-train \\
        --output-dir runs/baseline-3d --max-steps 20000 --resume latest --export runs/baseline-3d/pipeline

Every other flag is distill.py's; compare with a distillation run of the same --max-steps and --batch-size.
"""

from __future__ import annotations

import sys


from training import data, distill

BASELINE_FLAGS = ["--no-verification", "--fresh-noise"]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = distill.parse_args(argv)  # validates the shared flags and finds --quadruples
    manifest = data.read_manifest(args.quadruples) or {}
    if not manifest.get("ground_truth"):
        raise SystemExit(f"--quadruples {args.quadruples}: not ground-truth quadruples; make them with "
                         "`training/simulate.py --ground-truth` from a procedural corpus")
    return distill.main(argv + [flag for flag in BASELINE_FLAGS if flag not in argv])


if __name__ == "__main__":
    main()
