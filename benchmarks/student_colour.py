"""Does a flat coloured input come back in its own colour? The student's input view against the input.

    python benchmarks/student_colour.py --checkpoint hub/dd3g-tiny --json runs/student_colour.json

The flat disks and rings of `teacher_quality.py --colour-check` (no shading) go through the whole pipeline
(preprocessing, the student); its Gaussians are rendered at the input camera (view 0 of the pipeline's layout) at
256 px, and the mean straight RGB over the input's own foreground (the preprocessed, reframed input's alpha > 0.5,
which is in the input camera's frame) is compared with the input's colour, in 0-255. The goal is within 10 per
channel.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


from dd3g.rendering import render
from dd3g.evaluation.colour_check import coloured_shapes, mean_colour
from dd3g.evaluation.timing import print_and_save

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "hub" / "dd3g-tiny"


@torch.no_grad()
def colour_check(pipe, size: int = 256, seeds=(0, 1)) -> dict:
    """{shape: {input, input_view per seed, max_abs_diff}} in 0-255, for the pipeline `pipe`."""
    camera = pipe.view_layout.input_camera(size, size, 0.0)  # [1]
    report = {}
    for name, (rgb, rgba) in coloured_shapes(size).items():
        image = (rgba.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)  # [S, S, 4]
        gaussians = pipe(image, num_samples=len(seeds), seeds=list(seeds)).gaussians
        views = render(gaussians, camera.to(gaussians.means.device), background=None).rgba()[:, 0].float().cpu()  # [n, 4, S, S]
        framed = pipe.prepare_image(image).rgba[None]  # [1, 4, s, s] what the student was given
        foreground = torch.nn.functional.interpolate(framed, size=(size, size), mode="bilinear")[0, 3] > 0.5  # [S, S]
        came_back = [mean_colour(view, foreground.float()) for view in views]
        diff = max(abs(a - b) for colour in came_back for a, b in zip(colour, rgb))
        report[name] = {"input": list(rgb), "input_view": came_back, "max_abs_diff": round(diff, 1)}
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from dd3g.pipeline import DD3GPipeline

    report = colour_check(DD3GPipeline.from_pretrained(args.checkpoint), args.size)
    report["worst_max_abs_diff"] = max(r["max_abs_diff"] for r in report.values())
    return print_and_save(report, args.json)


if __name__ == "__main__":
    main()
