"""A tiny, randomly initialised ImageDream checkpoint in the published diffusers layout.

`write_tiny_imagedream(path)` writes what `huggingface-cli download ashawkey/imagedream-ipmv-diffusers`
gives (minus its `*.py` files, which are never executed): the same folders, the same `model_index.json`, the
same config field names, fp16 safetensors weights, only tiny sizes. The config files are written by hand with
the field sets the 2024 conversion produced (ashawkey/mvdream_diffusers `convert_mvdream_to_diffusers.py`,
diffusers 0.25 / transformers 4.36), so loading them also checks that today's libraries read them.

`published_unet_shapes(config)` enumerates ImageDream's UNet state dict (names and shapes) from its config
the way `openaimodel.MultiViewUNetModel.__init__` numbers its blocks, written out as strings here,
independently of `dd3g.teachers.imagedream.ImageDreamUNet`'s module tree. The tiny UNet weights are drawn
from this enumeration, so a strict load proves the module names match it.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import torch
from safetensors.torch import save_file

# unet/config.json of the published checkpoint: ImageDream's sd_v2_base_ipmv.yaml unet params minus the
# fields the converter pops (legacy, use_linear_in_transformer, use_spatial_transformer, ip_mode, with_ip).
PUBLISHED_UNET_CONFIG = {
    "_class_name": "MultiViewUNetModel",
    "_diffusers_version": "0.25.0",
    "attention_resolutions": [4, 2, 1],
    "camera_dim": 16,
    "channel_mult": [1, 2, 4, 4],
    "context_dim": 1024,
    "image_size": 32,
    "in_channels": 4,
    "ip_dim": 16,
    "model_channels": 320,
    "num_head_channels": 64,
    "num_res_blocks": 2,
    "out_channels": 4,
    "transformer_depth": 1,
    "use_checkpoint": False,
}
# Published code constants of the resampler (not in the config): CLIP ViT-H width, depth, heads x dim_head.
PUBLISHED_RESAMPLER = dict(embedding_dim=1280, depth=4, heads=12, dim_head=64)

TINY_UNET_CONFIG = {
    **PUBLISHED_UNET_CONFIG,
    "attention_resolutions": [2, 1],  # attention at the first two levels, none at the last (as 4, 2, 1 of 4 levels)
    "channel_mult": [1, 2, 2],
    "context_dim": 32,
    "image_size": 8,  # latents 8 x 8 -> 64 px through the 4-level VAE
    "ip_dim": 4,
    "model_channels": 32,  # GroupNorm(32, .) is hard-coded in ImageDream: channels stay multiples of 32
    "num_head_channels": 16,
    "num_res_blocks": 1,
}
TINY_RESAMPLER = dict(embedding_dim=48, depth=2, heads=12, dim_head=64)  # heads x dim_head: the published constants

MODEL_INDEX = {
    "_class_name": ["pipeline_mvdream", "MVDreamPipeline"],
    "_diffusers_version": "0.25.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModel"],
    "requires_safety_checker": False,
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["mv_unet", "MultiViewUNetModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.25.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_spacing": "leading",
    "trained_betas": None,
}

# SD-2.1 VAE config as diffusers 0.25 saves it; tiny: narrower blocks, one layer per block.
TINY_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.25.0",
    "act_fn": "silu",
    "block_out_channels": [8, 8, 16, 16],  # real: [128, 256, 512, 512]
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,  # real: 2
    "norm_num_groups": 4,  # real: 32
    "out_channels": 3,
    "sample_size": 64,  # real: 256
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# SD-2.1's text encoder (OpenCLIP ViT-H text tower, 23 layers = penultimate), tiny widths.
TINY_TEXT_CONFIG = {
    "_name_or_path": "stabilityai/stable-diffusion-2-1",
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 32,  # real: 1024 (= unet context_dim)
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 64,  # real: 4096
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 2,  # real: 16
    "num_hidden_layers": 2,  # real: 23
    "pad_token_id": 1,
    "projection_dim": 16,  # real: 512
    "torch_dtype": "float16",
    "transformers_version": "4.36.2",
    "vocab_size": None,  # set from the toy vocabulary (real: 49408)
}

# OpenCLIP ViT-H/14 vision tower as CLIPVisionModel, tiny.
TINY_VISION_CONFIG = {
    "_name_or_path": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "architectures": ["CLIPVisionModel"],
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "gelu",
    "hidden_size": 48,  # real: 1280 (= the resampler's embedding_dim)
    "image_size": 32,  # real: 224
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 96,  # real: 5120
    "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model",
    "num_attention_heads": 2,  # real: 16
    "num_channels": 3,
    "num_hidden_layers": 2,  # real: 32
    "patch_size": 8,  # real: 14
    "projection_dim": 16,  # real: 1024
    "torch_dtype": "float16",
    "transformers_version": "4.36.2",
}

TINY_PREPROCESSOR_CONFIG = {
    "crop_size": {"height": 32, "width": 32},  # real: 224
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 32},  # real: 224
}

TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": "<|startoftext|>",
    "clean_up_tokenization_spaces": True,
    "do_lower_case": True,
    "eos_token": "<|endoftext|>",
    "errors": "replace",
    "model_max_length": 77,
    "pad_token": "!",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": "<|endoftext|>",
}
SPECIAL_TOKENS_MAP = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "pad_token": "!",
    "unk_token": "<|endoftext|>",
}
TOY_MERGES = ["u n", "t e", "r e", "o r", "i n"]


def toy_vocab() -> dict:
    """Byte-level BPE vocabulary of CLIP's form: letters and a little punctuation, each alone and word-final."""
    symbols = ["!"] + list(string.ascii_lowercase) + [",", "."]
    vocab = {}
    for suffix in ("", "</w>"):
        for symbol in symbols:
            vocab[symbol + suffix] = len(vocab)
    for merge in TOY_MERGES:
        a, b = merge.split()
        for suffix in ("", "</w>"):
            vocab[a + b + suffix] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def published_unet_shapes(
    config: dict, embedding_dim: int = 1280, depth: int = 4, heads: int = 12, dim_head: int = 64
) -> dict:
    """ImageDream UNet parameter names -> shapes, numbered as openaimodel.MultiViewUNetModel numbers them."""
    shapes = {}
    mc, ctx, nhc = config["model_channels"], config["context_dim"], config["num_head_channels"]
    emb = 4 * mc
    ip_dim, cam = config["ip_dim"], config["camera_dim"]

    def linear(name, fan_in, fan_out, bias=True):
        shapes[f"{name}.weight"] = (fan_out, fan_in)
        if bias:
            shapes[f"{name}.bias"] = (fan_out,)

    def conv(name, fan_in, fan_out, kernel):
        shapes[f"{name}.weight"] = (fan_out, fan_in, kernel, kernel)
        shapes[f"{name}.bias"] = (fan_out,)

    def norm(name, channels):
        shapes[f"{name}.weight"] = (channels,)
        shapes[f"{name}.bias"] = (channels,)

    def resblock(name, cin, cout):
        norm(f"{name}.in_layers.0", cin)
        conv(f"{name}.in_layers.2", cin, cout, 3)
        linear(f"{name}.emb_layers.1", emb, cout)
        norm(f"{name}.out_layers.0", cout)
        conv(f"{name}.out_layers.3", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.skip_connection", cin, cout, 1)

    def transformer(name, ch):
        inner = (ch // nhc) * nhc
        norm(f"{name}.norm", ch)
        linear(f"{name}.proj_in", ch, inner)
        for d in range(config["transformer_depth"]):
            block = f"{name}.transformer_blocks.{d}"
            for attn, kv_dim in (("attn1", inner), ("attn2", ctx)):
                linear(f"{block}.{attn}.to_q", inner, inner, bias=False)
                linear(f"{block}.{attn}.to_k", kv_dim, inner, bias=False)
                linear(f"{block}.{attn}.to_v", kv_dim, inner, bias=False)
                if attn == "attn2" and ip_dim > 0:
                    linear(f"{block}.attn2.to_k_ip", ctx, inner, bias=False)
                    linear(f"{block}.attn2.to_v_ip", ctx, inner, bias=False)
                linear(f"{block}.{attn}.to_out.0", inner, inner)
            linear(f"{block}.ff.net.0.proj", inner, 8 * inner)
            linear(f"{block}.ff.net.2", 4 * inner, inner)
            for i in (1, 2, 3):
                norm(f"{block}.norm{i}", inner)
        linear(f"{name}.proj_out", inner, ch)  # the published code declares Linear(in_channels, inner): same shape

    linear("time_embed.0", mc, emb)
    linear("time_embed.2", emb, emb)
    if cam is not None:
        linear("camera_embed.0", cam, emb)
        linear("camera_embed.2", emb, emb)
    if ip_dim > 0:
        inner = heads * dim_head
        shapes["image_embed.latents"] = (1, ip_dim, ctx)
        linear("image_embed.proj_in", embedding_dim, ctx)
        linear("image_embed.proj_out", ctx, ctx)
        norm("image_embed.norm_out", ctx)
        for i in range(depth):
            layer = f"image_embed.layers.{i}"
            norm(f"{layer}.0.norm1", ctx)
            norm(f"{layer}.0.norm2", ctx)
            linear(f"{layer}.0.to_q", ctx, inner, bias=False)
            linear(f"{layer}.0.to_kv", ctx, 2 * inner, bias=False)
            linear(f"{layer}.0.to_out", inner, ctx, bias=False)
            norm(f"{layer}.1.0", ctx)
            linear(f"{layer}.1.1", ctx, 4 * ctx, bias=False)
            linear(f"{layer}.1.3", 4 * ctx, ctx, bias=False)

    conv("input_blocks.0.0", config["in_channels"], mc, 3)
    skips, ch, ds, index = [mc], mc, 1, 1
    mults = config["channel_mult"]
    for level, mult in enumerate(mults):
        for _ in range(config["num_res_blocks"]):
            resblock(f"input_blocks.{index}.0", ch, mult * mc)
            ch = mult * mc
            if ds in config["attention_resolutions"]:
                transformer(f"input_blocks.{index}.1", ch)
            skips.append(ch)
            index += 1
        if level != len(mults) - 1:
            conv(f"input_blocks.{index}.0.op", ch, ch, 3)
            skips.append(ch)
            index += 1
            ds *= 2
    resblock("middle_block.0", ch, ch)
    transformer("middle_block.1", ch)
    resblock("middle_block.2", ch, ch)
    index = 0
    for level in reversed(range(len(mults))):
        for i in range(config["num_res_blocks"] + 1):
            resblock(f"output_blocks.{index}.0", ch + skips.pop(), mults[level] * mc)
            ch = mults[level] * mc
            slot = 1
            if ds in config["attention_resolutions"]:
                transformer(f"output_blocks.{index}.1", ch)
                slot = 2
            if level and i == config["num_res_blocks"]:
                conv(f"output_blocks.{index}.{slot}.conv", ch, ch, 3)
                ds //= 2
            index += 1
    norm("out.0", mc)
    conv("out.2", mc, config["out_channels"], 3)
    return shapes


def _random_state(shapes: dict, generator: torch.Generator) -> dict:
    """Random weights that keep activations O(1): norms near 1, small biases, fan-in scaled matrices."""
    state = {}
    for name, shape in shapes.items():
        if name.endswith(".bias"):
            tensor = 0.02 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:
            tensor = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        else:
            fan_in = math.prod(shape[1:]) if name != "image_embed.latents" else shape[-1]
            tensor = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        state[name] = tensor.to(torch.float16)
    return state


def _model_kwargs(config: dict) -> dict:
    """A transformers config.json dict without the keys its config class does not take."""
    skip = ("architectures", "torch_dtype", "transformers_version", "model_type")
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in skip}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _save(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"}
    )



# The published sizes (SD-2.1 VAE, OpenCLIP ViT-H towers): random weights at full size, for benchmarks.
FULL_VAE_CONFIG = {**TINY_VAE_CONFIG, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 256}
FULL_TEXT_CONFIG = {**TINY_TEXT_CONFIG, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 23, "projection_dim": 512}
FULL_VISION_CONFIG = {**TINY_VISION_CONFIG, "hidden_size": 1280, "image_size": 224, "intermediate_size": 5120, "num_attention_heads": 16, "num_hidden_layers": 32, "patch_size": 14, "projection_dim": 1024}
FULL_PREPROCESSOR_CONFIG = {**TINY_PREPROCESSOR_CONFIG, "crop_size": {"height": 224, "width": 224}, "size": {"shortest_edge": 224}}

def write_tiny_imagedream(path, seed: int = 0, full_size: bool = False) -> Path:
    """Write the tiny checkpoint into folder `path` (created) and return it.

    full_size=True writes the published sizes with random weights instead (GBs; for GPU benchmarks).
    """
    unet_config, resampler = (PUBLISHED_UNET_CONFIG, PUBLISHED_RESAMPLER) if full_size else (TINY_UNET_CONFIG, TINY_RESAMPLER)
    vae_config = FULL_VAE_CONFIG if full_size else TINY_VAE_CONFIG
    base_text_config = FULL_TEXT_CONFIG if full_size else TINY_TEXT_CONFIG
    vision_config = FULL_VISION_CONFIG if full_size else TINY_VISION_CONFIG
    preprocessor_config = FULL_PREPROCESSOR_CONFIG if full_size else TINY_PREPROCESSOR_CONFIG
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the library models below draw their init from the global generator
    _write_json(root / "model_index.json", MODEL_INDEX)

    _write_json(root / "unet" / "config.json", unet_config)
    shapes = published_unet_shapes(unet_config, **resampler)
    _save(_random_state(shapes, generator), root / "unet" / "diffusion_pytorch_model.safetensors")

    _write_json(root / "vae" / "config.json", vae_config)
    vae = AutoencoderKL(**{k: v for k, v in vae_config.items() if not k.startswith("_")})
    _save(vae.state_dict(), root / "vae" / "diffusion_pytorch_model.safetensors")

    vocab = toy_vocab()
    tokenizer_dir = root / "tokenizer"
    _write_json(tokenizer_dir / "vocab.json", vocab)
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(TOY_MERGES) + "\n")
    _write_json(tokenizer_dir / "tokenizer_config.json", TOKENIZER_CONFIG)
    _write_json(tokenizer_dir / "special_tokens_map.json", SPECIAL_TOKENS_MAP)

    text_config = {**base_text_config, "vocab_size": len(vocab)}
    _write_json(root / "text_encoder" / "config.json", text_config)
    text_model = CLIPTextModel(CLIPTextConfig(**_model_kwargs(text_config)))
    _save(text_model.state_dict(), root / "text_encoder" / "model.safetensors")

    _write_json(root / "image_encoder" / "config.json", vision_config)
    vision_model = CLIPVisionModel(CLIPVisionConfig(**_model_kwargs(vision_config)))
    _save(vision_model.state_dict(), root / "image_encoder" / "model.safetensors")

    _write_json(root / "feature_extractor" / "preprocessor_config.json", preprocessor_config)
    _write_json(root / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    return root
