"""The renderer on analytic cases, its gradients, batching, and (on CUDA) parity with gsplat."""

import math

import pytest
import torch

from dd3g.cameras import orbit_cameras
from dd3g.gaussians import Gaussians
from dd3g.rendering import render

SIZE = 64
IDENTITY = torch.tensor([1.0, 0.0, 0.0, 0.0])


def _gaussians(means, scales, opacities, colors, dtype=torch.float32) -> Gaussians:
    means = torch.as_tensor(means, dtype=dtype)
    n = means.shape[-2]
    scales = torch.as_tensor(scales, dtype=dtype).expand(means.shape)
    return Gaussians.from_activated(
        means, scales, IDENTITY.to(dtype).expand(means.shape[:-1] + (4,)),
        torch.as_tensor(opacities, dtype=dtype).expand(means.shape[:-1]), torch.as_tensor(colors, dtype=dtype).expand(means.shape[:-2] + (n, 3)),
    )


def _front_camera(size=SIZE):
    return orbit_cameras([0.0], [0.0], size, size)  # at (0, 0, 2) looking at the origin


def test_single_gaussian_matches_the_ewa_formula():
    scale, opacity, color = 0.05, 0.8, torch.tensor([0.9, 0.2, 0.1])
    cams = _front_camera()
    out = render(_gaussians([[0.0, 0.0, 0.0]], scale, opacity, color), cams)  # white background
    focal = cams.Ks[0, 0, 0].item()
    variance = (focal * scale / 2.0) ** 2 + 0.3  # projected isotropic variance + the 0.3 px low-pass
    cols = torch.arange(SIZE) + 0.5
    dx = cols - SIZE / 2
    # Row through the centre: pixel centres sit 0.5 px above/below the projected mean.
    expected_alpha = opacity * torch.exp(-0.5 * (dx**2 + 0.25) / variance)
    expected_alpha = torch.where(expected_alpha >= 1 / 255, expected_alpha, torch.zeros(()))
    alpha_row = out.alpha[0, 0, SIZE // 2]
    assert torch.allclose(alpha_row, expected_alpha, atol=1e-5)
    # Colour over white, the four centre pixels symmetric, depth = distance to the camera.
    a = expected_alpha[SIZE // 2]
    assert torch.allclose(out.rgb[0, :, SIZE // 2, SIZE // 2], a * color + (1 - a), atol=1e-5)
    centre = out.alpha[0, 0, SIZE // 2 - 1 : SIZE // 2 + 1, SIZE // 2 - 1 : SIZE // 2 + 1]
    assert torch.allclose(centre, centre[0, 0].expand(2, 2))
    assert torch.allclose(out.depth[0, 0][out.alpha[0, 0] > 0], torch.tensor(2.0), atol=1e-5)
    # Far from the splat nothing is drawn: pure background, zero alpha.
    assert out.alpha[0, 0, :5].abs().max() == 0 and torch.all(out.rgb[0, :, :5] == 1.0)


def test_anisotropic_gaussian_is_elongated_along_its_long_axis():
    g = Gaussians.from_activated(
        torch.zeros(1, 3), torch.tensor([[0.15, 0.03, 0.03]]), IDENTITY[None], torch.tensor([0.9]), torch.ones(1, 3)
    )
    alpha = render(g, _front_camera(), background=None).alpha[0, 0]
    assert (alpha[SIZE // 2] > 0.05).sum() > 2 * (alpha[:, SIZE // 2] > 0.05).sum()
    # Rotating 90 degrees about the view axis (world z) swaps the axes.
    quarter = torch.tensor([[math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]])
    g_rot = Gaussians.from_activated(g.means, g.scales, quarter, g.opacities, g.colors)
    alpha_rot = render(g_rot, _front_camera(), background=None).alpha[0, 0]
    assert torch.allclose(alpha_rot, alpha.T, atol=1e-5)


def test_two_overlapping_gaussians_composite_front_to_back():
    red, blue = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]
    means = [[0.0, 0.0, 0.3], [0.0, 0.0, -0.3]]  # red in front for a camera on +Z
    g = _gaussians(means, 0.1, 0.6, torch.tensor([red, blue]))
    cams = orbit_cameras([0.0, 180.0], [0.0, 0.0], SIZE, SIZE)
    out = render(g, cams, background=None)
    front, back = out.rgb[0, :, SIZE // 2, SIZE // 2], out.rgb[1, :, SIZE // 2, SIZE // 2]
    assert front[0] > front[2] > 0  # red over blue
    assert back[2] > back[0] > 0  # from behind: blue over red
    # Exact compositing at the centre pixel: c = a1 c1 + (1 - a1) a2 c2, alpha = 1 - (1 - a1)(1 - a2).
    single = lambda mean: render(_gaussians([mean], 0.1, 0.6, [1.0, 1.0, 1.0]), cams[:1], background=None).alpha[0, 0, SIZE // 2, SIZE // 2]  # noqa: E731
    a_red, a_blue = single(means[0]), single(means[1])
    assert torch.allclose(front, torch.tensor([a_red, 0, (1 - a_red) * a_blue]), atol=1e-5)
    assert torch.allclose(out.alpha[0, 0, SIZE // 2, SIZE // 2], 1 - (1 - a_red) * (1 - a_blue), atol=1e-5)
    # The list order does not matter, only depth does.
    swapped = render(_gaussians(means[::-1], 0.1, 0.6, torch.tensor([blue, red])), cams, background=None)
    assert torch.allclose(swapped.rgb, out.rgb, atol=1e-6)


def test_compositing_stops_when_transmittance_is_spent():
    # Two nearly opaque layers: alpha is capped at 0.999, so after the first T = 1e-3; the second would take
    # it to 1e-6 <= 1e-4, so (as in gsplat) it is not composited at all and the background shows through.
    g = _gaussians([[0.0, 0.0, 0.2], [0.0, 0.0, -0.2]], 0.2, 1.0, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    odd = SIZE + 1  # an odd size puts a pixel centre exactly on the projected mean
    out = render(g, _front_camera(odd), background=(0.0, 0.0, 1.0))
    pixel = out.rgb[0, :, odd // 2, odd // 2]
    assert torch.allclose(pixel, torch.tensor([0.999, 0.0, 0.001]), atol=1e-5)
    assert torch.allclose(out.alpha[0, 0, odd // 2, odd // 2], torch.tensor(0.999), atol=1e-6)


def test_near_plane_and_behind_camera_are_culled():
    g = _gaussians([[0.0, 0.0, 2.5], [0.0, 0.0, 1.995]], 0.05, 0.9, [1.0, 0.0, 0.0])  # behind, and inside near
    out = render(g, _front_camera())
    assert out.alpha.max() == 0


def test_background_and_batching():
    torch.manual_seed(0)
    b, n = 2, 300
    g = Gaussians(
        torch.rand(b, n, 3) - 0.5, torch.log(torch.rand(b, n, 3) * 0.03 + 0.01), torch.randn(b, n, 4),
        torch.randn(b, n), torch.randn(b, n, 3),
    )
    cams = orbit_cameras(torch.tensor([[0.0, 90.0, 200.0], [10.0, 45.0, 300.0]]), torch.tensor([[0.0, 20.0, -10.0], [5.0, 5.0, 5.0]]), 40, 24)
    batched = render(g, cams, background=None)
    assert batched.rgb.shape == (2, 3, 3, 24, 40) and batched.alpha.shape == (2, 3, 1, 24, 40)
    for i in range(b):
        single = render(g[i], cams[i], background=None)
        assert torch.allclose(single.rgb, batched.rgb[i], atol=1e-6)
    white = render(g, cams)
    assert torch.allclose(white.rgb, batched.rgb + (1 - batched.alpha), atol=1e-6)
    # Unbatched Gaussians broadcast over batched cameras.
    shared = render(g[0], cams, background=None)
    assert torch.allclose(shared.rgb[0], batched.rgb[0], atol=1e-6)
    # A size other than the cameras' rescales the intrinsics: a point lands at half its pixel coordinates.
    dot = _gaussians([[0.2, 0.1, 0.0]], 0.01, 0.9, [1.0, 1.0, 1.0])
    full, half = (render(dot, cams[0, :1], width=w, height=h, background=None).alpha[0, 0] for w, h in ((40, 24), (20, 12)))
    assert half.shape == (12, 20)

    def centroid(a):
        rows, cols = torch.meshgrid(torch.arange(a.shape[0]) + 0.5, torch.arange(a.shape[1]) + 0.5, indexing="ij")
        return torch.stack([(a * cols).sum(), (a * rows).sum()]) / a.sum()

    assert torch.allclose(centroid(half), centroid(full) / 2, atol=0.05)


def test_gradients_match_finite_differences():
    torch.manual_seed(3)  # a draw with no pixel within rounding of the 1/255 cut (a true discontinuity)
    n = 4
    means = ((torch.rand(n, 3) - 0.5) * 0.4).double().requires_grad_()
    log_scales = torch.log(torch.rand(n, 3) * 0.05 + 0.05).double().requires_grad_()
    quats = torch.randn(n, 4).double().requires_grad_()
    logits = torch.randn(n).double().requires_grad_()
    dc = torch.randn(n, 3).double().requires_grad_()
    cams = orbit_cameras([20.0, 160.0], [10.0, -20.0], 10, 10, fov_deg=25.0).to(dtype=torch.float64)

    def f(means, log_scales, quats, logits, dc):
        out = render(Gaussians(means, log_scales, quats, logits, dc), cams)
        # render() works in float32 like gsplat; gradcheck needs float64 end to end, so call the splatter.
        return out

    from dd3g.rendering.torch_splatter import splat

    def rendered(means, log_scales, quats, logits, dc):
        g = Gaussians(means, log_scales, quats, logits, dc)
        rgb, alpha, depth = splat(
            g.means.expand(2, n, 3), g.quats.expand(2, n, 4), g.scales.expand(2, n, 3), g.opacities.expand(2, n),
            g.colors.expand(2, n, 3), cams.viewmats, cams.Ks, 10, 10, torch.ones(2, 3, dtype=torch.float64),
        )
        return rgb, alpha

    assert torch.autograd.gradcheck(rendered, (means, log_scales, quats, logits, dc), eps=1e-6, atol=1e-4, fast_mode=True)
    # And the float32 path used everywhere gives gradients to every parameter.
    g32 = [t.detach().float().requires_grad_() for t in (means, log_scales, quats, logits, dc)]
    f(*g32).rgb.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in g32)


@pytest.mark.gpu
def test_torch_splatter_matches_gsplat_on_cuda():
    torch.manual_seed(2)
    device = torch.device("cuda")
    n = 20000
    # A mix that exercises the edge rules: tiny and large splats, low and saturated opacity, some splats
    # off-screen or behind the near plane.
    means = (torch.rand(n, 3) - 0.5) * 1.2
    log_scales = torch.log(torch.rand(n, 3) ** 3 * 0.08 + 0.002)
    params = [t.to(device).requires_grad_() for t in (means, log_scales, torch.randn(n, 4), torch.randn(n) * 3, torch.randn(n, 3) * 0.5)]
    cams = orbit_cameras(torch.tensor([0.0, 90.0, 180.0, 270.0, 33.0]), torch.tensor([0.0, 0.0, 30.0, -10.0, 5.0]), 200, 152)
    cams = cams.to(device)
    outputs, grads = [], []
    for backend in ("gsplat", "torch"):
        out = render(Gaussians(*params), cams, backend=backend)
        (out.rgb * torch.linspace(0, 1, 200, device=device)).sum().backward()
        outputs.append(out)
        grads.append([p.grad.clone() for p in params])
        for p in params:
            p.grad = None
    fast, ref = outputs
    worst = torch.maximum((fast.rgb - ref.rgb).abs().amax(-3), (fast.alpha - ref.alpha).abs()[..., 0, :, :])
    # Pixels agree to float rounding, except where a fragment sits within rounding of a cut-off (alpha
    # 1/255, transmittance 1e-4): gsplat's fast __expf then keeps what we drop, or the reverse, which moves
    # that pixel by up to one fragment's worth (~1/255). benchmarks/render.py shows such pixels are 1 in 1e6.
    assert worst.mean() < 1e-6
    assert (worst > 1e-4).float().mean() < 1e-4
    assert worst.max() <= 2.0 / 255
    covered = ref.alpha > 0.5
    assert ((fast.depth - ref.depth).abs()[covered]).quantile(0.999) <= 1e-3
    for fast_grad, ref_grad in zip(*grads):
        cosine = torch.nn.functional.cosine_similarity(fast_grad.flatten(), ref_grad.flatten(), dim=0)
        assert cosine > 0.99


def test_rotation_matrices_turn_back_into_the_quaternions_they_came_from():
    from dd3g.rendering.torch_splatter import quats_to_rotmats, rotmats_to_quats

    quats = torch.randn(4096, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    quats = torch.where(quats[:, :1] < 0, -quats, quats)  # q and -q are one rotation: w >= 0 picks one
    quats[:4] = torch.eye(4, dtype=torch.float64)  # the identity and the half-turns (trace -1: w = 0)
    torch.testing.assert_close(rotmats_to_quats(quats_to_rotmats(quats)), quats)
