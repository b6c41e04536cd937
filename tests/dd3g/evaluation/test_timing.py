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


def test_kernel_kinds_follow_the_names_cuda_libraries_and_inductor_give_their_kernels():
    from dd3g.evaluation.timing import kernel_kind, kernel_time_by_kind

    names = {  # as torch.profiler lists them on an H200 (cuDNN, cuBLAS, flash attention, inductor, ATen)
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64": "convolution",
        "nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NTN": "matmul",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1": "matmul",
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>": "attention",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64": "attention",
        "triton_tem_fused_addmm_3": "matmul",  # max-autotune's templates
        "triton_tem_fused_convolution_5": "convolution",
        "triton_red_fused_native_group_norm_silu_7": "fused (triton)",
        "triton_poi_fused_convolution_silu_3": "fused (triton)",  # a convolution's bias + SiLU, named after the conv
        "triton_poi_fused_clone_transpose_2": "fused (triton)",
        "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>": "layout",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>": "other",
    }
    assert {name: kernel_kind(name) for name in names} == names
    by_kind = kernel_time_by_kind([(name, 100.0 * (i + 1)) for i, name in enumerate(names)])
    assert list(by_kind)[0] == "fused (triton)"  # 800 + 900 + 1000 us, the most
    assert by_kind["matmul"]["ms"] == pytest.approx(1.1)  # 200 + 300 + 600 us
    assert sum(kind["share"] for kind in by_kind.values()) == pytest.approx(1.0)


def test_kernel_report_is_per_call_with_launches_and_the_walls_excess_per_launch():
    from dd3g.evaluation.timing import kernel_report

    kernels = [  # (name, device us, launches) summed over 4 calls, as profile_kernels reads them from the profiler
        ("nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NTN", 4000.0, 40),
        ("triton_tem_fused_addmm_3", 2000.0, 8),
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", 6000.0, 12),
    ]
    report = kernel_report(kernels, repeats=4, wall_ms=4.0, top=2)
    assert report["kernel_ms"] == pytest.approx(3.0)  # 12,000 us over 4 calls
    assert report["kernel_launches"] == pytest.approx(15)  # 60 launches over 4 calls
    assert report["excess_us_per_launch"] == pytest.approx(1000.0 / 15)  # (4.0 - 3.0) ms over 15 launches
    assert report["by_kind"]["matmul"] == pytest.approx({"ms": 1.5, "share": 0.5, "launches": 12})
    assert report["by_kind"]["convolution"]["launches"] == pytest.approx(3)
    assert [k["kind"] for k in report["top_kernels"]] == ["convolution", "matmul"]
    assert report["top_kernels"][0] == pytest.approx({"name": kernels[2][0], "kind": "convolution", "ms": 1.5, "launches": 3})


def test_inductor_options_apply_inside_the_context_only_and_refuse_unknown_keys():
    import torch._inductor.config as inductor_config

    from dd3g.evaluation.timing import inductor_options

    before = inductor_config.coordinate_descent_tuning
    with inductor_options([f"coordinate_descent_tuning={not before}", "max_autotune_gemm_backends=ATEN,TRITON"]):
        assert inductor_config.coordinate_descent_tuning is (not before)
        assert inductor_config.max_autotune_gemm_backends == "ATEN,TRITON"  # not a literal: kept as text
    assert inductor_config.coordinate_descent_tuning is before
    with pytest.raises(ValueError, match="unknown inductor option 'no_such_option'"):
        inductor_options(["no_such_option=1"])
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        inductor_options(["freezing"])
