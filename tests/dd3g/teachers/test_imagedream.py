"""ImageDream teacher backend: loading the published layout (tiny random copy), clear errors, the UNet's
parameter names (tiny and full size), simulation, verification and the camera convention. CPU, seconds."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dd3g.teachers.imagedream import (
    IMAGEDREAM_LAYOUT,
    ImageDreamTeacher,
    ImageDreamUNet,
    alpha_from_white,
    imagedream_camera_vectors,
)
from helpers import imagedream_camera
from dd3g.testing.imagedream_fixture import (
    PUBLISHED_UNET_CONFIG,
    TINY_RESAMPLER,
    TINY_UNET_CONFIG,
    published_unet_shapes,
    write_tiny_imagedream,
)

SIZE = 64  # the tiny checkpoint's pixel size (8 x 8 latents through a 4-level VAE)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_imagedream(tmp_path_factory.mktemp("imagedream") / "imagedream-ipmv-diffusers")


@pytest.fixture(scope="module")
def teacher(tiny_dir):
    return ImageDreamTeacher.from_pretrained(tiny_dir)


def rgba_batch(batch=1, seed=0):
    """An opaque coloured disc on a transparent background.  [B, 4, SIZE, SIZE]"""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = (((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) < (SIZE / 3) ** 2).float()
    rgb = torch.rand(batch, 3, 1, 1, generator=g).expand(batch, 3, SIZE, SIZE)
    return torch.cat([rgb, disc.expand(batch, 1, SIZE, SIZE)], dim=1)


# -- loading -------------------------------------------------------------------------------------------


def test_published_layout_loads_strictly(tiny_dir, teacher):
    saved = load_file(str(tiny_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    state = teacher.unet.state_dict()
    assert set(state) == set(saved)
    assert all(state[k].shape == saved[k].shape and torch.equal(state[k], saved[k].float()) for k in saved)
    assert {k: tuple(v.shape) for k, v in saved.items()} == published_unet_shapes(TINY_UNET_CONFIG, **TINY_RESAMPLER)
    assert teacher.unet.config.ip_embedding_dim == TINY_RESAMPLER["embedding_dim"]  # read off the weights
    assert teacher.unet.config.ip_resampler_depth == TINY_RESAMPLER["depth"]
    assert teacher.image_size == SIZE and teacher.noise_shape == (4, 4, 8, 8)
    assert teacher.scheduler_config["prediction_type"] == "epsilon"
    assert (teacher.default_guidance_scale, teacher.default_num_steps) == (5.0, 30)
    assert teacher.layout == IMAGEDREAM_LAYOUT and teacher.device == torch.device("cpu")
    assert next(teacher.unet.parameters()).dtype == torch.float32  # fp16 on disk, cast at load


def test_full_size_unet_has_the_published_names():
    """At full size (meta device) the module tree gives ImageDream's 773 tensors: SD-2.1's 686 + camera + ip."""
    with torch.device("meta"):
        unet = ImageDreamUNet.from_published_config(PUBLISHED_UNET_CONFIG)
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert shapes == published_unet_shapes(PUBLISHED_UNET_CONFIG)
    assert len(shapes) == 773
    sd_part = {
        k: v for k, v in shapes.items() if not k.startswith(("camera_embed.", "image_embed.")) and "_ip." not in k
    }
    assert len(sd_part) == 686 and sum(math.prod(s) for s in sd_part.values()) == 865_910_724  # SD-2.1 UNet
    # Names of the ldm checkpoint (ImageDream's own, loaded 1:1 by the diffusers port).
    assert shapes["input_blocks.3.0.op.weight"] == (320, 320, 3, 3)
    assert shapes["input_blocks.4.0.skip_connection.weight"] == (640, 320, 1, 1)
    assert shapes["middle_block.1.transformer_blocks.0.attn2.to_k_ip.weight"] == (1280, 1024)
    assert shapes["output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes["output_blocks.5.2.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes["out.2.weight"] == (4, 320, 3, 3)
    assert shapes["camera_embed.0.weight"] == (1280, 16)
    assert shapes["image_embed.latents"] == (1, 16, 1024) and shapes["image_embed.proj_in.weight"] == (1024, 1280)


def test_missing_or_pickle_only_parts_fail_clearly(tiny_dir, tmp_path):
    broken = tmp_path / "no-vae"
    shutil.copytree(tiny_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(FileNotFoundError, match="'vae'"):
        ImageDreamTeacher.from_pretrained(broken)

    for part, stem in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        pickled = tmp_path / f"pickle-{part}"
        shutil.copytree(tiny_dir, pickled)
        (pickled / part / f"{stem}.safetensors").unlink()
        (pickled / part / f"{stem}.bin").write_bytes(b"not read")
        with pytest.raises(ValueError, match=rf"'{part}'.*pickle"):
            ImageDreamTeacher.from_pretrained(pickled)

    unlisted = tmp_path / "unlisted"
    shutil.copytree(tiny_dir, unlisted)
    index = json.loads((unlisted / "model_index.json").read_text())
    del index["image_encoder"]
    (unlisted / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="'image_encoder'"):
        ImageDreamTeacher.from_pretrained(unlisted)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageDreamTeacher.from_pretrained(tmp_path / "nowhere")


# -- the UNet's two ways of taking the image prompt --------------------------------------------------


def test_precomputed_context_equals_imagedream_call(teacher):
    """condition() resamples the CLIP tokens once; the UNet called ImageDream's way (ip, ip_img) agrees."""
    images = rgba_batch(1)
    cond = teacher.condition(images)
    assert cond.context.shape == (1, 77 + TINY_UNET_CONFIG["ip_dim"], TINY_UNET_CONFIG["context_dim"])
    assert torch.count_nonzero(cond.null_input_frame) == 0
    assert not torch.allclose(cond.context[:, 77:], cond.null_context[:, 77:])  # zero image -> resampled, not zero
    g = torch.Generator().manual_seed(1)
    views = torch.randn(1, 4, 4, 8, 8, generator=g)
    frames = torch.cat([views, cond.input_frame[:, None]], dim=1)  # [1, 5, 4, 8, 8]
    cameras = teacher.cameras(1)
    timesteps = torch.full((1, 5), 500.0)
    ours = teacher.denoise(frames, timesteps, cameras, cond.context)
    camera = imagedream_camera_vectors(cameras)
    camera[:, -1] = 0
    rgb = images[:, :3] * images[:, 3:] + 1 - images[:, 3:]
    clip = teacher.image_encoder(teacher._clip_pixels(rgb), output_hidden_states=True).hidden_states[-2]
    with torch.no_grad():
        theirs = teacher.unet(
            torch.cat([views, torch.randn(1, 1, 4, 8, 8)], dim=1),
            timesteps,
            camera,
            cond.context[:, :77],
            ip=clip,
            ip_img=cond.input_frame,
        )
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


