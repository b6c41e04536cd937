import gc

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_collection_finish(session):
    """Cheaper garbage collection in the session's long-lived process (no test asserts anything about it).

    Collection has imported torch, diffusers, transformers and gradio: about a million objects that live as long as
    the process. Freezing them keeps every full collection from walking them again, and a first-generation threshold
    of 10,000 instead of 700 runs the collector less often while tests build, train and trace models (a dynamo trace
    allocates millions of short-lived objects). On the 2-core machine this took the collector's time in a suite run
    from ~28 s to ~10 s."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
