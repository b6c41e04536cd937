"""ImageDream as a DD3G teacher (the `base` scale of docs/design.md section 2), loaded from a local folder.

ImageDream (Wang & Shi, arXiv 2312.02201) is an image-prompt multi-view diffusion model built on
SD-2.1-base: 4 views of 256 x 256 RGB, latents 4 x 32 x 32 per view, plus the input image as a 5th
"pixel-controller" frame. This module loads its published diffusers layout and drives it through the
shared `MultiViewTeacher` interface (deterministic DDIM simulation, SDS-form verification).

Pointing it at the real weights
-------------------------------
Nothing here downloads. On a machine with network access::

    huggingface-cli download ashawkey/imagedream-ipmv-diffusers --local-dir DIR \\
        --include "*.json" "*.txt" "*.safetensors"

(the weights are fp16 safetensors; the repository's `*.py` files are never needed nor executed), copy DIR to
where the code runs, then::

    teacher = ImageDreamTeacher.from_pretrained(DIR, device="cuda", dtype=torch.float16)
    result = teacher.simulate(images, seeds=[0])   # images [B, 4, S, S] RGBA in [0, 1]

The folder must hold `model_index.json` and the parts `unet/`, `vae/`, `text_encoder/`, `tokenizer/`,
`image_encoder/`, `feature_extractor/`, `scheduler/`. Each part is loaded here, from safetensors only (no
`trust_remote_code`, no unpickling); a missing part or a pickle-only part gives an error naming it.

What each part is
-----------------
* `unet`: ImageDream's own `MultiViewUNetModel` (not a diffusers class). `ImageDreamUNet` (dd3g.models.imagedream_unet) rebuilds it
  with the exact module tree of the published code (bytedance/ImageDream `openaimodel.py`, mirrored by
  ashawkey/mvdream_diffusers `mv_unet.py`), so the published state dict loads with `strict=True`. Its
  `config.json` holds the fields of ImageDream's `sd_v2_base_ipmv.yaml` (`image_size`, `in_channels`,
  `out_channels`, `model_channels`, `attention_resolutions`, `num_res_blocks`, `channel_mult`,
  `num_head_channels`, `transformer_depth`, `context_dim`, `use_checkpoint`, `camera_dim`, `ip_dim`). The
  image-prompt resampler's sizes are hard-coded in the published code (CLIP width 1280, 4 layers, 12 heads
  of 64); here they are read off the weight shapes instead, so a scaled-down checkpoint loads too.
* `vae`: diffusers `AutoencoderKL` (SD-2.1 VAE, `scaling_factor` 0.18215 from its config). Asked for
  float16, it stays float32 when its config sets `force_upcast` (as diffusers' pipelines keep it).
* `text_encoder` + `tokenizer`: transformers `CLIPTextModel` (OpenCLIP ViT-H text tower, penultimate layer,
  as SD 2.1 ships it) + `CLIPTokenizer`; its last hidden state is the 77-token text context.
* `image_encoder` + `feature_extractor`: transformers `CLIPVisionModel` (OpenCLIP ViT-H/14) + the
  `CLIPImageProcessor` settings; the image prompt is the *penultimate* layer's 257 tokens, turned into
  `ip_dim` (16) tokens by the UNet's resampler and attended through `to_k_ip` / `to_v_ip`.
* `scheduler`: DDIM settings (scaled-linear betas 0.00085..0.012, 1000 steps, epsilon prediction).

Conventions and choices (read these before trusting numbers)
------------------------------------------------------------
* Prompt: empty (`prompt=""`, as LGM uses ImageDream). Negative prompt of the unconditional CFG branch:
  ImageDream's own demo sentence (`IMAGEDREAM_NEGATIVE_PROMPT`); pass `negative_prompt=""` to get the
  diffusers port's / LGM's behaviour instead.
* Unconditional branch, as ImageDream's samplers build it: negative-prompt text tokens, an all-zero CLIP
  image embedding (still passed through the resampler, so its 16 tokens are *not* zero) and an all-zero
  input-frame latent.
* Input image: ImageDream is RGB. RGBA inputs and renders are composited on white first (what LGM feeds
  it), then resized to the teacher resolution. The input-frame latent is the VAE posterior *mean* (the
  published samplers draw one sample from it; the mean keeps (N, C, II) -> OI a function). The CLIP
  preprocessing (shortest-edge bicubic resize, centre crop, mean/std) runs in torch on the float image, so
  it skips the processor's uint8 rounding. Both go through `dd3g.student_inputs` and the encoders of
  `dd3g.models.input_encoders` (`frame_encoder`, `prompt_encoder`, sharing this teacher's VAE and CLIP modules),
  the code a distilled student's pipeline runs too.
* Timesteps: ImageDream gives the clean input frame the *same* timestep as the noisy views (its DDIM
  sampler and the diffusers port pass one t for all 5 frames). `denoise` therefore overwrites the shared
  machinery's t = 0 for the last frame with the views' t (`input_frame_timestep="views"`); set
  `input_frame_timestep="given"` to pass the per-frame timesteps unchanged.
* Cameras: our OpenCV world-to-camera matrices are converted at the edge to ImageDream's vectors
  (`imagedream_camera_vectors`): camera-to-world with OpenGL camera axes, camera centre on the unit
  sphere, world turned to Blender's Z-up (`flip_yz @ c2w`), flattened row-major; the input frame gets
  ImageDream's all-zero camera. Our orbit convention (azimuth 0 on +Z, 90 on +X, +Y up) is MVDream's, so
  the canonical layout gives exactly ImageDream's `get_camera(4, elevation, extra_view=True)`.
* Layout: ImageDream never sees intrinsics or the orbit radius (it normalises them away). Renders of the
  student must still frame the object as ImageDream does; the default layout uses LGM's values for
  ImageDream/MVDream outputs (orbit radius 1.5, vertical fov 49.1 degrees). Override with `layout=`.
* Alpha: ImageDream has no alpha channel. `decode` estimates it from the distance to the white background:
  d = 1 - min over RGB, smoothed by a 3x3 box filter, mapped to alpha by a linear ramp between
  `alpha_thresholds` (default 0.02 .. 0.08, i.e. ~5/255 .. 20/255); the colour is un-composited from white
  (c = 1 - (1 - rgb) / alpha), so compositing the RGBA on white gives the decoded image back wherever
  alpha > 0. White or near-white object parts come out transparent: that is the limitation.
* Sampler: the shared machinery's DDIM (eta 0, *trailing* spacing, first step at t = 999). ImageDream's
  and the diffusers port's samplers use *leading* spacing with `steps_offset` 1 (first step at t = 967 for
  30 steps): trajectories differ from theirs though the model and guidance are the same.
"""

from ...models.imagedream_unet import ImageDreamUNet, imagedream_camera_vectors
from .checkpoint import PARTS, load_imagedream_unet
from .alpha import alpha_from_white
from .teacher import IMAGEDREAM_LAYOUT, IMAGEDREAM_NEGATIVE_PROMPT, ImageDreamTeacher

__all__ = ["IMAGEDREAM_LAYOUT", "IMAGEDREAM_NEGATIVE_PROMPT", "PARTS", "ImageDreamTeacher", "ImageDreamUNet", "alpha_from_white",
           "imagedream_camera_vectors", "load_imagedream_unet"]
