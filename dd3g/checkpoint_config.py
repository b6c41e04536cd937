"""A checkpoint folder's configs, checked against sane bounds before any model is built.

A saved pipeline's JSON decides how much memory its models allocate and how long building them takes, and
diffusers trusts it: huge widths allocate gigabytes, `num_train_timesteps=1e9` hangs, a wrong component type
imports some other class. `check_checkpoint_configs` reads every config of a folder first and refuses, in one
line naming the file and the field, wrong component types, non-numbers where numbers belong and sizes far past
any DD3G model. Only the fields listed here are checked; unknown keys (new fields with defaults) are left to
the model's own constructor, which runs on the meta device (no memory) to count the parameters.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

MAX_CONFIG_BYTES = 1 << 20  # a real config is a few kB; a bigger one is not parsed at all
MAX_PARAMETERS = 2_000_000_000  # 8 GB in float32, about twice the `base` student (0.93 G)
MAX_GAUSSIANS = 1 << 22  # 64x the `base` student's 65,536

# name in model_index.json -> (library, class) diffusers would import for it
COMPONENTS = {
    "student": ("dd3g.models.pepd", "PEPD"),
    "image_encoder": ("dd3g.models.image_tokenizer", "EfficientNetLite0Tokenizer"),
    "scheduler": ("diffusers", "DDIMScheduler"),
}
# components a student of a latent teacher carries; absent or [null, null] otherwise
OPTIONAL_COMPONENTS = {
    "frame_encoder": ("dd3g.models.input_encoders", "LatentFrameEncoder"),
    "prompt_encoder": ("dd3g.models.input_encoders", "ImagePromptEncoder"),
}

Bounds = Dict[str, Tuple[type, float, float]]  # field -> (int or float, lowest, highest), both allowed

PIPELINE_BOUNDS: Bounds = {
    "image_size": (int, 32, 2048),  # preprocess's working copy is 2048 px a side at most
    "foreground_ratio": (float, 0.05, 1.0),
    "elevation_deg": (float, -89.0, 89.0),
    "radius": (float, 0.1, 100.0),
    "fov_deg": (float, 1.0, 170.0),
    "photo_surface_size": (int, 0, 2048),  # 0: off; like image_size, at most preprocess's working copy
}
STUDENT_BOUNDS: Bounds = {
    "num_views": (int, 1, 16),
    "patch_size": (int, 1, 64),
    "gaussians_per_token": (int, 1, 256),
    "width": (int, 1, 8192),
    "num_heads": (int, 1, 256),
    "blocks_before_means": (int, 0, 64),
    "blocks_before_shape": (int, 0, 64),
    "blocks_before_appearance": (int, 0, 64),
    "image_token_dim": (int, 1, 8192),
    "fourier_frequencies": (int, 1, 32),
    "position_bound": (float, 1e-3, 100.0),
    "min_scale": (float, 1e-9, 100.0),
    "max_scale": (float, 1e-9, 100.0),
    "initial_scale": (float, 1e-9, 100.0),
    "initial_opacity": (float, 1e-6, 1 - 1e-6),
    "phase1_timestep": (int, 0, 10_000),
    "phase1_text_tokens": (int, 1, 1024),
}
UNET_BOUNDS: Bounds = {
    "sample_size": (int, 4, 512),
    "in_channels": (int, 1, 64),
    "out_channels": (int, 1, 64),
    "num_frames": (int, 2, 33),
    "layers_per_block": (int, 1, 8),
    "attention_head_dim": (int, 1, 1024),
    "context_dim": (int, 1, 8192),
    "transformer_depth": (int, 0, 16),
    "norm_num_groups": (int, 1, 1024),
    "dropout": (float, 0.0, 1.0),
    # ImageDream's UNet (phase1_architecture "imagedream") names its sizes differently
    "image_size": (int, 4, 512),
    "model_channels": (int, 1, 8192),
    "num_head_channels": (int, 1, 1024),
    "num_res_blocks": (int, 1, 8),
    "ip_dim": (int, 0, 1024),
    "ip_embedding_dim": (int, 1, 8192),
}
UNET_MAX_LEVELS, UNET_MAX_CHANNELS = 8, 8192
ENCODER_BOUNDS: Bounds = {"image_size": (int, 32, 1024)}
FRAME_ENCODER_BOUNDS: Bounds = {
    "image_size": (int, 8, 2048),
    "in_channels": (int, 1, 16),
    "latent_channels": (int, 1, 64),
    "layers_per_block": (int, 1, 8),
    "norm_num_groups": (int, 1, 1024),
    "scaling_factor": (float, 1e-6, 100.0),
}
PROMPT_ENCODER_BOUNDS: Bounds = {"resize": (int, 1, 4096), "crop": (int, 1, 4096), "hidden_state_index": (int, -256, 256)}
VISION_BOUNDS: Bounds = {
    "hidden_size": (int, 1, 8192),
    "intermediate_size": (int, 1, 65536),
    "num_hidden_layers": (int, 1, 128),
    "num_attention_heads": (int, 1, 256),
    "image_size": (int, 8, 2048),
    "patch_size": (int, 1, 512),
}
SCHEDULER_BOUNDS: Bounds = {
    "num_train_timesteps": (int, 2, 10_000),
    "beta_start": (float, 0.0, 1.0),
    "beta_end": (float, 0.0, 1.0),
    "steps_offset": (int, 0, 10_000),
}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")  # what DDIMScheduler implements


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt, out of bounds or holds non-finite weights."""


