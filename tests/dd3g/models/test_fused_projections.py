"""Stacked attention projections (dd3g.models.fused_projections): the same outputs in fewer matmuls, for the
tiny teacher's UNet, ImageDream's UNet (with its image-prompt pair) and both students; checkpoints unchanged;
training refused while fused. CPU, a few seconds."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dd3g.cameras import ViewLayout
from dd3g.models.fused_projections import fuse_qkv_projections, stack_weights, unfuse_qkv_projections
from dd3g.models.imagedream_unet import CrossAttention
from dd3g.models.mv_unet import Attention, MultiViewUNet, ResBlock
from dd3g.testing import imagedream_parts, randomize_zero_layers, toy_student

MATMULS = {"mm", "addmm", "bmm"}


class MatmulCounter(TorchDispatchMode):
    """Counts the matmul kernels ATen runs (what a GPU launches one kernel for each)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in MATMULS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def run_counted(fn):
    with torch.no_grad(), MatmulCounter() as counter:
        out = fn()
    return out, counter.count


def unet_call(model: MultiViewUNet, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg, size = model.config, model.config.sample_size
    sample = torch.randn(1, cfg.num_frames, cfg.in_channels, size, size, generator=g)  # [B, F, C, H, W]
    camera = torch.randn(1, cfg.num_frames, 6, size, size, generator=g)  # [B, F, 6, H, W] Plücker-shaped
    context = torch.randn(1, 7, cfg.context_dim, generator=g)  # [B, L, D]
    return lambda: model(sample, torch.tensor([500]), camera, context).sample


def attention_layers(model, kind):
    """(self-attention layers, cross-attention layers) of `model`: its blocks' attn1 and attn2."""
    named = [(name, m) for name, m in model.named_modules() if isinstance(m, kind)]
    assert all(name.endswith(("attn1", "attn2")) for name, _ in named)
    return [m for name, m in named if name.endswith("attn1")], [m for name, m in named if name.endswith("attn2")]


@pytest.fixture()
def toy_unet():
    torch.manual_seed(0)
    unet = MultiViewUNet.preset("tiny", sample_size=16)
    randomize_zero_layers(unet)
    return unet.eval()


def test_stacked_unet_gives_the_same_output_in_fewer_matmuls(toy_unet):
    keys = set(toy_unet.state_dict())
    call = unet_call(toy_unet)
    before, matmuls_before = run_counted(call)
    self_attention, cross_attention = attention_layers(toy_unet, Attention)
    assert self_attention and cross_attention

    assert fuse_qkv_projections(toy_unet) == len(self_attention) + len(cross_attention)
    after, matmuls_after = run_counted(call)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    # q, k, v: three matmuls -> one in self-attention; every cross-attention's k and v, and every ResBlock's
    # time-embedding projection, read one tensor: one matmul each for the whole UNet
    resnets = [m for m in toy_unet.modules() if isinstance(m, ResBlock)]
    assert matmuls_after == matmuls_before - 2 * len(self_attention) - (2 * len(cross_attention) - 1) - (len(resnets) - 1)
    assert set(toy_unet.state_dict()) == keys  # the stacked copies are not part of a checkpoint

    assert unfuse_qkv_projections(toy_unet) == len(self_attention) + len(cross_attention)
    again, matmuls_again = run_counted(call)
    assert matmuls_again == matmuls_before
    torch.testing.assert_close(again, before, rtol=0, atol=0)


def test_a_unet_without_attention_stacks_its_time_embedding_projections_only():
    torch.manual_seed(0)
    unet = MultiViewUNet.preset("tiny", sample_size=16, attention_levels=(False,) * 4, mid_block_attention=False)
    randomize_zero_layers(unet)
    call = unet_call(unet.eval())
    before, matmuls_before = run_counted(call)
    assert fuse_qkv_projections(unet) == 0 and unet.conditioning_stacked
    after, matmuls_after = run_counted(call)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert matmuls_after == matmuls_before - (sum(isinstance(m, ResBlock) for m in unet.modules()) - 1)


def test_weights_loaded_into_a_fused_model_are_used(toy_unet):
    torch.manual_seed(1)
    other = MultiViewUNet.preset("tiny", sample_size=16)
    randomize_zero_layers(other)
    with torch.no_grad():
        expected = unet_call(other.eval())()
    fuse_qkv_projections(toy_unet)
    toy_unet.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(unet_call(toy_unet)(), expected, rtol=1e-5, atol=1e-5)


def test_self_attention_layer_given_a_context_of_its_width():
    torch.manual_seed(0)
    layer = Attention(16, heads=2, head_dim=8).eval()
    x, context = torch.randn(2, 5, 16), torch.randn(2, 3, 16)  # [B, T, D], [B, M, D]
    with torch.no_grad():
        expected = (layer(x), layer(x, context))
        layer.fuse_qkv_projections()
        got = (layer(x), layer(x, context))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_imagedream_unet_stacks_its_image_prompt_pair_too():
    student, _, _ = imagedream_parts("base-small")
    unet = student.unet
    randomize_zero_layers(unet)
    self_attention, cross_attention = attention_layers(unet, CrossAttention)
    with_prompt = [m for m in cross_attention if m.ip_dim > 0]
    assert with_prompt
    g = torch.Generator().manual_seed(0)
    cfg, size = unet.config, unet.config.image_size
    sample = torch.randn(1, 5, cfg.in_channels, size, size, generator=g)  # [B, F, C, H, W]
    camera = torch.randn(1, 5, cfg.camera_dim, generator=g)  # [B, F, 16]
    context = torch.randn(1, 77 + cfg.ip_dim, cfg.context_dim, generator=g)  # [B, text + image-prompt tokens, D]

    def call():
        return unet(sample, torch.tensor([500]), camera, context)

    before, matmuls_before = run_counted(call)
    fuse_qkv_projections(unet)
    assert all("fused_kv_ip_weight" in m._buffers for m in with_prompt)
    after, matmuls_after = run_counted(call)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    # self: 3 -> 1; cross: k, v 2 -> 1 (q reads other tokens); image prompt: k_ip, v_ip 2 -> 1
    saved = 2 * len(self_attention) + len(cross_attention) + len(with_prompt)
    assert matmuls_after == matmuls_before - saved


def test_student_gaussians_unchanged_and_follow_dtype():
    student = toy_student()
    b = 1
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(b, *student.noise_shape, generator=g)
    frame = torch.rand(b, student.unet.config.in_channels, student.sample_size, student.sample_size, generator=g)
    cameras = ViewLayout().cameras(student.sample_size, student.sample_size, include_input=True).expand(b)
    tokens = torch.randn(b, 49, student.config.image_token_dim, generator=g)

    def means():
        with torch.no_grad():
            return student(noise.to(student.dtype), frame.to(student.dtype), cameras, tokens.to(student.dtype)).gaussians.means

    expected = means()
    fuse_qkv_projections(student)
    torch.testing.assert_close(means(), expected, rtol=1e-5, atol=1e-6)
    student.to(torch.bfloat16)  # the stacked copies are buffers: they follow the model
    fused_bf16 = means()
    unfuse_qkv_projections(student)
    torch.testing.assert_close(fused_bf16, means(), rtol=2e-2, atol=2e-2)


def test_training_a_fused_model_is_refused_until_unfused(toy_unet):
    fuse_qkv_projections(toy_unet)
    toy_unet.train()
    with pytest.raises(RuntimeError, match="unfuse_qkv_projections"):
        unet_call(toy_unet)()
    unfuse_qkv_projections(toy_unet)
    unet_call(toy_unet)().sum().backward()
    assert toy_unet.conv_in.weight.grad is not None


def test_only_bias_free_layers_of_one_width_stack():
    with pytest.raises(ValueError, match="bias-free"):
        stack_weights([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4, bias=False)])
    with pytest.raises(ValueError, match="one width"):
        stack_weights([torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(8, 4, bias=False)])