# -- simulation and verification ---------------------------------------------------------------------


def test_simulate_is_deterministic_rgba(teacher):
    images = rgba_batch(1)
    first = teacher.simulate(images, seeds=[3], num_steps=2)
    again = teacher.simulate(images, seeds=[3], num_steps=2)
    other = teacher.simulate(images, seeds=[4], num_steps=2)
    assert first.views.shape == (1, 4, 4, SIZE, SIZE)
    assert first.views.min() >= 0 and first.views.max() <= 1
    assert first.noise.shape == (1, 4, 4, 8, 8) and first.cameras.shape == (1, 5)
    assert torch.equal(first.views, again.views)
    assert not torch.allclose(first.views, other.views)


def test_verification_loss_reaches_the_renders(teacher):
    images = rgba_batch(1)
    cond = teacher.condition(images)
    renders = torch.rand(1, 4, 4, SIZE, SIZE, requires_grad=True)
    loss = teacher.verification_loss(renders, cond, teacher.cameras(1, azimuth_offset_deg=30.0), seeds=[7])
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert renders.grad is not None and torch.isfinite(renders.grad).all() and renders.grad.abs().sum() > 0


# -- conventions -------------------------------------------------------------------------------------


def numpy_get_camera(num_frames, elevation, extra_view):
    """ImageDream's get_camera (blender_coord=True) for a ring of views, plus its all-zero extra view."""
    cameras = [imagedream_camera(elevation, azimuth) for azimuth in np.arange(0, 360, 360 / num_frames)]
    if extra_view:
        cameras.append(np.zeros(16))
    return np.stack(cameras)


@pytest.mark.parametrize("elevation", [0.0, 15.0])
def test_cameras_are_imagedreams(teacher, elevation):
    cameras = teacher.cameras(1, elevation_deg=elevation)[0]  # [5] our layout, input view last
    vectors = imagedream_camera_vectors(cameras)
    vectors[-1] = 0  # what denoise does for the input frame
    np.testing.assert_allclose(vectors.numpy(), numpy_get_camera(4, elevation, extra_view=True), atol=1e-5)
    if elevation == 0:  # azimuth 0/90/180/270: camera centres at +Z, +X, -Z, -X of the Y-up world (Blender x, -z)
        centres = vectors[:4].view(4, 4, 4)[:, :3, 3]
        np.testing.assert_allclose(centres.numpy(), [[0, -1, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0]], atol=1e-6)


def test_alpha_from_white():
    rgb = torch.ones(1, 3, 16, 16)
    rgb[..., 4:12, 4:12] = torch.tensor([0.2, 0.5, 0.9])[:, None, None]
    rgba = alpha_from_white(rgb)
    alpha = rgba[:, 3:]
    assert alpha[..., 0, 0] == 0 and alpha[..., 8, 8] == 1
    composite = rgba[:, :3] * alpha + 1 - alpha
    torch.testing.assert_close(composite, rgb, atol=1e-5, rtol=0)


def test_half_precision_load(tiny_dir):
    """float16: UNet and encoders in half, the VAE kept float32 (its config sets force_upcast); outputs float32."""
    half = ImageDreamTeacher.from_pretrained(tiny_dir, dtype=torch.float16)
    assert half.unet.dtype == torch.float16 and half.text_encoder.dtype == torch.float16
    assert half.vae.dtype == torch.float32
    result = half.simulate(rgba_batch(1), seeds=[3], num_steps=1)
    assert result.views.dtype == torch.float32 and torch.isfinite(result.views).all()