def check_checkpoint_configs(folder: Path) -> None:
    """Check model_index.json and each component's config in ``folder``. Raises :class:`CheckpointError`."""
    index_file = folder / "model_index.json"
    index = read_config(index_file)
    for name, (library, class_name) in COMPONENTS.items():
        entry = index.get(name)
        if entry != [library, class_name]:
            got = ".".join(map(str, entry)) if isinstance(entry, list) else repr(entry)
            raise CheckpointError(f"{index_file}: {name} must be {library}.{class_name}, got {got}")
    for key, value in index.items():
        if key not in COMPONENTS and key not in OPTIONAL_COMPONENTS and isinstance(value, list) and len(value) == 2:
            raise CheckpointError(f"{index_file}: unexpected component {key!r} ({'.'.join(map(str, value))})")
    for name, (library, class_name) in OPTIONAL_COMPONENTS.items():
        entry = index.get(name)
        if entry is None or entry == [None, None]:
            continue
        if entry != [library, class_name]:
            got = ".".join(map(str, entry)) if isinstance(entry, list) else repr(entry)
            raise CheckpointError(f"{index_file}: {name} must be {library}.{class_name} or null, got {got}")
        check_input_encoder(name, folder / name / "config.json")
    check_bounds(index, PIPELINE_BOUNDS, index_file)

    encoder_file = folder / "image_encoder" / "config.json"
    check_bounds(read_config(encoder_file), ENCODER_BOUNDS, encoder_file)
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    check_scheduler(read_config(scheduler_file), scheduler_file)
    student_file = folder / "student" / "config.json"
    check_student(read_config(student_file), student_file)


def read_config(path: Path) -> Dict[str, Any]:
    try:
        size = path.stat().st_size
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read: {error.strerror or error}") from None
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path} is {size:,} bytes, too large for a config (at most {MAX_CONFIG_BYTES:,})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def check_bounds(config: Dict[str, Any], bounds: Bounds, where: Path, prefix: str = "") -> None:
    """Each field of ``bounds`` present in ``config`` is a finite number of its kind within its range."""
    for key, (kind, low, high) in bounds.items():
        if key not in config:
            continue  # the constructor's default applies
        value = config[key]
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok = is_number and isinstance(value, int) and low <= value <= high
            wanted = f"an integer from {low:,} to {high:,}"
        else:
            ok = is_number and math.isfinite(value) and low <= value <= high
            wanted = f"a number from {low:g} to {high:g}"
        if not ok:
            raise CheckpointError(f"{where}: {prefix}{key} must be {wanted}, got {value!r}")


def check_scheduler(config: Dict[str, Any], where: Path) -> None:
    check_bounds(config, SCHEDULER_BOUNDS, where)
    schedule = config.get("beta_schedule", "linear")
    if schedule not in BETA_SCHEDULES:
        raise CheckpointError(f"{where}: beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {schedule!r}")
    betas = config.get("trained_betas")
    if betas is not None:
        steps = config.get("num_train_timesteps", 1000)
        if not isinstance(betas, list) or len(betas) != steps or not all(_is_number(b) and 0 < b < 1 for b in betas):
            raise CheckpointError(f"{where}: trained_betas must be null or {steps:,} numbers between 0 and 1")


