"""Dummy models, pipelines and inputs for tests and benchmarks (the role of diffusers' testing utilities).

Nothing in the product imports this package. Models here have random weights at toy or published sizes; the
ImageDream checkpoint writer is in `imagedream_fixture`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image

from ..models.image_tokenizer import EfficientNetLite0Tokenizer
from ..models.pepd import PEPD
from ..pipeline import DD3GPipeline

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


def toy_teacher_pipeline(seed: int = 0, tokenizer_size: int = 224, sample_size: int = 16):
    """A TinyMVDMPipeline with a toy UNet (`sample_size` px frames: 16) and the real frozen tokenizer at `tokenizer_size`.
    The same seed gives the same weights at any size (the UNet has no size-bound parameters)."""
    from dd3g.models.mv_unet import MultiViewUNet
    from dd3g.teachers.tiny import TinyMVDMPipeline, training_scheduler

    torch.manual_seed(seed)
    unet = MultiViewUNet(**{**TOY_UNET, "sample_size": sample_size})
    randomize_zero_layers(unet)
    tokenizer = EfficientNetLite0Tokenizer.from_imagenet(image_size=tokenizer_size)
    return TinyMVDMPipeline(unet.eval(), tokenizer, training_scheduler())


def toy_scheduler() -> DDIMScheduler:
    """The DDIM of the tiny teacher's kind (v-prediction, 1000 steps, trailing spacing), for dummy pipelines."""
    return DDIMScheduler(num_train_timesteps=1000, prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False)


def toy_pipeline(seed: int = 0) -> DD3GPipeline:
    scheduler = toy_scheduler()
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


def example_rgba(size: int = 512) -> Image.Image:
    yy, xx = np.mgrid[:size, :size] / size
    alpha = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.12).astype(np.uint8) * 255
    rgb = np.stack([xx * 255, yy * 255, np.full_like(xx, 128)], -1).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def imagedream_parts(scale: str) -> tuple:
    """(student, frame_encoder, prompt_encoder), random, for a student distilled from ImageDream: `base` at ImageDream's
    published sizes, `base-small` at the sizes of dd3g/testing/imagedream_fixture.py."""
    from dd3g.models.imagedream_unet import ImageDreamUNet
    from dd3g.models.input_encoders import ImagePromptEncoder
    from . import imagedream_fixture as fixture

    if scale not in ("base", "base-small"):
        raise SystemExit(f"--phase1 imagedream needs --scale base or base-small, got {scale!r}")
    full = scale == "base"
    resampler = fixture.PUBLISHED_RESAMPLER if full else fixture.TINY_RESAMPLER
    with torch.device("meta"):  # only its config is wanted here
        unet = ImageDreamUNet.from_published_config(
            fixture.PUBLISHED_UNET_CONFIG if full else fixture.TINY_UNET_CONFIG, ip_embedding_dim=resampler["embedding_dim"],
            ip_resampler_depth=resampler["depth"], ip_resampler_heads=resampler["heads"], ip_resampler_dim_head=resampler["dim_head"])
    unet_config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    student = PEPD(**{**PEPD.PRESETS[scale], "unet_preset": None, "unet_config": unet_config, "phase1_architecture": "imagedream",
                      "sample_space": "sd-vae"}).eval()
    frame_encoder = latent_frame_encoder(student, full)
    vision = {k: v for k, v in (fixture.FULL_VISION_CONFIG if full else fixture.TINY_VISION_CONFIG).items()
              if k not in ("_name_or_path", "architectures", "torch_dtype", "transformers_version")}
    side = vision["image_size"]
    prompt_encoder = ImagePromptEncoder(vision_config=vision, resize=side, crop=side).eval()
    return student, frame_encoder, prompt_encoder


def latent_frame_encoder(student: PEPD, full: bool):
    """A random VAE encoder for a student in the 'sd-vae' sample space: SD's sizes (full) or the fixture's, encoding
    images of the size whose latents are the student's sample size."""
    from dd3g.models.input_encoders import LatentFrameEncoder
    from . import imagedream_fixture as fixture

    vae = fixture.FULL_VAE_CONFIG if full else fixture.TINY_VAE_CONFIG
    return LatentFrameEncoder(
        image_size=student.sample_size * 2 ** (len(vae["block_out_channels"]) - 1),
        **{k: vae[k] for k in ("in_channels", "latent_channels", "down_block_types", "block_out_channels", "layers_per_block",
                               "act_fn", "norm_num_groups", "scaling_factor")}).eval()


def random_pipeline(scale: str, phase1: str = "mv-unet") -> DD3GPipeline:
    scheduler = toy_scheduler()
    if phase1 == "imagedream":
        student, frame_encoder, prompt_encoder = imagedream_parts(scale)
        return DD3GPipeline(student, EfficientNetLite0Tokenizer.from_imagenet(), scheduler, frame_encoder=frame_encoder,
                            prompt_encoder=prompt_encoder)
    student = PEPD.preset(scale).eval()
    # a latent-space preset (base, base-small) runs with a VAE encoder, as one distilled from a latent teacher carries
    frame_encoder = latent_frame_encoder(student, scale == "base") if student.config.sample_space == "sd-vae" else None
    return DD3GPipeline(student, EfficientNetLite0Tokenizer.from_imagenet(), scheduler, frame_encoder=frame_encoder)


def disc(side: int):
    """[side, side] bool: a disc off the centre, the object of every test image."""
    import numpy as np

    yy, xx = np.ogrid[:side, :side]
    return (xx - side * 0.5) ** 2 + (yy - side * 0.55) ** 2 < (side * 0.3) ** 2


def make_images(folder: Path, side: int) -> dict:
    import numpy as np
    from PIL import Image

    inside = disc(side)
    paths = {}
    gray16 = np.where(inside, 12000, 65535).astype(np.uint16)  # [side, side]
    paths["16-bit grayscale PNG"] = folder / f"gray16_{side}.png"
    rgb = np.full((side, side, 3), 255, np.uint8)  # [side, side, 3]
    rgb[inside] = (40, 90, 160)
    paths["8-bit RGB PNG"] = folder / f"rgb8_{side}.png"
    paths["8-bit RGB JPEG"] = folder / f"rgb8_{side}.jpg"
    for key, array in (("16-bit grayscale PNG", gray16), ("8-bit RGB PNG", rgb), ("8-bit RGB JPEG", rgb)):
        if not paths[key].exists():
            Image.fromarray(array).save(paths[key])
    return paths
