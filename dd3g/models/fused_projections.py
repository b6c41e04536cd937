"""Attention's key/value (and query) projections stacked into one matmul, for inference.

An attention layer projects its input three times (to_q, to_k, to_v). Where the projections read the same tensor,
one matmul with their weights stacked does the same work in one kernel instead of two or three, and a wider one:
at batch 1 many of the student's matmuls are too small to fill a GPU, so the stacked one costs little more than
one of them. Self-attention stacks q, k and v; cross-attention, whose query reads another tensor (and width) than
its keys, stacks k and v; ImageDream's image-prompt keys and values (to_k_ip, to_v_ip) are one more pair. The
multi-view UNet goes one step further (`MultiViewUNet.stack_conditioning_projections`): all its cross-attention
layers project the same context, and all its ResBlocks the same time embedding, so each of the two groups becomes one
matmul per forward, whose rows each block reads (in the `base` student: 259 matmuls -> 175).

The separate layers stay the model's parameters, so checkpoints keep their names and training its gradients. The
stacked copy is a non-persistent buffer: `fuse_qkv_projections(model)` makes it (it follows the model's `.to()` and
is stacked again when `load_state_dict` loads new weights), `unfuse_qkv_projections(model)` drops it. A fused layer
refuses to run in training mode, where its copy would go stale as the parameters change; so would it after the
weights are edited in place, which calls for fusing again.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

FUSED_QKV = "fused_qkv_weight"  # [rows of to_q + to_k + to_v, D]: q, k and v read one width
FUSED_KV = "fused_kv_weight"  # [rows of to_k + to_v, D_ctx]: q reads another width than k and v


def refuse_training(module: nn.Module) -> None:
    """A module running with stacked copies of its weights must be in eval mode: training would leave them stale."""
    if module.training:
        raise RuntimeError(
            f"{type(module).__name__} has stacked projections, which are for inference: their copy would not follow "
            "training's updates; call dd3g.models.fused_projections.unfuse_qkv_projections(model) first"
        )


def stack_weights(layers: Sequence[nn.Linear]) -> Tensor:
    """The layers' weights stacked along the output rows [sum of out_features, in_features]; bias-free layers
    reading one width only (every attention projection here)."""
    if any(layer.bias is not None for layer in layers):
        raise ValueError("only bias-free projections can be stacked")
    if len({layer.in_features for layer in layers}) != 1:
        raise ValueError("stacked projections must read one width")
    return torch.cat([layer.weight.detach() for layer in layers], dim=0)


def split_linear(x: Tensor, weight: Tensor, layers: Sequence[nn.Linear]) -> Tuple[Tensor, ...]:
    """`x @ weight.T` split back into each layer's output: x [..., D] -> one [..., out_features] per layer."""
    return F.linear(x, weight).split([layer.out_features for layer in layers], dim=-1)


