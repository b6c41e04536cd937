import pytest
import torch

from dd3g import cuda_graphs
from dd3g.cuda_graphs import GraphedCall, captured_graph
from dd3g.testing import rgba_image, toy_pipeline


def test_captured_graph_refuses_cpu_tensors_before_any_work():
    calls = []
    with pytest.raises(ValueError, match="needs CUDA tensor arguments .* got cpu"):
        captured_graph(lambda x: calls.append(x), torch.zeros(2))
    with pytest.raises(ValueError, match="got no tensors"):
        captured_graph(lambda x: calls.append(x), 3)
    assert calls == []


@pytest.mark.gpu
def test_captured_graph_replays_the_call_on_new_inputs_and_refuses_what_it_was_not_captured_for():
    device = torch.device("cuda")
    weight = torch.randn(16, 16, device=device)
    scale = {"by": 2.0}  # a non-tensor argument: part of the graph

    def forward(x, options):  # x [B, 16]
        return torch.relu(x @ weight) * options["by"]

    example = torch.randn(4, 16, device=device)
    replay = captured_graph(forward, example, scale)
    for _ in range(2):
        x = torch.randn(4, 16, device=device)
        torch.testing.assert_close(replay(x, scale), forward(x, scale))
    with pytest.raises(ValueError, match=r"captured for a torch.float32 tensor of shape \(4, 16\), got .* \(8, 16\)"):
        replay(torch.randn(8, 16, device=device), scale)
    with pytest.raises(ValueError, match="part of the captured graph"):
        replay(example, {"by": 2.0})


def test_graphed_call_refuses_compile_modes_that_bring_cuda_graphs_of_their_own():
    with pytest.raises(ValueError, match="cannot be captured inside one"):
        GraphedCall(lambda x: (x,), compile_mode="reduce-overhead")
    with pytest.raises(ValueError, match="max_graphs must be >= 1"):
        GraphedCall(lambda x: (x,), compile_mode=None, max_graphs=0)


def test_graphed_call_captures_once_per_signature_drops_the_oldest_and_returns_copies(monkeypatch):
    # CUDA graphs need a GPU; the bookkeeping around them does not: a stand-in capture that counts its calls and, like a
    # real graph, returns the same output tensors at every replay.
    captures = []

    def fake_capture(fn, *example_args):
        captures.append(tuple(a.shape for a in example_args))
        owned = [None]

        def replay(*args):
            outputs = fn(*args)
            if owned[0] is None:
                owned[0] = outputs
            else:
                for mine, new in zip(owned[0], outputs):
                    if mine is not None:
                        mine.copy_(new)
            return owned[0]

        return replay

    monkeypatch.setattr(cuda_graphs, "captured_graph", fake_capture)
    call = GraphedCall(lambda x: (x * 2, None), compile_mode=None, max_graphs=2)
    first = call(torch.ones(2))
    second = call(torch.full((2,), 3.0))
    assert captures == [((2,),)]  # the same signature replays
    assert torch.equal(first[0], torch.full((2,), 2.0)) and torch.equal(second[0], torch.full((2,), 6.0))
    assert first[1] is None
    call(torch.ones(3))
    call(torch.ones(2, dtype=torch.float64))  # a dtype is part of the signature too; (2,) float32 is the oldest now
    assert len(call) == 2 and len(captures) == 3
    call(torch.ones(2))
    assert len(captures) == 4  # it was dropped, so it is captured again
    call.clear()
    call(torch.ones(3))
    assert len(captures) == 5 and len(call) == 1


def test_enable_cuda_graphs_on_a_cpu_pipeline_is_refused_and_leaves_it_as_it_was():
    pipe = toy_pipeline()
    image = rgba_image()
    before = pipe(image, seeds=[3]).gaussians
    with pytest.raises(ValueError, match=r"CUDA graphs need the pipeline on a CUDA device \(pipe.to\('cuda'\) first\); it runs on cpu"):
        pipe.enable_cuda_graphs()
    with pytest.raises(ValueError, match="cannot capture from eager code"):
        pipe.enable_cuda_graphs(compile_mode=None)
    with pytest.raises(ValueError, match="cannot be captured inside one"):
        pipe.enable_cuda_graphs(compile_mode="reduce-overhead")
    assert torch.equal(pipe(image, seeds=[3]).gaussians.means, before.means)


@pytest.mark.gpu
def test_cuda_graphs_give_the_pipelines_gaussians_for_new_images_elevations_and_batch_sizes():
    pipe = toy_pipeline().to("cuda")
    images = [rgba_image(seed=0), rgba_image(seed=1)]
    eager = [pipe(images[0], seeds=[3]).gaussians, pipe(images[1], seeds=[5], elevation_deg=20.0).gaussians,
             pipe(images, num_samples=2, seeds=[1, 2, 3, 4]).gaussians]
    pipe.enable_cuda_graphs()
    graphed = [pipe(images[0], seeds=[3]).gaussians, pipe(images[1], seeds=[5], elevation_deg=20.0).gaussians,
               pipe(images, num_samples=2, seeds=[1, 2, 3, 4]).gaussians]
    assert len(pipe._graphed_student) == 2  # one graph for one image and sample, one for two images x two samples
    tolerance = {"atol": 1e-3, "rtol": 1e-3}  # compiled kernels round differently
    for want, got in zip(eager, graphed):
        for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), **tolerance)
    assert not torch.allclose(graphed[0].means, graphed[1].means)  # a replay is not the captured call's output again
    pipe.fuse_qkv_projections()
    assert len(pipe._graphed_student) == 0  # stacked weights are new tensors: captured again
    torch.testing.assert_close(pipe(images[0], seeds=[3]).gaussians.means, eager[0].means, **tolerance)
    pipe.to("cpu")
    with pytest.raises(ValueError, match="CUDA graphs are enabled but the pipeline runs on cpu"):
        pipe(images[0], seeds=[3])
    pipe.disable_cuda_graphs()
    torch.testing.assert_close(pipe(images[0], seeds=[3]).gaussians.means, eager[0].means.cpu(), atol=1e-4, rtol=1e-4)
