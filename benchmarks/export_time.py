"""Where the time of the turntable MP4 and the GLB mesh goes, for one object of a real model.

    python benchmarks/export_time.py                              # the shipped model (hub/dd3g-tiny)
    python benchmarks/export_time.py --checkpoint DIR --image examples/test-0.png --json out.json

Reports, each the best of --repeats (wall and process CPU seconds; the CPU time is steadier on a shared
machine):
- turntable rendering: the splatter's stages (covariances, projection, tile lists, rasterization) and the
  time per frame, for frame counts, sizes and views per render call;
- the MP4 encoding alone;
- the mesh: splatting into the density grid, marching cubes and the rest (colours, components), faces,
  at several grid resolutions, and how far each mesh lies from the finest one (mean distance of its
  vertices to a dense point sample of the finest mesh's surface, in voxels of the finest grid).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def best_of(repeats: int, fn):
    """(result, best wall seconds, best CPU seconds) of `repeats` calls."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return result, min(walls), min(cpus)


def splatter_stage_times(fn) -> dict:
    """Seconds spent in each stage of dd3g.rendering.torch_splatter while `fn` runs (wrapped in place, then restored)."""
    import dd3g.rendering.torch_splatter as splatter

    spent = {}
    originals = {name: getattr(splatter, name) for name in ("covariances", "project", "intersect_tiles", "rasterize")}

    def timed(name, original):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
        return wrapper

    for name, original in originals.items():
        setattr(splatter, name, timed(name, original))
    try:
        fn()
    finally:
        for name, original in originals.items():
            setattr(splatter, name, original)
    return {name: round(seconds, 3) for name, seconds in spent.items()}


def mesh_stage_times(g, resolution: int) -> dict:
    """Splatting into the grid vs the whole extraction, for one resolution."""
    from dd3g.export import _splat_to_grid, gaussians_to_mesh

    start = time.perf_counter()
    _splat_to_grid(g, resolution, 0.6, 16)
    grid_s = time.perf_counter() - start
    start = time.perf_counter()
    mesh = gaussians_to_mesh(g, resolution)
    total_s = time.perf_counter() - start
    return {"grid_s": round(grid_s, 3), "total_s": round(total_s, 3), "faces": len(mesh.faces)}, mesh


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="a pipeline folder (default: hub/dd3g-tiny)")
    p.add_argument("--image", default=str(ROOT / "examples" / "test-0.png"))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch
    import trimesh
    from scipy.spatial import cKDTree

    from dd3g import DD3GPipeline
    from dd3g.export import save_turntable_mp4, turntable_frames

    pipe = DD3GPipeline.from_pretrained(args.checkpoint)
    pipe.set_progress_bar_config(disable=True)
    g = pipe(args.image, seeds=[0]).gaussians[0]
    report = {"model": args.checkpoint or "hub/dd3g-tiny", "gaussians": g.num_gaussians, "threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "median_gaussian_scale": float(g.scales.median()), "turntable": [], "mesh": []}

    for frames, size, per_call in [(24, 256, 4), (24, 256, None), (24, 192, None), (16, 256, None), (24, 128, None)]:
        _, wall, cpu = best_of(args.repeats, lambda: turntable_frames(g, frames, size, views_per_batch=per_call))
        stages = splatter_stage_times(lambda: turntable_frames(g, frames, size, views_per_batch=per_call))
        row = {"frames": frames, "size": size, "views_per_call": per_call or frames, "wall_s": round(wall, 3),
               "cpu_s": round(cpu, 3), "ms_per_frame": round(1000 * wall / frames, 1), "stages_s": stages}
        report["turntable"].append(row)
        print(json.dumps(row), flush=True)

    video_frames = turntable_frames(g, 24, 256)
    with tempfile.TemporaryDirectory() as tmp:
        _, wall, cpu = best_of(args.repeats, lambda: save_turntable_mp4(g, Path(tmp) / "turntable.mp4", frames=video_frames))
    report["mp4_encode_24x256"] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}
    print(json.dumps({"mp4_encode_24x256": report["mp4_encode_24x256"]}), flush=True)

    meshes = {}
    for resolution in (128, 96, 64):
        best = None
        for _ in range(args.repeats):
            row, mesh = mesh_stage_times(g, resolution)
            best = row if best is None or row["total_s"] < best["total_s"] else best
        meshes[resolution] = mesh
        report["mesh"].append({"resolution": resolution, **best})
    # The finest surface as a dense point sample (trimesh's exact closest-point query needs rtree).
    surface = cKDTree(trimesh.sample.sample_surface(meshes[128], 400_000, seed=0)[0])
    voxel = 1.2 / 127
    for row in report["mesh"]:
        distance, _ = surface.query(meshes[row["resolution"]].vertices)
        row["mean_distance_to_128_voxels"] = round(float(distance.mean()) / voxel, 3)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
