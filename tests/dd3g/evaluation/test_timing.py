"""dd3g.evaluation.timing.attention_backend: the benchmarks' choice of attention kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dd3g.evaluation.timing import attention_backend


def test_attention_backend_restricts_the_kernel_and_keeps_the_result():
    q, k, v = torch.randn(3, 2, 4, 16, 8).unbind(0)  # [B, heads, L, D] each
    reference = F.scaled_dot_product_attention(q, k, v)
    for name in ("auto", "math"):
        with attention_backend(name):
            torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), reference)
    # On CPU tensors only the math and the CPU flash kernels exist: cuDNN's, asked for alone, cannot run.
    with attention_backend("cudnn"), pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), reference)  # the restriction ends with the context
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        attention_backend("fast")
