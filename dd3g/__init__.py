"""DD3G: one image in, 3D Gaussians out, distilled from a multi-view diffusion teacher.

Importing the package loads no weights and touches no device; the heavy parts import on first use.
"""

__version__ = "0.1.0.dev0"

_LAZY = {
    "DD3GPipeline": ("dd3g.pipeline", "DD3GPipeline"),
    "Gaussians": ("dd3g.gaussians", "Gaussians"),
    "render": ("dd3g.rendering", "render"),
    "preprocess": ("dd3g.preprocess", "preprocess"),
    "PEPD": ("dd3g.models.pepd", "PEPD"),
    "MultiViewUNet": ("dd3g.models.mv_unet", "MultiViewUNet"),
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dd3g' has no attribute {name!r}")
