"""The teacher interface through the tiny backend: the deterministic ODE and implicit verification."""

import dataclasses

import pytest
import torch

from dd3g.randomness import noise_from_seeds
from dd3g.teachers.tiny import TinyTeacher, training_scheduler
from helpers import toy_teacher_pipeline


@pytest.fixture(scope="module")
def teacher():
    return TinyTeacher(toy_teacher_pipeline())


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 4, 48, 48, generator=torch.Generator().manual_seed(1))


def test_simulation_is_a_function_of_image_and_seed(teacher, images):
    a = teacher.simulate(images, seeds=[11, 12], num_steps=3)
    b = teacher.simulate(images, seeds=[11, 12], num_steps=3)
    assert a.views.shape == (2, 4, 4, 16, 16) and a.views.min() >= 0 and a.views.max() <= 1
    assert torch.equal(a.views, b.views)
    assert torch.equal(a.noise, noise_from_seeds(teacher.noise_shape, [11, 12]))
    # Batch position does not matter (to float rounding): the second image alone, same seed.
    alone = teacher.simulate(images[1:], seeds=[12], num_steps=3)
    assert (alone.views[0] - a.views[1]).abs().max() < 1e-5
    other = teacher.simulate(images, seeds=[13, 12], num_steps=3)
    assert not torch.allclose(other.views[0], a.views[0], atol=1e-3)