class FusableAttention(nn.Module):
    """Base of attention layers whose to_q / to_k / to_v can be stacked; subclasses define those three layers,
    and may add pairs of layers that read one other input (`extra_pairs`)."""

    # (buffer name, layer names) of further projections that read one input together, e.g. ImageDream's ip pair
    extra_pairs: Tuple[Tuple[str, Tuple[str, str]], ...] = ()

    def __init__(self):
        super().__init__()
        self.register_load_state_dict_post_hook(_stack_again_after_load)
        # (k start, v start, v end): the context this layer gets is already projected by its model, which stacked
        # every cross-attention's keys and values into one matmul (MultiViewUNet.stack_conditioning_projections)
        self.stacked_context_rows: Optional[Tuple[int, int, int]] = None

    @property
    def is_fused(self) -> bool:
        stacked_by_model = self.stacked_context_rows is not None
        return stacked_by_model or any(buffer in self._buffers for buffer in self._fused_buffer_names())

    def _fused_buffer_names(self) -> Tuple[str, ...]:
        return (FUSED_QKV, FUSED_KV, *(buffer for buffer, _ in self.extra_pairs))

    def fuse_qkv_projections(self) -> None:
        self.unfuse_qkv_projections()
        q, k, v = self.to_q, self.to_k, self.to_v
        if q.in_features == k.in_features:
            self.register_buffer(FUSED_QKV, stack_weights((q, k, v)), persistent=False)
        else:
            self.register_buffer(FUSED_KV, stack_weights((k, v)), persistent=False)
        for buffer, names in self.extra_pairs:
            if all(hasattr(self, name) for name in names):
                self.register_buffer(buffer, stack_weights([getattr(self, name) for name in names]), persistent=False)

    def unfuse_qkv_projections(self) -> None:
        for buffer in self._fused_buffer_names():
            if buffer in self._buffers:
                del self._buffers[buffer]

    def _fused(self, buffer: str) -> Optional[Tensor]:
        weight = self._buffers.get(buffer)
        if weight is not None:
            refuse_training(self)
        return weight

    def project_qkv(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """q from x, k and v from context (x when None): x [B, T, D], context [B, M, D_ctx] ->
        q [B, T, inner], k [B, M, inner], v [B, M, inner]; one or two matmuls when fused, three otherwise."""
        source = x if context is None else context
        if context is not None and self.stacked_context_rows is not None:
            k_start, v_start, v_end = self.stacked_context_rows
            return self.to_q(x), context[..., k_start:v_start], context[..., v_start:v_end]
        qkv, kv = self._fused(FUSED_QKV), self._fused(FUSED_KV)
        if qkv is not None and context is None:
            return split_linear(x, qkv, (self.to_q, self.to_k, self.to_v))
        if qkv is not None:  # a self-attention layer asked to attend to a context of its own width
            q_rows = self.to_q.out_features
            return (F.linear(x, qkv[:q_rows]), *split_linear(source, qkv[q_rows:], (self.to_k, self.to_v)))
        if kv is not None:
            return (self.to_q(x), *split_linear(source, kv, (self.to_k, self.to_v)))
        return self.to_q(x), self.to_k(source), self.to_v(source)

    def project_pair(self, buffer: str, source: Tensor) -> Tuple[Tensor, Tensor]:
        """One of `extra_pairs` applied to source [B, M, D_ctx]: two [B, M, out_features] tensors."""
        names = dict(self.extra_pairs)[buffer]
        layers = [getattr(self, name) for name in names]
        weight = self._fused(buffer)
        if weight is None:
            return layers[0](source), layers[1](source)
        return split_linear(source, weight, layers)


def _stack_again_after_load(layer: FusableAttention, incompatible_keys) -> None:
    if layer.is_fused:  # the stacked copy must hold the weights just loaded
        layer.fuse_qkv_projections()


def _stacking_models(model: nn.Module) -> list:
    """The modules of `model` that stack their blocks' conditioning projections (the multi-view UNet)."""
    return [m for m in model.modules() if hasattr(m, "stack_conditioning_projections")]


def fuse_qkv_projections(model: nn.Module) -> int:
    """Stack the projections of every attention layer in `model` (see the module docstring), and where a model
    stacks its blocks' projections of one conditioning tensor (`stack_conditioning_projections`: the multi-view UNet's
    ResBlock time-embedding and cross-attention key/value projections), those too; returns how many attention layers
    were fused. Call it for inference."""
    layers = [m for m in model.modules() if isinstance(m, FusableAttention)]
    for layer in layers:
        layer.fuse_qkv_projections()
    for stacking in _stacking_models(model):
        stacking.stack_conditioning_projections()
    return len(layers)


def unfuse_qkv_projections(model: nn.Module) -> int:
    """Drop every stacked copy `fuse_qkv_projections` made; returns how many attention layers had one."""
    layers = [m for m in model.modules() if isinstance(m, FusableAttention) and m.is_fused]
    for layer in layers:
        layer.unfuse_qkv_projections()
    for stacking in _stacking_models(model):
        stacking.unstack_conditioning_projections()
    return len(layers)
