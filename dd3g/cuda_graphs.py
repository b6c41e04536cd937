"""CUDA graphs for inference: a call captured once and replayed, so the host launches one graph per call instead of
hundreds of kernels.

`captured_graph` captures one call at fixed shapes; `GraphedCall` keeps one such graph per input signature (the
shapes, dtypes and devices of the tensor arguments) and returns copies of the outputs, so a caller uses it like the
function it wraps. `DD3GPipeline.enable_cuda_graphs()` runs its tokenizer + student through a `GraphedCall`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterable, Optional

import torch

# torch.compile modes that keep CUDA graphs of their own out, so that the whole call can be captured in one
GRAPH_COMPILE_MODES = (None, "default", "max-autotune-no-cudagraphs")


def captured_graph(fn, *example_args, warmup: int = 3):
    """fn(*args) captured once into one CUDA graph: a callable that copies its tensor arguments into the graph's own
    input tensors and replays it. Per call the host then launches one graph, where torch.compile's "reduce-overhead"
    mode also checks its guards and keeps its graph trees' books before every replay: host work that a timed call's
    wall includes while the GPU waits (in session 29 the `base` student's wall at batch 1 was 1.1-2.4 ms above the sum
    of its kernels, 7.4-8.5 ms, and one model's wall varied 8.5-9.5 ms between processes on one machine).

    fn may be torch.compile'd (in a mode without CUDA graphs; it is compiled in the warm-up calls, before the capture).
    The outputs are the graph's own tensors, overwritten by the next call: copy what must outlive it. Tensor arguments
    must keep their shapes and dtypes; any other argument is part of the graph (e.g. the cameras) and must be the same
    object at every call. Capture needs CUDA; a CPU tensor is refused here, before any work."""
    tensors = [a for a in example_args if torch.is_tensor(a)]
    if not tensors or any(t.device.type != "cuda" for t in tensors):
        got = ", ".join(str(t.device) for t in tensors) if tensors else "no tensors"
        raise ValueError(f"captured_graph needs CUDA tensor arguments (CUDA graphs exist only on CUDA devices); got {got}")
    static_args = [a.clone() if torch.is_tensor(a) else a for a in example_args]
    side = torch.cuda.Stream(tensors[0].device)  # warm-up off the default stream, as capture requires
    side.wait_stream(torch.cuda.current_stream(tensors[0].device))
    with torch.cuda.stream(side):
        for _ in range(warmup):  # compiles, lets cuDNN pick its algorithms, settles the allocator
            fn(*static_args)
    torch.cuda.current_stream(tensors[0].device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn(*static_args)

    def replay(*args):
        if len(args) != len(static_args):
            raise TypeError(f"the captured call takes {len(static_args)} arguments, got {len(args)}")
        for i, (static, arg) in enumerate(zip(static_args, args)):
            if torch.is_tensor(static):
                if not torch.is_tensor(arg) or arg.shape != static.shape or arg.dtype != static.dtype:
                    raise ValueError(f"argument {i}: the graph was captured for a {static.dtype} tensor of shape "
                                     f"{tuple(static.shape)}, got {_describe(arg)}")
                static.copy_(arg)
            elif arg is not static:
                raise ValueError(f"argument {i} ({type(arg).__name__}) is part of the captured graph: pass the object "
                                 "it was captured with")
        graph.replay()
        return outputs

    return replay


def _describe(value) -> str:
    return f"a {value.dtype} tensor of shape {tuple(value.shape)}" if torch.is_tensor(value) else type(value).__name__


class GraphedCall:
    """fn(*args) -> a tuple of tensors (or None), through one captured CUDA graph per input signature.

    The first call with a new signature compiles fn (`compile_mode`; None captures the eager kernels) and captures
    it, which takes as long as a compile (about 80 s for the `base` student on an H200); later calls with the same
    signature copy their tensors in and replay. At most `max_graphs` signatures are kept, least recently used dropped
    first (each holds its own GPU memory pool). Outputs are copies, so they outlive the next call.

    `state` (modules) are the weights the graph reads: they are kept alive with the graphs, so a weight tensor replaced
    after a capture (not updated in place) leaves the graph reading the old values, never freed memory. Whoever
    replaces weights calls `clear()`.
    """

    def __init__(self, fn: Callable, compile_mode: Optional[str] = "default", max_graphs: int = 8,
                 state: Iterable[torch.nn.Module] = ()):
        if compile_mode not in GRAPH_COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {GRAPH_COMPILE_MODES} (a mode with CUDA graphs of its own cannot "
                             f"be captured inside one), got {compile_mode!r}")
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.fn = fn if compile_mode is None else torch.compile(fn, mode=compile_mode, dynamic=False)
        self.compile_mode, self.max_graphs, self.modules = compile_mode, max_graphs, list(state)
        self._graphs: "OrderedDict[tuple, tuple]" = OrderedDict()  # signature -> (replay, weights kept alive)

    @staticmethod
    def signature(args) -> tuple:
        return tuple((tuple(a.shape), a.dtype, a.device) if torch.is_tensor(a) else a for a in args)

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every captured graph (after weights were replaced or moved); the next call captures again."""
        self._graphs.clear()

    def __call__(self, *args):
        key = self.signature(args)
        if key in self._graphs:
            self._graphs.move_to_end(key)
        else:
            if len(self._graphs) >= self.max_graphs:
                self._graphs.popitem(last=False)
            # their storage, not the Parameter objects: Module.to() swaps a parameter's .data, freeing the old one
            weights = [t.detach() for m in self.modules for t in (*m.parameters(), *m.buffers())]
            self._graphs[key] = (captured_graph(self.fn, *args), weights)
        outputs = self._graphs[key][0](*args)
        return tuple(None if t is None else t.clone() for t in outputs)
