"""Tiny random DD3G models built in the tests (no trained weights exist in tests)."""

from __future__ import annotations

import contextlib
import math
import socket

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image

from dd3g.models.image_tokenizer import EfficientNetLite0Tokenizer
from dd3g.models.pepd import PEPD
from dd3g.pipeline import DD3GPipeline

# A phase-1 UNet of the tiny teacher's structure at toy width: 16 px frames, one attention level.
TOY_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, num_frames=5, block_out_channels=(16, 32),
    layers_per_block=1, attention_levels=(False, True), mid_block_attention=True, attention_head_dim=8,
    context_dim=112, transformer_depth=1, camera_conditioning="plucker", norm_num_groups=8, dropout=0.0,
)


def toy_student(seed: int = 0, **overrides) -> PEPD:
    torch.manual_seed(seed)
    config = dict(unet_preset=None, unet_config=TOY_UNET, patch_size=4, gaussians_per_token=4, width=32, num_heads=2,
                  blocks_before_means=1, blocks_before_shape=1, blocks_before_appearance=1)
    student = PEPD(**{**config, **overrides})
    randomize_zero_layers(student)
    return student.eval()


def randomize_zero_layers(model: torch.nn.Module, std: float = 0.02) -> None:
    """Zero-initialised output layers make a fresh model ignore its inputs; give them small random values."""
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1 and torch.count_nonzero(param) == 0:
                param.normal_(std=std)


def toy_teacher_pipeline(seed: int = 0, tokenizer_size: int = 224):
    """A TinyMVDMPipeline with a toy UNet (16 px frames) and the real frozen tokenizer at `tokenizer_size`."""
    from dd3g.models.mv_unet import MultiViewUNet
    from dd3g.teachers.tiny import TinyMVDMPipeline, training_scheduler

    torch.manual_seed(seed)
    unet = MultiViewUNet(**TOY_UNET)
    randomize_zero_layers(unet)
    tokenizer = EfficientNetLite0Tokenizer.from_imagenet(image_size=tokenizer_size)
    return TinyMVDMPipeline(unet.eval(), tokenizer, training_scheduler())


def toy_pipeline(seed: int = 0) -> DD3GPipeline:
    scheduler = DDIMScheduler(num_train_timesteps=1000, prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False)
    return DD3GPipeline(
        student=toy_student(seed),
        image_encoder=EfficientNetLite0Tokenizer.from_imagenet(),
        scheduler=scheduler,
        image_size=64,
    )


def rgba_image(size: int = 48, seed: int = 0) -> Image.Image:
    """A transparent-background RGBA picture of a coloured, off-centre blob (no background removal needed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cx, cy, r = size * 0.45, size * 0.55, size * 0.3
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 255, 3)
    rgba[..., 0] = (xx * 255 // size).astype(np.uint8)
    rgba[..., 3] = inside * 255
    return Image.fromarray(rgba, "RGBA")


def imagedream_camera(elevation_deg: float, azimuth_deg: float) -> np.ndarray:
    """ImageDream/MVDream's get_camera for one view (blender_coord=True), written out here in numpy."""
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    position = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    forward = -position / np.linalg.norm(position)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, up, -forward], axis=1)
    c2w[:3, 3] = position
    flip_yz = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    return (flip_yz @ c2w).reshape(16)


@contextlib.contextmanager
def serve(pipe, **settings):
    """app.py's demo around `pipe` on its own port (for settings the shared test server must not have): (url, demo)."""
    import app

    settings = app.AppSettings(**{"video_frames": 2, "video_size": 32, "uploads_per_minute": 10_000, **settings})
    demo = app.build_demo(pipe, settings)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app.launch(demo, host="127.0.0.1", port=port, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", demo
    finally:
        demo.close()
        demo.dd3g_app.close()
