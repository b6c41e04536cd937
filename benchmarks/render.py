"""Render speed (and, on CUDA, torch-vs-gsplat parity) on object-like synthetic Gaussians.

    python benchmarks/render.py                      # CPU: 16k Gaussians, 1 and 4 views at 256 px
    python benchmarks/render.py --device cuda        # + gsplat: 65k Gaussians, 4 views at 512 px, parity
    python benchmarks/render.py --json out.json      # also write the figures as JSON

Timings are medians of repeated runs after warm-up (CUDA: events, synchronised).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import torch


from dd3g.cameras import ViewLayout
from dd3g.gaussians import Gaussians
from dd3g.rendering import render
from dd3g.evaluation.timing import time_samples


def object_like_gaussians(num: int, seed: int = 0, device="cpu") -> Gaussians:
    """Gaussians on a bumpy shell of radius ~0.35 with small splats, roughly what a student emits."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(num, 3, generator=gen)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    radius = 0.35 + 0.05 * torch.randn(num, 1, generator=gen)
    means = direction * radius  # [N, 3]
    log_scales = torch.empty(num, 3).uniform_(torch.log(torch.tensor(0.004)).item(), torch.log(torch.tensor(0.03)).item(), generator=gen)
    quats = torch.randn(num, 4, generator=gen)
    logits = torch.randn(num, generator=gen) + 1.0
    sh_dc = torch.randn(num, 3, generator=gen)
    return Gaussians(means, log_scales, quats, logits, sh_dc).to(device)


def time_it(fn, repeats: int, device: torch.device) -> float:
    """Median time of fn() in milliseconds."""
    return statistics.median(time_samples(fn, repeats, device))


def bench(num: int, views: int, size: int, backend: str, device: torch.device, repeats: int, backward: bool) -> float:
    g = object_like_gaussians(num, device=device)
    cams = ViewLayout(num_views=views).cameras(size, size, elevation_deg=15.0).to(device)
    if not backward:
        def fn():
            with torch.no_grad():
                render(g, cams, backend=backend)
    else:
        params = [t.detach().requires_grad_() for t in (g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_dc)]

        def fn():
            out = render(Gaussians(*params), cams, backend=backend)
            (out.rgb.sum() + out.alpha.sum()).backward()
    return time_it(fn, repeats, device)


def explain_pixel(g: Gaussians, cams, image: int, row: int, col: int) -> dict:
    """How close the fragments of one pixel sit to the compositor's two cut-offs (alpha 1/255, T 1e-4).

    A fragment within float rounding of a cut-off is kept by one implementation and dropped by the
    other (gsplat uses the fast __expf), which explains an isolated pixel difference of up to ~1/255.
    """
    from dd3g.rendering import torch_splatter as splatter

    cams = cams[image : image + 1]
    covars = splatter.covariances(g.quats[None], g.scales[None])
    means2d, conics, depths, radii, _ = splatter.project(
        g.means[None], covars, g.opacities[None], cams.viewmats, cams.Ks, cams.width, cams.height
    )
    dx, dy = means2d[0, :, 0] - (col + 0.5), means2d[0, :, 1] - (row + 0.5)
    a, b, c = conics[0].unbind(-1)
    power = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(g.opacities * torch.exp(-power), splatter.MAX_ALPHA)
    listed = (radii[0] > 0).all(-1) & (power >= 0)
    order = torch.argsort(depths[0][listed])
    alpha_sorted = alpha[listed][order]
    kept = alpha_sorted >= splatter.ALPHA_THRESHOLD
    transmittance = torch.cumprod(1 - alpha_sorted * kept, 0)
    return {
        "pixel": [image, row, col],
        "closest_alpha_to_1/255_rel": ((alpha[listed] - splatter.ALPHA_THRESHOLD).abs() / splatter.ALPHA_THRESHOLD).min().item(),
        "closest_T_to_1e-4_rel": ((transmittance - splatter.TRANSMITTANCE_STOP).abs() / splatter.TRANSMITTANCE_STOP).min().item(),
        "fragments": int(kept.sum()),
    }


def parity(device: torch.device) -> dict:
    """Differences between the torch splatter and gsplat on the same inputs (CUDA)."""
    results = {}
    for num, views, size in ((16384, 4, 256), (65536, 4, 512)):
        g = object_like_gaussians(num, seed=1, device=device)
        cams = ViewLayout(num_views=views).cameras(size, size, elevation_deg=15.0).to(device)
        with torch.no_grad():
            fast, ref = render(g, cams, backend="gsplat"), render(g, cams, backend="torch")
            rgb_err, alpha_err = (fast.rgb - ref.rgb).abs(), (fast.alpha - ref.alpha).abs()
            worst = torch.stack([rgb_err.amax(1, keepdim=True), alpha_err]).amax(0)  # [V, 1, H, W]
            image, _, row, col = [int(i) for i in torch.unravel_index(worst.argmax(), worst.shape)]
            covered = ref.alpha > 0.5
            results[f"{num}g_{views}x{size}"] = {
                "rgb_max_abs": rgb_err.max().item(),
                "alpha_max_abs": alpha_err.max().item(),
                "pixels_over_1e-3": int((worst > 1e-3).sum()),
                "pixels_over_1e-4": int((worst > 1e-4).sum()),
                "pixels": worst.numel(),
                "rgb_mean_abs": rgb_err.mean().item(),
                "depth_max_abs_where_alpha_gt_0.5": (fast.depth - ref.depth).abs()[covered].max().item(),
                "worst_pixel": explain_pixel(g, cams, image, row, col),
            }
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    rows = []  # (case, backend, pass, ms)
    cases = [(16384, 1, 256), (16384, 4, 256)]
    backends = ["torch"]
    if device.type == "cuda":
        cases += [(65536, 4, 512)]
        backends = ["gsplat", "torch"]
    for backend in backends:
        for num, views, size in cases:
            for backward in (False, True):
                ms = bench(num, views, size, backend, device, args.repeats, backward)
                rows.append((f"{num} Gaussians, {views} x {size}^2", backend, "fwd+bwd" if backward else "fwd", ms))

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    print("| case | backend | pass | median ms |\n|---|---|---|---|")
    for case, backend, kind, ms in rows:
        print(f"| {case} | {backend} | {kind} | {ms:.3f} |")
    report = {"device": name, "torch": torch.__version__, "timings_ms": [dict(zip(("case", "backend", "pass", "ms"), r)) for r in rows]}
    if device.type == "cuda":
        report["parity"] = parity(device)
        print("parity (gsplat vs torch splatter):", json.dumps(report["parity"], indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
