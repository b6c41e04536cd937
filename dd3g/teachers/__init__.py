"""Multi-view diffusion teachers behind one interface (`MultiViewTeacher`), and one way to load any of them.

`dd3g` never loads a teacher at import; the pipeline never imports this package (a student carries what it needs
of its teacher: the scheduler settings and, for a latent teacher, its input encoders).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch

from .base import MultiViewTeacher, SimulationResult, TeacherCondition

__all__ = ["MultiViewTeacher", "SimulationResult", "TeacherCondition", "TeacherLoadError", "load_teacher", "teacher_kind"]

#: model_index.json `_class_name` -> the teacher backend that loads that folder
TEACHER_KINDS = {
    "TinyMVDMPipeline": "tiny",  # ours (dd3g.teachers.tiny)
    "MVDreamPipeline": "imagedream",  # ashawkey/imagedream-ipmv-diffusers (pipeline_mvdream.MVDreamPipeline)
    "ImageDreamPipeline": "imagedream",
}


class TeacherLoadError(ValueError):
    """A teacher folder that is missing, of an unknown kind, or that its backend refuses."""


def teacher_kind(path: Union[str, Path]) -> str:
    """'tiny' or 'imagedream', read from the folder's model_index.json (nothing is loaded)."""
    root = Path(path)
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise TeacherLoadError(f"teacher {root}: not a teacher folder (no model_index.json)")
    try:
        index = json.loads(index_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TeacherLoadError(f"teacher {root}: model_index.json cannot be read: {error}") from None
    name = index.get("_class_name") if isinstance(index, dict) else None
    if isinstance(name, list):  # [module, class] for a pipeline class of a custom module
        name = name[-1]
    if name in TEACHER_KINDS:
        return TEACHER_KINDS[name]
    if isinstance(index, dict) and isinstance(index.get("unet"), list) and index["unet"][-1] == "MultiViewUNetModel":
        return "imagedream"  # the published layout under another pipeline name
    raise TeacherLoadError(f"teacher {root}: model_index.json names {name!r}, not a known teacher "
                           f"({', '.join(sorted(TEACHER_KINDS))}, or a folder with an ImageDream MultiViewUNetModel unet)")


def load_teacher(path: Union[str, Path], device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                 **options) -> MultiViewTeacher:
    """A teacher folder -> its `MultiViewTeacher`: the tiny teacher (TinyMVDMPipeline) or ImageDream's published
    diffusers layout. `options` go to the ImageDream backend (prompt, layout, ...). Safetensors only; nothing is
    downloaded."""
    kind = teacher_kind(path)
    if kind == "tiny":
        if options:
            raise TeacherLoadError(f"the tiny teacher takes no options, got {sorted(options)}")
        from .tiny import TinyTeacher

        return TinyTeacher.from_pretrained(path, device=device, dtype=dtype)
    from .imagedream import ImageDreamTeacher

    return ImageDreamTeacher.from_pretrained(path, device=device, dtype=dtype, **options)
