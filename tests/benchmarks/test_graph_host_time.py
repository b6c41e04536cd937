"""benchmarks/graph_host_time.py times the pipeline's graph path, which looks its device and dtype up once, not per call."""

from diffusers import DiffusionPipeline, ModelMixin

from benchmarks import graph_host_time


def test_the_graph_path_serves_calls_without_diffusers_per_call_lookups(monkeypatch):
    pipe, rgba, noise, stand_in = graph_host_time.graph_path("tiny")  # raises unless the stand-in graph served the call

    def refuse(self):
        raise AssertionError("a per-call lookup on the graph path (it walks every module: ~14 ms at base on 2 cores)")

    for cls, name in ((DiffusionPipeline, "_execution_device"), (ModelMixin, "dtype"), (ModelMixin, "device")):
        monkeypatch.setattr(cls, name, property(refuse))
    pipe.generate_from_rgba(rgba, noise * 0.5, [0], elevation_deg=15.0)
    assert stand_in.calls == 2