def check_student(config: Dict[str, Any], where: Path) -> None:
    check_bounds(config, STUDENT_BOUNDS, where)
    scales = [config.get(k) for k in ("min_scale", "initial_scale", "max_scale")]
    if all(_is_number(s) for s in scales) and not scales[0] < scales[1] < scales[2]:
        raise CheckpointError(f"{where}: needs min_scale < initial_scale < max_scale, got {scales[0]:g}, {scales[1]:g}, {scales[2]:g}")
    width, heads = config.get("width"), config.get("num_heads")
    if isinstance(width, int) and isinstance(heads, int) and width % heads:
        raise CheckpointError(f"{where}: width {width} is not a multiple of num_heads {heads}")
    unet = config.get("unet_config")
    if unet is not None:
        if not isinstance(unet, dict):
            raise CheckpointError(f"{where}: unet_config must be a JSON object or null, got {type(unet).__name__}")
        check_unet(unet, where)
    elif not isinstance(config.get("unet_preset", "tiny"), str):
        raise CheckpointError(f"{where}: unet_preset must be a preset name, got {config.get('unet_preset')!r}")
    # The constructor itself, on the meta device: it allocates nothing, applies every rule of its own
    # (new fields included) and tells the real size.
    from .models.pepd import PEPD

    try:
        with torch.device("meta"):
            student = PEPD.from_config(config)
    except Exception as error:  # noqa: BLE001 - any refusal of the constructor is a bad config
        raise CheckpointError(f"{where}: the student cannot be built from it: {one_line(error)}") from None
    parameters = sum(t.numel() for t in student.parameters()) + sum(t.numel() for t in student.buffers())
    if parameters > MAX_PARAMETERS:
        raise CheckpointError(f"{where}: the student would have {parameters:,} parameters, more than the limit of {MAX_PARAMETERS:,}")
    if student.num_gaussians > MAX_GAUSSIANS:
        raise CheckpointError(f"{where}: the student would make {student.num_gaussians:,} Gaussians, more than the limit of {MAX_GAUSSIANS:,}")


def check_input_encoder(name: str, where: Path) -> None:
    """A frame_encoder / prompt_encoder config: bounded fields, then its constructor on the meta device."""
    from .models.input_encoders import ImagePromptEncoder, LatentFrameEncoder

    config = read_config(where)
    if name == "frame_encoder":
        check_bounds(config, FRAME_ENCODER_BOUNDS, where)
        channels = config.get("block_out_channels")
        if channels is not None and not (
            isinstance(channels, list) and 1 <= len(channels) <= UNET_MAX_LEVELS
            and all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= UNET_MAX_CHANNELS for c in channels)
        ):
            raise CheckpointError(f"{where}: block_out_channels must be 1 to {UNET_MAX_LEVELS} integers from 1 to {UNET_MAX_CHANNELS:,}, got {channels!r}")
        model_class = LatentFrameEncoder
    else:
        check_bounds(config, PROMPT_ENCODER_BOUNDS, where)
        vision = config.get("vision_config")
        if not isinstance(vision, dict):
            raise CheckpointError(f"{where}: vision_config must be a JSON object, got {type(vision).__name__}")
        check_bounds(vision, VISION_BOUNDS, where, prefix="vision_config.")
        model_class = ImagePromptEncoder
    try:
        with torch.device("meta"):
            model = model_class.from_config(config)
    except Exception as error:  # noqa: BLE001 - any refusal of the constructor is a bad config
        raise CheckpointError(f"{where}: the {name} cannot be built from it: {one_line(error)}") from None
    parameters = sum(t.numel() for t in model.parameters())
    if parameters > MAX_PARAMETERS:
        raise CheckpointError(f"{where}: the {name} would have {parameters:,} parameters, more than the limit of {MAX_PARAMETERS:,}")


def check_unet(unet: Dict[str, Any], where: Path) -> None:
    check_bounds(unet, UNET_BOUNDS, where, prefix="unet_config.")
    channels = unet.get("block_out_channels")
    if channels is not None and not (
        isinstance(channels, list) and 1 <= len(channels) <= UNET_MAX_LEVELS
        and all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= UNET_MAX_CHANNELS for c in channels)
    ):
        raise CheckpointError(
            f"{where}: unet_config.block_out_channels must be 1 to {UNET_MAX_LEVELS} integers from 1 to {UNET_MAX_CHANNELS:,}, got {channels!r}"
        )
    levels = unet.get("attention_levels")
    if levels is not None and not (isinstance(levels, list) and all(isinstance(x, bool) for x in levels)):
        raise CheckpointError(f"{where}: unet_config.attention_levels must be a list of true/false, got {levels!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
