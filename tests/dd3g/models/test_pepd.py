
import pytest
import torch

from dd3g.cameras import ViewLayout
from dd3g.models.mv_unet import MultiViewUNet
from dd3g.models.pepd import PEPD
from helpers import TOY_UNET, toy_student


def _inputs(student: PEPD, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    size = student.unet.config.sample_size
    noise = torch.randn((batch,) + student.noise_shape, generator=gen)  # [B, V, C, H, W]
    frame = torch.rand(batch, 4, size, size, generator=gen) * 2 - 1  # [B, C, H, W]
    cams = ViewLayout().cameras(size, size, elevation_deg=torch.tensor([0.0, 20.0][:batch]), include_input=True)
    tokens = torch.randn(batch, 196, 112, generator=gen)  # [B, L, D]
    return noise, frame, cams, tokens


def test_output_count_and_bounds():
    student = toy_student()
    g = student(*_inputs(student)).gaussians
    assert g.batch_shape == (2,) and g.num_gaussians == student.num_gaussians == 4 * 4 * 4 * 4
    assert g.means.norm(dim=-1).max() <= student.config.position_bound + 1e-6
    assert g.scales.min() >= student.config.min_scale * (1 - 1e-5) and g.scales.max() <= student.config.max_scale * (1 + 1e-5)
    assert torch.isfinite(g.opacity_logits).all() and torch.isfinite(g.sh_dc).all()


def test_noise_is_an_input():
    student = toy_student()
    noise, frame, cams, tokens = _inputs(student)
    a = student(noise, frame, cams, tokens).gaussians
    b = student(noise, frame, cams, tokens).gaussians
    c = student(torch.randn_like(noise), frame, cams, tokens).gaussians
    assert torch.equal(a.means, b.means)  # deterministic
    assert not torch.allclose(a.means, c.means, atol=1e-4)  # another N, another object


def test_noise_reaches_phase_2_past_the_unet():
    """A UNet that drops N at the first timestep (as the teacher's does) must not make the student seed-blind."""
    student = toy_student()
    noise, frame, cams, tokens = _inputs(student)
    real_unet_forward = student.unet.forward

    def noise_blind_unet(frames, *args, **kwargs):  # phase 1 sees the same frames whatever N is
        return real_unet_forward(torch.zeros_like(frames), *args, **kwargs)

    student.unet.forward = noise_blind_unet
    a = student(noise, frame, cams, tokens).gaussians
    b = student(torch.randn_like(noise), frame, cams, tokens).gaussians
    assert not torch.allclose(a.means, b.means, atol=1e-4)
    student.noise_embed.weight.data.zero_()
    student.noise_embed.bias.data.zero_()
    c = student(noise, frame, cams, tokens).gaussians
    d = student(torch.randn_like(noise), frame, cams, tokens).gaussians
    assert torch.allclose(c.means, d.means)  # ...and that path is the only one left


def test_decoding_is_progressive():
    """Positions come from the first blocks only, scale/rotation do not see the appearance blocks."""
    student = toy_student()
    inputs = _inputs(student)
    base = student(*inputs).gaussians
    with torch.no_grad():
        for p in student.blocks_appearance.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    changed_appearance = student(*inputs).gaussians
    assert torch.equal(changed_appearance.means, base.means) and torch.equal(changed_appearance.quats, base.quats)
    assert not torch.allclose(changed_appearance.sh_dc, base.sh_dc)
    with torch.no_grad():
        for p in student.blocks_shape.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    changed_shape = student(*inputs).gaussians
    assert torch.equal(changed_shape.means, base.means)
    assert not torch.allclose(changed_shape.log_scales, base.log_scales)


def test_decoded_positions_feed_later_blocks():
    """The Fourier encoding of mu reaches the shape head: moving mu (via its head) changes the scales."""
    student = toy_student()
    inputs = _inputs(student)
    base = student(*inputs).gaussians
    with torch.no_grad():
        student.head_means.bias.add_(0.3)
    moved = student(*inputs).gaussians
    assert not torch.allclose(moved.means, base.means)
    assert not torch.allclose(moved.log_scales, base.log_scales)


def test_phase1_initialises_from_the_teacher():
    teacher = MultiViewUNet(**TOY_UNET)
    with torch.no_grad():
        for p in teacher.parameters():
            p.normal_(std=0.05)
    student = toy_student()
    student.load_phase1_from_teacher(teacher)
    for (name, a), (_, b) in zip(teacher.state_dict().items(), student.unet.state_dict().items()):
        assert torch.equal(a, b), name
    other = MultiViewUNet(**{**TOY_UNET, "block_out_channels": (16, 16)})
    with pytest.raises(ValueError, match="config differs"):
        student.load_phase1_from_teacher(other)


def test_from_teacher_checkpoint(tmp_path):
    teacher = MultiViewUNet(**TOY_UNET)
    with torch.no_grad():
        for p in teacher.parameters():
            p.normal_(std=0.05)
    teacher.save_pretrained(tmp_path / "teacher")
    student = PEPD.from_teacher(tmp_path / "teacher", patch_size=4, gaussians_per_token=4, width=32, num_heads=2)
    assert torch.equal(student.unet.conv_in.weight, teacher.conv_in.weight)
    assert student.num_gaussians == 4 * 4 * 4 * 4
    # The student round-trips through save_pretrained with its phase-1 config inside.
    student.save_pretrained(tmp_path / "student")
    again = PEPD.from_pretrained(tmp_path / "student")
    assert torch.equal(again.unet.conv_in.weight, teacher.conv_in.weight)


def test_gradients_reach_phase1_and_phase2():
    student = toy_student().train()
    g = student(*_inputs(student)).gaussians
    (g.means.square().sum() + g.sh_dc.sum() + g.opacity_logits.sum() + g.log_scales.sum() + g.quats.sum()).backward()
    assert student.unet.conv_in.weight.grad.abs().sum() > 0
    assert student.blocks_means[0].qkv.weight.grad.abs().sum() > 0
    assert student.head_appearance.weight.grad.abs().sum() > 0
    # Every trainable parameter takes part (multi-GPU DDP refuses parameters that never get a gradient).
    unused = [name for name, p in student.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


def test_bad_shapes_are_named():
    student = toy_student()
    noise, frame, cams, tokens = _inputs(student)
    with pytest.raises(ValueError, match="noise must be"):
        student(noise[:, :3], frame, cams, tokens)
    with pytest.raises(ValueError, match="cameras must be"):
        student(noise, frame, cams[:, :4], tokens)


def test_presets():
    tiny = PEPD.preset("tiny")
    assert tiny.num_gaussians == 16384
    assert tiny.unet.config.sample_size == 64 and tiny.grid == 16
    with torch.device("meta"):
        base = PEPD.preset("base")
    assert base.num_gaussians == 65536
    params = sum(p.numel() for p in base.parameters())
    assert 800e6 < params < 1.2e9  # an SD-2.1-sized UNet plus the decoder
    small = PEPD.preset("base-small").eval()
    size = small.unet.config.sample_size
    noise = torch.randn((1,) + small.noise_shape)
    cams = ViewLayout().cameras(size, size, include_input=True).expand(1)
    out = small(noise, torch.zeros(1, 4, size, size), cams, torch.randn(1, 196, 112)).gaussians
    assert out.num_gaussians == 4 * size * size * 16
    with pytest.raises(ValueError, match="unknown PEPD preset"):
        PEPD.preset("huge")


def _project(cameras, points):
    """Pixel coordinates of world points in each camera.  cameras [B, V], points [B, V, N, 3] -> [B, V, N, 2]"""
    homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)  # [B, V, N, 4]
    in_camera = (cameras.viewmats[..., None, :, :] @ homogeneous[..., None])[..., :3, 0]  # [B, V, N, 3]
    pixels = (cameras.Ks[..., None, :, :] @ in_camera[..., None])[..., 0]
    return pixels[..., :2] / pixels[..., 2:]


def test_pixel_aligned_gaussians_sit_on_their_pixels_rays():
    """Each Gaussian of view v projects into view v at the centre of its own pixel, within the object's depth range."""
    student = toy_student(position_mode="pixel-aligned", gaussians_per_token=16)
    noise, frame, cams, tokens = _inputs(student)
    g = student(noise, frame, cams, tokens).gaussians
    b, v, size, p = 2, 4, student.unet.config.sample_size, student.config.patch_size
    means = g.means.reshape(b, v, -1, 3)  # [B, V, pixels, 3] in token order
    pixels = _project(cams[:, :v], means)  # [B, V, pixels, 2]
    rows, cols = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    expected = torch.stack([cols, rows], dim=-1)  # [S, S, 2] (x, y)
    g_ = size // p
    expected = expected.reshape(g_, p, g_, p, 2).permute(0, 2, 1, 3, 4).reshape(-1, 2)  # token-major, pixel within
    assert torch.allclose(pixels, expected.expand_as(pixels), atol=1e-3)
    distance = means.norm(dim=-1)
    assert distance.max() < student.config.position_bound * 1.5 + 0.1  # near the ball, not at the camera
    with pytest.raises(ValueError, match="multiple of"):
        toy_student(position_mode="pixel-aligned", gaussians_per_token=4)


def test_input_colour_anchor_gives_view_0_the_input_frames_colours():
    """With the anchor, view 0's Gaussians carry the input frame's pixel colours (up to the learned residual, made 0
    here); the other views do not depend on the frame through this path."""
    student = toy_student(position_mode="pixel-aligned", gaussians_per_token=16, input_colour_anchor=True)
    with torch.no_grad():
        student.head_appearance.weight.zero_()
        student.head_appearance.bias.view(16, 4)[:, 1:] = 0
    noise, frame, cams, tokens = _inputs(student)
    colours = student(noise, frame, cams, tokens).gaussians.colors.reshape(2, 4, -1, 3)  # [B, V, pixels, 3]
    size, p = student.unet.config.sample_size, student.config.patch_size
    g_ = size // p
    rgb = ((frame[:, :3] + 1) / 2).permute(0, 2, 3, 1).reshape(2, g_, p, g_, p, 3).permute(0, 1, 3, 2, 4, 5).reshape(2, -1, 3)
    assert torch.allclose(colours[:, 0], rgb.clamp_min(0), atol=1e-5)
    assert torch.allclose(colours[:, 1:], torch.full_like(colours[:, 1:], 0.5), atol=1e-6)
    with pytest.raises(ValueError, match="input_colour_anchor needs"):
        toy_student(input_colour_anchor=True)
