"""Which torch device to run on: the one choice the CLI, the app and the benchmarks share."""

from __future__ import annotations

from typing import Optional


def choose_device(requested: Optional[str] = None) -> str:
    """None or "auto" -> "cuda" where a CUDA device is, else "cpu"; any other name is checked and returned.

    Raises ValueError in one line for a name torch does not know, or for CUDA on a machine without it.
    """
    import torch

    if requested in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"--device {requested!r} is not a device: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested} asked for, but no CUDA device is available")
    return requested
