"""Where the shipped weights are found: the repository's hub/ folder, or the folder that DD3G_HUB names.

The weights (the dd3g-tiny pipeline, the EfficientNet-Lite0 tokenizer, LPIPS, the tiny teacher) are
safetensors files in the repository's hub/ folder, which a wheel does not carry: an editable install
(`pip install -e .` in a clone) finds them beside the package; any other install finds them where DD3G_HUB
points (a copy of that folder), or says in one line how to get them.
"""

from __future__ import annotations

import os
from pathlib import Path

HUB_ENV = "DD3G_HUB"
REPOSITORY_HUB = Path(__file__).resolve().parents[1] / "hub"


def shipped_folder(name: str) -> Path:
    """The folder of a shipped model, e.g. ``shipped_folder("dd3g-tiny")``."""
    root = os.environ.get(HUB_ENV)
    return (Path(root).expanduser() if root else REPOSITORY_HUB) / name


def missing_hint(name: str) -> str:
    """What to do when ``shipped_folder(name)`` is not there (one clause, for the end of an error line)."""
    if os.environ.get(HUB_ENV):
        return f"{HUB_ENV}={os.environ[HUB_ENV]} holds no {name}/ folder: point it at a copy of the DD3G repository's hub/"
    return (f"the shipped {name} lives in the DD3G repository's hub/ folder, which this install does not have: "
            f"clone the repository and `pip install -e .` there, or set {HUB_ENV} to a copy of its hub/ folder")
