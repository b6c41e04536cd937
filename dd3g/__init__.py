"""DD3G: one image in, 3D Gaussians out, distilled from a multi-view diffusion teacher.

Importing the package loads no weights and touches no device.
"""

__version__ = "0.1.0.dev0"
