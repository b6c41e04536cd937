"""Host time of `DD3GPipeline.generate_from_rgba` with CUDA graphs, measured where it can be: on the CPU.

With `enable_cuda_graphs()` the GPU work of a call is one graph replay, so whatever Python runs around it (cameras, input
copies, the outputs' assembly, diffusers' device and dtype lookups) adds to the wall directly. This replaces the graph
with a stand-in that returns the student's outputs at once and times what is left, beside the three lookups the graph
path makes once per move instead of at every call (`_execution_device`, `student.dtype`, `student.device`).

    python benchmarks/graph_host_time.py --scale base-small --repeats 200
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from dd3g.evaluation.timing import time_samples
from dd3g.testing import example_rgba, random_pipeline


class StandInGraph:
    """A `GraphedCall` whose replay costs nothing: it returns copies of fixed outputs, as a real replay returns copies."""

    def __init__(self, fields):
        self.fields, self.calls = fields, 0

    def __call__(self, *args):
        self.calls += 1
        return tuple(None if f is None else f.clone() for f in self.fields)

    def clear(self):
        pass


def median_ms(fn, repeats: int) -> float:
    return statistics.median(time_samples(fn, repeats, torch.device("cpu"), warmup=1))


def graph_path(scale: str):
    """A random `scale` pipeline whose CUDA graph is a `StandInGraph`, on the CPU: (pipe, rgba, noise, stand-in)."""
    pipe = random_pipeline(scale)
    pipe.register_to_config(match_input_view=False)  # its rendering is GPU work, not host work
    rgba = pipe.prepare_image(example_rgba()).rgba[None]  # [1, 4, S, S]
    noise = pipe.draw_noise(1, seeds=[0])  # [1, V, C, H, W]
    cameras = pipe._input_builder().cameras(0.0, 1)
    with torch.no_grad():
        fields = pipe._student_tensors(rgba, torch.zeros(1, dtype=torch.long), noise, cameras.viewmats, cameras.Ks)
    stand_in = StandInGraph(fields)
    pipe._graphed_student = stand_in
    pipe._graph_device_dtype = (torch.device("cpu"), pipe.student.dtype)  # as _graph_target caches it on CUDA
    out = pipe.generate_from_rgba(rgba, noise, [0])
    if stand_in.calls != 1 or not torch.equal(out.means, fields[0].float()):
        raise RuntimeError("the timed call did not go through the graph path")
    return pipe, rgba, noise, stand_in


def host_time(scale: str, repeats: int) -> dict:
    pipe, rgba, noise, _ = graph_path(scale)
    return {
        "scale": scale, "device": f"cpu ({torch.get_num_threads()} threads)",
        "graph_path_host_ms": median_ms(lambda: pipe.generate_from_rgba(rgba, noise, [0]), repeats),
        "lookups_per_call_before_ms": median_ms(lambda: (pipe._execution_device, pipe.student.dtype, pipe.student.device), repeats),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="base-small")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    report = host_time(args.scale, args.repeats)
    print(json.dumps(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
