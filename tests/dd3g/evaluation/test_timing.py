"""dd3g.evaluation.timing.attention_backend: the benchmarks' choice of attention kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dd3g.evaluation.timing import attention_backend


def test_attention_backend_prefers_a_kernel_falls_back_where_it_cannot_run_and_keeps_the_result():
    q, k, v = torch.randn(3, 2, 4, 16, 8).unbind(0)  # [B, heads, L, D] each
    reference = F.scaled_dot_product_attention(q, k, v)
    # On CPU tensors cuDNN's kernel cannot run: "cudnn" falls back (on an H200 the ImageDream VAE's attention, whose
    # head size cuDNN lacks, did the same; a cuDNN-only restriction stopped that run with "No available kernel").
    for name in ("auto", "math", "cudnn", "flash"):
        with attention_backend(name):
            torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), reference)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION), pytest.raises(RuntimeError):  # what the fallback avoids
        F.scaled_dot_product_attention(q, k, v)
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        attention_backend("fast")
