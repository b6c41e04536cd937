"""Reading ImageDream's published diffusers folder: which parts it must hold, their safetensors weights (never
pickles), the UNet rebuilt and loaded strictly, and the settings the other parts' configs give."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

from ...models.imagedream_unet import ImageDreamUNet

#: The parts of the published layout and the classes model_index.json may name for them.
PARTS = {
    "unet": ("MultiViewUNetModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "image_encoder": ("CLIPVisionModel", "CLIPVisionModelWithProjection"),
    "feature_extractor": ("CLIPImageProcessor", "CLIPFeatureExtractor"),
    "scheduler": ("DDIMScheduler",),
}

# Weight-file stems of each part: diffusers models use diffusion_pytorch_model, transformers models model.
WEIGHT_STEMS = {
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
    "image_encoder": "model",
}
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{what}: {path} is not valid JSON ({error})") from None


def safetensors_files(folder: Path, part: str) -> tuple[list[Path], Optional[str]]:
    """The part's safetensors weight files and their variant ("fp16" or None); a clear error otherwise."""
    stem = WEIGHT_STEMS[part]
    for variant in (None, "fp16"):
        name = stem + (f".{variant}" if variant else "") + ".safetensors"
        if (folder / name).is_file():
            return [folder / name], variant
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(read_json(index, f"{part} weight index").get("weight_map", {}).values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing or not shards:
                raise FileNotFoundError(
                    f"part {part!r}: shards {missing or '(none listed)'} of {index.name} are missing in {folder}"
                )
            return [folder / s for s in shards], variant
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"part {part!r}: only pickle weights {pickles} in {folder}; they are never unpickled here. "
            f"Download the safetensors files ({stem}.safetensors) or convert them elsewhere."
        )
    raise FileNotFoundError(f"part {part!r}: no {stem}.safetensors (or fp16 variant / sharded index) in {folder}")


def load_safetensors(files: list[Path]) -> dict:
    from safetensors.torch import load_file

    state = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def resampler_sizes(state: dict) -> dict:
    """The resampler constants the published config leaves out, read off the weight shapes."""
    if "image_embed.proj_in.weight" not in state:
        return {}
    depth = len({key.split(".")[2] for key in state if key.startswith("image_embed.layers.")})
    inner = state["image_embed.layers.0.0.to_q.weight"].shape[0] if depth else 12 * 64
    dim_head = 64 if inner % 64 == 0 else inner
    return dict(
        ip_embedding_dim=int(state["image_embed.proj_in.weight"].shape[1]),
        ip_resampler_depth=depth,
        ip_resampler_heads=inner // dim_head,
        ip_resampler_dim_head=dim_head,
    )


def load_imagedream_unet(folder: Union[str, Path], dtype: torch.dtype = torch.float32) -> ImageDreamUNet:
    """unet/ of the published layout -> ImageDreamUNet with every weight loaded (strict)."""
    folder = Path(folder)
    config = read_json(folder / "config.json", "part 'unet'")
    files, _ = safetensors_files(folder, "unet")
    state = load_safetensors(files)
    with torch.device("meta"):
        unet = ImageDreamUNet.from_published_config(config, **resampler_sizes(state))
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"part 'unet': the weights do not match ImageDream's MultiViewUNetModel built from config.json: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    bad = [k for k in expected if expected[k].shape != state[k].shape]
    if bad:
        raise ValueError(
            f"part 'unet': shape mismatch for {bad[:3]} (e.g. {bad[0]}: checkpoint "
            f"{tuple(state[bad[0]].shape)} vs model {tuple(expected[bad[0]].shape)})"
        )
    unet.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return unet.eval().requires_grad_(False)


def clip_preprocess_settings(config: dict) -> dict:
    """CLIPImageProcessor's preprocessor_config.json -> resize / crop sizes, mean and std."""

    def side(value, key):
        if isinstance(value, dict):
            return int(value.get(key) or value.get("height"))
        return int(value)

    return dict(
        resize=side(config.get("size", 224), "shortest_edge") if config.get("do_resize", True) else None,
        crop=side(config.get("crop_size", 224), "height") if config.get("do_center_crop", True) else None,
        mean=(
            config.get("image_mean", [0.48145466, 0.4578275, 0.40821073]) if config.get("do_normalize", True) else None
        ),
        std=config.get("image_std", [0.26862954, 0.26130258, 0.27577711]),
    )


def vae_dtype(dtype: torch.dtype, vae_config) -> torch.dtype:
    """The VAE stays float32 under float16 when its config says `force_upcast` (as diffusers pipelines do)."""
    force = (
        vae_config.get("force_upcast", False)
        if isinstance(vae_config, dict)
        else getattr(vae_config, "force_upcast", False)
    )
    return torch.float32 if dtype == torch.float16 and force else dtype
