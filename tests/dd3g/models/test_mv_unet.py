"""MultiViewUNet: shapes of the presets, multi-view mixing, conditioning, per-frame timesteps, frame
permutation equivariance, camera-matrix convention, save/load, gradients, bf16. CPU, a few seconds:
models run at 16 px except the tiny shape test (64 px)."""


import numpy as np
import pytest
import torch

from dd3g.cameras import ViewLayout, orbit_cameras
from dd3g.models.mv_unet import MultiViewUNet, MultiViewUNetOutput, SpatialTransformer3D
from helpers import imagedream_camera

FRAMES = 5
SMALL = 16  # spatial size for the behaviour tests


def randomize_zero_init(model: MultiViewUNet, seed: int = 0) -> MultiViewUNet:
    """Give the zero-initialised output layers random weights so output differences are visible."""
    torch.manual_seed(seed)
    model.conv_out.reset_parameters()
    for module in model.modules():
        if isinstance(module, SpatialTransformer3D):
            module.proj_out.reset_parameters()
    return model


def layout_cameras(batch: int, size: int, elevation=10.0, offset=0.0):
    """Canonical cameras [B, 5]: 4 output views + the input view last."""
    return ViewLayout().cameras(size, size, elevation_deg=elevation, azimuth_offset_deg=offset,
                                include_input=True).expand(batch)