def test_guidance_goes_from_the_unconditional_past_the_conditional_by_its_scale(teacher, images):
    # Classifier-free guidance is u + s (c - u): s = 3 lands three times as far from the unconditional output u
    # as the conditional c does, in the same direction. c and u come from plain (unguided) calls.
    cond = teacher.condition(images[:1])
    unconditional_only = dataclasses.replace(cond, context=cond.null_context, input_frame=cond.null_input_frame)
    cameras = teacher.cameras(1)
    x_t = torch.randn(1, *teacher.noise_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([600])
    c = teacher.guided_output(x_t, t, cond, cameras, 1.0)
    u = teacher.guided_output(x_t, t, unconditional_only, cameras, 1.0)
    assert (c - u).abs().mean() > 1e-3  # the image moves the output at all
    for scale in (0.0, 3.0):
        guided = teacher.guided_output(x_t, t, cond, cameras, scale)
        assert torch.allclose(guided, u + scale * (c - u), atol=1e-5), scale
    # The ODE carries it through: one DDIM step makes the views linear in the network output, so wherever no
    # pixel is clipped, the views at s = 3 lie twice as far beyond s = 1 as s = 1 lies beyond s = 0.
    views = {s: teacher.simulate(images[:1], seeds=[3], num_steps=1, guidance_scale=s).views for s in (0.0, 1.0, 3.0)}
    unclipped = torch.stack([(v > 0) & (v < 1) for v in views.values()]).all(dim=0)
    assert unclipped.float().mean() > 0.2
    step = (views[1.0] - views[0.0])[unclipped]
    assert step.abs().mean() > 1e-4
    assert torch.allclose((views[3.0] - views[1.0])[unclipped], 2 * step, atol=1e-4)


def test_v_prediction_converts_to_epsilon(teacher):
    scheduler = teacher.sampling_scheduler(4)
    x0, eps = torch.randn(2, 4, 4, 8, 8), torch.randn(2, 4, 4, 8, 8)
    t = torch.tensor([100, 700])
    x_t = scheduler.add_noise(x0, eps, t)
    v = training_scheduler().get_velocity(x0, eps, t)
    assert torch.allclose(teacher.to_epsilon(v, x_t, t, scheduler), eps, atol=1e-4)


def test_verification_loss_gradient_is_the_scaled_score_residual(teacher, images):
    renders = torch.rand(2, 4, 4, 16, 16, requires_grad=True)
    cond = teacher.condition(images)
    cams = teacher.cameras(2, elevation_deg=10.0, azimuth_offset_deg=30.0)
    loss = teacher.verification_loss(renders, cond, cams, seeds=[5, 6])
    loss.backward()
    assert torch.isfinite(loss) and renders.grad.abs().sum() > 0
    # Keyed by seed: the same seeds give the same loss, and the teacher's weights get no gradient.
    again = teacher.verification_loss(renders.detach(), cond, cams, seeds=[5, 6])
    assert torch.allclose(again, loss.detach())
    assert all(p.grad is None for p in teacher.unet.parameters())
    # A per-element mean: the same renders twice over (batch 4) give the same loss, not twice it.
    doubled = teacher.verification_loss(torch.cat([renders.detach()] * 2), teacher.condition(torch.cat([images] * 2)),
                                        teacher.cameras(4, elevation_deg=10.0, azimuth_offset_deg=30.0), seeds=[5, 6, 5, 6])
    assert torch.allclose(doubled, loss.detach(), rtol=1e-5)


def test_save_load(teacher, images, tmp_path):
    teacher.pipe.save_pretrained(tmp_path / "teacher")
    loaded = TinyTeacher.from_pretrained(tmp_path / "teacher")
    a = teacher.simulate(images[:1], seeds=[4], num_steps=2)
    b = loaded.simulate(images[:1], seeds=[4], num_steps=2)
    assert torch.equal(a.views, b.views)


def test_camera_sensitivity_tells_a_camera_blind_teacher(teacher):
    """dd3g.teachers.base.camera_sensitivity: ~0 when the UNet cannot see the rays, clearly > 0 when it can."""
    import copy

    from dd3g.rendering import render
    from training import synthetic

    from dd3g.teachers.base import camera_sensitivity

    objects = synthetic.batch_objects([synthetic.split_seed("val", i) for i in range(2)], 256)
    elevation = torch.zeros(2)
    inputs = render(objects, teacher.layout.input_camera(32, 32, elevation), background=None).rgba()[:, 0]
    truth = render(objects, teacher.layout.cameras(16, 16, elevation_deg=elevation), background=None).rgba()
    seeing = camera_sensitivity(teacher, inputs, truth, elevation)
    blind = TinyTeacher(copy.deepcopy(teacher.pipe))
    with torch.no_grad():
        blind.unet.conv_in.weight[:, teacher.unet.config.in_channels:] = 0  # the Plücker-ray inputs cut off
    assert camera_sensitivity(blind, inputs, truth, elevation) < 1e-6
    assert seeing > 0.01


def test_high_noise_expert_takes_the_top_timesteps_and_round_trips(tmp_path):
    """With an expert, rows at t >= high_noise_start go to it and the others to the main UNet; it saves and loads."""
    from dd3g.teachers.tiny import TinyMVDMPipeline

    base, other = toy_teacher_pipeline(seed=0, tokenizer_size=64), toy_teacher_pipeline(seed=1, tokenizer_size=64)
    both = TinyMVDMPipeline(base.unet, base.image_encoder, base.scheduler, high_noise_unet=other.unet, high_noise_start=995)
    both.save_pretrained(tmp_path / "t", safe_serialization=True)
    loaded = TinyTeacher.from_pretrained(tmp_path / "t")
    assert loaded.pipe.config.high_noise_start == 995 and loaded.pipe.high_noise_unet is not None
    teacher, alone, expert = TinyTeacher(both), TinyTeacher(base), TinyTeacher(other)
    cond = teacher.condition(torch.rand(3, 4, 32, 32, generator=torch.Generator().manual_seed(0)))
    frames = torch.cat([torch.randn(3, 4, 4, 16, 16, generator=torch.Generator().manual_seed(1)), cond.input_frame[:, None]], dim=1)
    timesteps = torch.zeros(3, 5)
    timesteps[:, :4] = torch.tensor([999.0, 500.0, 995.0])[:, None]
    cameras = teacher.cameras(3, torch.zeros(3), 0.0)
    mixed = teacher.denoise(frames, timesteps, cameras, cond.context)
    low = alone.denoise(frames, timesteps, cameras, cond.context)
    high = expert.denoise(frames, timesteps, cameras, cond.context)
    assert torch.allclose(mixed[1], low[1], atol=1e-5) and torch.allclose(mixed[[0, 2]], high[[0, 2]], atol=1e-5)
    assert not torch.allclose(low[0], high[0], atol=1e-3)
    assert torch.allclose(loaded.denoise(frames, timesteps, cameras, cond.context), mixed, atol=1e-5)
    # Without an expert the folder has no high_noise_unet and the main UNet takes every timestep.
    base.save_pretrained(tmp_path / "plain", safe_serialization=True)
    plain = TinyTeacher.from_pretrained(tmp_path / "plain")
    assert plain.pipe.high_noise_unet is None
    assert torch.allclose(plain.denoise(frames, timesteps, cameras, cond.context), low, atol=1e-5)