def inputs(model: MultiViewUNet, batch: int = 1, size: int = SMALL, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    sample = torch.randn(batch, FRAMES, cfg.in_channels, size, size, generator=g)  # [B, F, C, H, W]
    timesteps = torch.randint(0, 1000, (batch,), generator=g)  # [B]
    camera = model.camera_condition(layout_cameras(batch, size, offset=30.0), size=size)
    context = torch.randn(batch, 7, cfg.context_dim, generator=g)  # [B, L, D]
    return sample, timesteps, camera, context


@pytest.fixture(scope="module")
def tiny():
    return randomize_zero_init(MultiViewUNet.preset("tiny", sample_size=SMALL)).eval()


@pytest.fixture(scope="module")
def base_small():
    return randomize_zero_init(MultiViewUNet.preset("base-small")).eval()


@pytest.fixture(scope="module", params=["tiny", "base-small"])
def model(request, tiny, base_small):
    return tiny if request.param == "tiny" else base_small


# -- shapes and sizes ----------------------------------------------------------------------------------


def test_tiny_preset_shapes_and_budget():
    model = MultiViewUNet.preset("tiny").eval()
    assert model.config.camera_conditioning == "plucker" and model.config.context_dim == 112
    assert model.num_parameters <= 10_000_000
    assert model.feature_channels == model.config.block_out_channels[0]
    cams = layout_cameras(2, 128)  # resized to sample_size by camera_condition
    camera = model.camera_condition(cams)
    assert camera.shape == (2, FRAMES, 6, 64, 64)
    sample = torch.randn(2, FRAMES, 4, 64, 64)
    with torch.inference_mode():
        out = model(sample, torch.tensor([999, 3]), camera, torch.randn(2, 196, 112), return_features=True)
    assert isinstance(out, MultiViewUNetOutput)
    assert out.sample.shape == (2, FRAMES, 4, 64, 64)
    assert out.features.shape == (2, FRAMES, model.feature_channels, 64, 64)
    # Zero-initialised output conv: a fresh model predicts exactly zero, but its features are not zero.
    assert torch.count_nonzero(out.sample) == 0
    assert out.features.abs().mean() > 0
    # Without return_features there are no features.
    with torch.inference_mode():
        assert model(sample[:1, :, :, :16, :16], 5, camera[:1, :, :, :16, :16], torch.zeros(1, 3, 112)).features is None


@pytest.mark.parametrize("name, millions", [("tiny-wide", 33.3), ("small", 51.3)])
def test_larger_teacher_presets_take_the_tiny_ones_inputs_and_are_larger(name, millions):
    # Built on the meta device: shapes and parameter counts without the weights.
    with torch.device("meta"):
        model = MultiViewUNet.preset(name)
        cams = layout_cameras(1, 64)
        out = model(torch.randn(1, FRAMES, 4, 64, 64), torch.tensor([500]), model.camera_condition(cams),
                    torch.randn(1, 196, 112), return_features=True)
    tiny = MultiViewUNet.PRESETS["tiny"]
    for key in ("sample_size", "in_channels", "out_channels", "num_frames", "context_dim", "camera_conditioning"):
        assert model.config[key] == tiny[key], key  # same data, tokens and cameras as the tiny teacher
    assert abs(model.num_parameters / 1e6 - millions) < 0.1
    assert out.sample.shape == (1, FRAMES, 4, 64, 64)
    assert out.features.shape == (1, FRAMES, model.config.block_out_channels[0], 64, 64)


def test_base_small_shapes(base_small):
    cams = layout_cameras(2, 64)
    camera = base_small.camera_condition(cams)
    assert camera.shape == (2, FRAMES, 16)
    with torch.inference_mode():
        out = base_small(torch.randn(2, FRAMES, 4, SMALL, SMALL), torch.tensor([1, 2]), cams, torch.randn(2, 16, 64),
                         return_features=True)
    assert out.sample.shape == (2, FRAMES, 4, SMALL, SMALL)
    assert out.features.shape == (2, FRAMES, 32, SMALL, SMALL)
    assert out.sample.abs().mean() > 0


def test_base_on_meta_device():
    with torch.device("meta"):
        model = MultiViewUNet.preset("base")
        out = model(torch.randn(1, FRAMES, 4, 32, 32), torch.tensor([500]), torch.randn(1, FRAMES, 16),
                    torch.randn(1, 16, 1024), return_features=True)
    # SD-2.1-base UNet: 865.9M; + ImageDream's camera MLP (16 -> 1280 -> 1280): 1.66M.
    assert 860e6 < model.num_parameters < 875e6
    assert out.sample.shape == (1, FRAMES, 4, 32, 32) and out.features.shape == (1, FRAMES, 320, 32, 32)
    assert model.feature_channels == 320
    heads = [m.blocks[0].attn1.heads for m in model.modules() if isinstance(m, SpatialTransformer3D)]
    assert sorted(set(heads)) == [5, 10, 20]  # 64-channel heads at 320 / 640 / 1280 channels
    assert len(heads) == 16  # 2 + 2 + 2 down, 1 mid, 3 + 3 + 3 up (as SD 2.1)


# -- behaviour -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", [True, False])
def test_multiview_attention_mixes_frames(attention):
    overrides = {} if attention else dict(attention_levels=(False,) * 4, mid_block_attention=False)
    model = randomize_zero_init(MultiViewUNet.preset("tiny", sample_size=SMALL, **overrides)).eval()
    sample, t, camera, context = inputs(model)
    changed = sample.clone()
    changed[:, 2] = torch.randn_like(changed[:, 2])
    with torch.inference_mode():
        a = model(sample, t, camera, context).sample
        b = model(changed, t, camera, context).sample
    others = [0, 1, 3, 4]
    assert (a[:, 2] - b[:, 2]).abs().max() > 1e-3
    diff = (a[:, others] - b[:, others]).abs().max()
    if attention:
        assert diff > 1e-4
    else:
        assert diff == 0


def test_context_and_camera_condition_the_output(model):
    sample, t, camera, context = inputs(model)
    with torch.inference_mode():
        ref = model(sample, t, camera, context).sample
        other_context = model(sample, t, camera, torch.randn_like(context)).sample
        unconditional = model(sample, t, camera, torch.zeros_like(context)).sample
        other_camera = model.camera_condition(layout_cameras(1, SMALL, elevation=25.0, offset=75.0), size=SMALL)
        moved = model(sample, t, other_camera, context).sample
    assert (ref - other_context).abs().max() > 1e-4
    assert (ref - unconditional).abs().max() > 1e-4
    assert (ref - moved).abs().max() > 1e-4


def test_per_frame_timesteps(model):
    sample, _, camera, context = inputs(model, batch=2)
    t = torch.tensor([700, 20])
    with torch.inference_mode():
        per_sample = model(sample, t, camera, context).sample
        per_frame = model(sample, t[:, None].expand(2, FRAMES).clone(), camera, context).sample
        frames_t = t[:, None].repeat(1, FRAMES)
        frames_t[:, -1] = 0  # the clean input frame
        mixed = model(sample, frames_t, camera, context).sample
    torch.testing.assert_close(per_frame, per_sample, rtol=0, atol=1e-6)
    assert (mixed - per_sample).abs().max() > 1e-4
    with pytest.raises(ValueError, match="timesteps"):
        model(sample, torch.zeros(2, FRAMES - 1), camera, context)


def test_frame_permutation_equivariance(model):
    sample, t, camera, context = inputs(model, batch=2)
    t_frames = torch.randint(0, 1000, (2, FRAMES), generator=torch.Generator().manual_seed(3))
    perm = torch.tensor([3, 0, 4, 2, 1])
    with torch.inference_mode():
        out = model(sample, t_frames, camera, context, return_features=True)
        out_p = model(sample[:, perm], t_frames[:, perm], camera[:, perm], context, return_features=True)
    torch.testing.assert_close(out_p.sample, out.sample[:, perm], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_p.features, out.features[:, perm], rtol=1e-4, atol=1e-5)
    # Permuting the frames without their cameras is *not* a symmetry (the camera tells frames apart).
    with torch.inference_mode():
        wrong = model(sample[:, perm], t_frames[:, perm], camera, context).sample
    assert (wrong - out.sample[:, perm]).abs().max() > 1e-4


def test_batch_elements_are_independent(tiny):
    sample, t, camera, context = inputs(tiny, batch=2)
    with torch.inference_mode():
        both = tiny(sample, t, camera, context).sample
        first = tiny(sample[:1], t[:1], camera[:1], context[:1]).sample
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-5)




def test_matrix_camera_matches_imagedream_convention(base_small):
    azimuths = [0.0, 90.0, 180.0, 270.0, 33.0]
    cams = orbit_cameras(torch.tensor(azimuths), torch.full((5,), 15.0), 64, 64, radius=2.0)  # [5]
    vectors = base_small.camera_condition(cams.expand(1))  # [1, 5, 16]
    expected = np.stack([imagedream_camera(15.0, a) for a in azimuths])
    np.testing.assert_allclose(vectors[0].numpy(), expected, atol=1e-5)


def test_plucker_camera_is_rays_at_sample_size(tiny):
    cams = layout_cameras(1, 64)
    rays = tiny.camera_condition(cams)  # sample_size = 16 for this fixture
    assert rays.shape == (1, FRAMES, 6, SMALL, SMALL)
    torch.testing.assert_close(rays, cams.resized(SMALL, SMALL).plucker_rays())
    torch.testing.assert_close(rays[:, :, :3].norm(dim=2), torch.ones(1, FRAMES, SMALL, SMALL))


def test_bad_inputs_raise(tiny):
    sample, t, camera, context = inputs(tiny)
    with pytest.raises(ValueError, match="sample"):
        tiny(sample[:, :, :3], t, camera, context)
    with pytest.raises(ValueError, match="multiples"):
        tiny(sample[..., :12, :12], t, camera[..., :12, :12], context)
    with pytest.raises(ValueError, match="context"):
        tiny(sample, t, camera, context[..., :10])
    with pytest.raises(ValueError, match="plucker"):
        tiny(sample, t, camera[:, :, :3], context)
    with pytest.raises(ValueError, match="preset"):
        MultiViewUNet.preset("huge")
    with pytest.raises(ValueError, match="camera_conditioning"):
        MultiViewUNet.preset("tiny", camera_conditioning="euler")


# -- persistence, training, dtypes -----------------------------------------------------------------------


def test_save_load_round_trip(base_small, tmp_path):
    base_small.save_pretrained(tmp_path)
    loaded = MultiViewUNet.from_pretrained(tmp_path).eval()
    def plain(config):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}

    assert plain(loaded.config) == plain(base_small.config)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    sample, t, camera, context = inputs(base_small)
    with torch.inference_mode():
        a = base_small(sample, t, camera, context, return_features=True)
        b = loaded(sample, t, camera, context, return_features=True)
    assert torch.equal(a.sample, b.sample) and torch.equal(a.features, b.features)


def test_gradients_reach_conv_in():
    model = randomize_zero_init(MultiViewUNet.preset("tiny", sample_size=SMALL)).train()
    sample, t, camera, context = inputs(model)
    model(sample, t, camera, context).sample.square().mean().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["conv_in.weight"] is not None and grads["conv_in.weight"].abs().sum() > 0
    assert all(g is not None for g in grads.values())  # every parameter takes part
    # Gradient checkpointing gives the same gradients.
    reference = grads["conv_in.weight"].clone()
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(sample, t, camera, context).sample.square().mean().backward()
    torch.testing.assert_close(model.conv_in.weight.grad, reference, rtol=1e-4, atol=1e-7)


def test_fresh_model_gradient_reaches_conv_out_only_through_zero_init():
    model = MultiViewUNet.preset("tiny", sample_size=SMALL).train()
    sample, t, camera, context = inputs(model)
    out = model(sample, t, camera, context, return_features=True)
    (out.sample - 1.0).square().mean().backward()
    assert model.conv_out.weight.grad.abs().sum() > 0  # the zero layer starts learning at step 1


def test_bf16_close_to_fp32(tiny):
    sample, t, camera, context = inputs(tiny)
    with torch.inference_mode():
        ref = tiny(sample, t, camera, context).sample
        model16 = MultiViewUNet.from_config(tiny.config).to(torch.bfloat16)
        model16.load_state_dict({k: v.to(torch.bfloat16) for k, v in tiny.state_dict().items()})
        out = model16.eval()(sample.bfloat16(), t, camera, context.bfloat16()).sample
    assert out.dtype == torch.bfloat16
    error = (out.float() - ref).norm() / ref.norm()
    assert error < 0.05, error
