"""A batched container of 3D Gaussians, with PLY and ``.splat`` input/output.

The container stores *raw* parameters (what a network predicts and what the
standard 3DGS PLY layout stores); activated values are properties:

    scales    = exp(log_scales)
    rotations = quats / |quats|            (wxyz)
    opacities = sigmoid(opacity_logits)
    colors    = max(0, 0.5 + SH_C0 * sh_dc)

Leading batch dimensions ``...`` may be empty (one object, ``means`` is
``[N, 3]``) or anything else, e.g. ``[B]``. World convention: right-handed,
+Y up; files are written without any coordinate flip.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .files import PathLike, write_atomically

__all__ = ["Gaussians", "SH_C0", "OPACITY_LOGIT_BOUND", "INVISIBLE_OPACITY", "PLY_REQUIRED_PROPERTIES"]

SH_C0 = 0.28209479177387814  # zeroth-order real spherical harmonic, 1 / (2 sqrt(pi))
OPACITY_LOGIT_BOUND = 15.0  # sigmoid(15) = 1 - 3e-7: opaque enough, and never +-inf on disk
INVISIBLE_OPACITY = 1.0 / 255.0  # rasterizers skip fragments with alpha below this (dd3g.rendering.torch_splatter)
_MIN_SCALE = 1e-12  # from_activated clamps scales to this before the log
_OPACITY_EPS = 1e-6  # from_activated clamps opacities into [eps, 1 - eps] before the logit


# The standard 3DGS vertex layout (f_rest_* go between f_dc_2 and opacity).
_PLY_HEAD = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
_PLY_TAIL = ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
PLY_REQUIRED_PROPERTIES = tuple(p for p in _PLY_HEAD + _PLY_TAIL if p not in ("nx", "ny", "nz"))
_F_REST = re.compile(r"f_rest_(\d+)$")


@dataclass
class Gaussians:
    """3D Gaussians with raw (pre-activation) parameters and leading batch dims ``...``."""

    means: Tensor  # [..., N, 3] centres, world space (+Y up)
    log_scales: Tensor  # [..., N, 3] log of the per-axis standard deviations
    quats: Tensor  # [..., N, 4] rotations, wxyz, unnormalised
    opacity_logits: Tensor  # [..., N] logit of opacity, clamped to +-OPACITY_LOGIT_BOUND
    sh_dc: Tensor  # [..., N, 3] SH degree-0 coefficients, rgb = 0.5 + SH_C0 * sh_dc
    sh_rest: Optional[Tensor] = None  # [..., N, K, 3] higher SH bands (K = (deg + 1)^2 - 1) or None

    def __post_init__(self):
        # Clamping keeps NaN as NaN (validate() reports it) and maps +-inf to the bound.
        self.opacity_logits = self.opacity_logits.clamp(-OPACITY_LOGIT_BOUND, OPACITY_LOGIT_BOUND)

    # ------------------------------------------------------------------ activated values
    @property
    def scales(self) -> Tensor:  # [..., N, 3]
        return torch.exp(self.log_scales)

    @property
    def rotations(self) -> Tensor:  # [..., N, 4] unit wxyz quaternions
        return torch.nn.functional.normalize(self.quats, dim=-1)

    @property
    def opacities(self) -> Tensor:  # [..., N]
        return torch.sigmoid(self.opacity_logits)

    @property
    def colors(self) -> Tensor:  # [..., N, 3] rgb, >= 0 (not clamped above)
        return (0.5 + SH_C0 * self.sh_dc).clamp_min(0.0)

    # ------------------------------------------------------------------ shape information
    @property
    def batch_shape(self) -> torch.Size:
        return self.means.shape[:-2]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[-2]

    @property
    def sh_degree(self) -> int:
        k = 0 if self.sh_rest is None else self.sh_rest.shape[-2]
        return int(round((k + 1) ** 0.5)) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def __repr__(self) -> str:
        return (
            f"Gaussians(batch_shape={tuple(self.batch_shape)}, num_gaussians={self.num_gaussians}, "
            f"sh_degree={self.sh_degree}, dtype={self.dtype}, device={self.device})"
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_activated(
        cls,
        means: Tensor,  # [..., N, 3]
        scales: Tensor,  # [..., N, 3] > 0
        rotations: Tensor,  # [..., N, 4] wxyz
        opacities: Tensor,  # [..., N] in [0, 1]
        colors: Tensor,  # [..., N, 3] rgb
        sh_rest: Optional[Tensor] = None,  # [..., N, K, 3]
    ) -> "Gaussians":
        """Invert the activations: log of (clamped) scales, logit of (clamped) opacities, rgb -> SH DC."""
        return cls(
            means=means,
            log_scales=torch.log(scales.clamp_min(_MIN_SCALE)),
            quats=rotations,
            opacity_logits=torch.logit(opacities, eps=_OPACITY_EPS),  # __post_init__ clamps
            sh_dc=(colors - 0.5) / SH_C0,
            sh_rest=sh_rest,
        )

    def _tensors(self) -> Dict[str, Optional[Tensor]]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def _map(self, fn) -> "Gaussians":
        """A new container with ``fn`` applied to every tensor field (None stays None)."""
        return Gaussians(**{k: (None if v is None else fn(v)) for k, v in self._tensors().items()})

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "Gaussians":
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def detach(self) -> "Gaussians":
        return self._map(lambda t: t.detach())

    def clone(self) -> "Gaussians":
        return self._map(lambda t: t.clone())

    def __getitem__(self, index) -> "Gaussians":
        """Index the batch dims only: ``g[0]`` of a ``[B]`` batch is an unbatched container."""
        index = index if isinstance(index, tuple) else (index,)
        used = 0
        for i in index:
            if i is Ellipsis:
                raise IndexError("Gaussians indexing does not support '...'; index batch dims explicitly")
            if i is None:
                continue
            used += i.ndim if isinstance(i, Tensor) and i.dtype == torch.bool else 1
        if used > len(self.batch_shape):
            raise IndexError(
                f"too many indices ({used}) for batch shape {tuple(self.batch_shape)}; "
                "only the batch dims can be indexed (use prune/select for Gaussians)"
            )
        return self._map(lambda t: t[index])

    @staticmethod
    def _check_sh_rest(items: Sequence["Gaussians"]) -> bool:
        has_rest = [g.sh_rest is not None for g in items]
        if any(has_rest) and not all(has_rest):
            raise ValueError("cannot combine containers with and without sh_rest")
        return has_rest[0]

    @classmethod
    def stack(cls, items: Sequence["Gaussians"], dim: int = 0) -> "Gaussians":
        """Stack containers of equal shape into a new leading batch dim (``dim`` counts batch dims)."""
        if not items:
            raise ValueError("Gaussians.stack needs at least one container")
        cls._check_sh_rest(items)
        if dim < 0:
            dim += len(items[0].batch_shape) + 1
        if not 0 <= dim <= len(items[0].batch_shape):
            raise ValueError(f"stack dim {dim} out of range for batch shape {tuple(items[0].batch_shape)}")
        out = {}
        for name in items[0]._tensors():
            parts = [getattr(g, name) for g in items]
            out[name] = None if parts[0] is None else torch.stack(parts, dim=dim)
        return cls(**out)

    @classmethod
    def cat(cls, items: Sequence["Gaussians"]) -> "Gaussians":
        """Concatenate along the Gaussian dim N (batch shapes must match)."""
        if not items:
            raise ValueError("Gaussians.cat needs at least one container")
        cls._check_sh_rest(items)
        shapes = {tuple(g.batch_shape) for g in items}
        if len(shapes) != 1:
            raise ValueError(f"Gaussians.cat needs equal batch shapes, got {sorted(shapes)}")
        gaussian_dim = {"opacity_logits": -1, "sh_rest": -3}  # the rest are [..., N, C]: dim -2
        out = {}
        for name in items[0]._tensors():
            parts = [getattr(g, name) for g in items]
            out[name] = None if parts[0] is None else torch.cat(parts, dim=gaussian_dim.get(name, -2))
        return cls(**out)

    def flatten_batch(self) -> "Gaussians":
        """Merge all batch dims into one: ``[B1, B2, N, ...]`` -> ``[B1 * B2, N, ...]``."""
        nb = len(self.batch_shape)
        return self._map(lambda t: t.reshape(-1, *t.shape[nb:]))

    def rotated_about_y(self, angles: Tensor) -> "Gaussians":
        """The same Gaussians turned by `angles` radians about +Y (counter-clockwise seen from above).

        angles: a scalar or [*batch_shape] tensor, one angle per object.
        """
        angles = torch.as_tensor(angles, dtype=self.means.dtype, device=self.device)
        angles = angles.expand(self.batch_shape)[..., None]  # [..., 1]
        cos, sin = torch.cos(angles), torch.sin(angles)
        x, y, z = self.means.unbind(-1)
        means = torch.stack([cos * x + sin * z, y.expand_as(x), -sin * x + cos * z], dim=-1)  # [..., N, 3]
        half = angles / 2
        qw, qy = torch.cos(half), torch.sin(half)  # rotation quaternion (qw, 0, qy, 0)
        w, a, b, c = self.quats.unbind(-1)  # q_yaw * q (Hamilton product)
        quats = torch.stack([qw * w - qy * b, qw * a + qy * c, qw * b + qy * w, qw * c - qy * a], dim=-1)
        return Gaussians(means, self.log_scales, quats, self.opacity_logits, self.sh_dc, self.sh_rest)

    def select(self, index: Tensor) -> "Gaussians":
        """Pick Gaussians of an unbatched container by an index ``[M]`` or a mask ``[N]``."""
        self._require_unbatched("select")
        return self._map(lambda t: t[index])

    def prune(self, min_opacity: float = 0.005, max_count: Optional[int] = None) -> "Gaussians":
        """Drop Gaussians with opacity < ``min_opacity``; keep at most ``max_count`` of the most opaque.

        Unbatched containers only (batch elements would end up with different N). Kept Gaussians
        stay in their original order; ties in opacity are broken by that order.
        """
        self._require_unbatched("prune")
        opacities = self.opacities.detach()  # [N]
        keep = torch.nonzero(opacities >= min_opacity).squeeze(-1)  # [M]
        if max_count is not None and keep.numel() > max_count:
            order = torch.argsort(opacities[keep], descending=True, stable=True)  # [M]
            keep = torch.sort(keep[order[: max(int(max_count), 0)]]).values  # [max_count]
        return self.select(keep)

    def visible(self) -> "Gaussians":
        """The Gaussians any 3DGS rasterizer draws: those with opacity >= INVISIBLE_OPACITY (1/255). A splat's alpha
        at a pixel is at most its opacity, and fragments below 1/255 are skipped (ours, gsplat, the 3DGS reference), so
        renders are unchanged while files and viewers carry fewer splats (about half of a pixel-aligned student's are
        background pixels at opacity ~0). Unbatched containers only."""
        return self.prune(min_opacity=INVISIBLE_OPACITY)

    # ------------------------------------------------------------------ checks and export
    def _require_unbatched(self, what: str) -> None:
        if len(self.batch_shape) != 0:
            raise ValueError(
                f"{what} needs an unbatched container (means [N, 3]); got batch shape "
                f"{tuple(self.batch_shape)}: index it first, e.g. g[0]"
            )

    def validate(self) -> "Gaussians":
        """Raise ValueError on inconsistent shapes, non-float dtypes or non-finite values."""
        if self.means.ndim < 2 or self.means.shape[-1] != 3:
            raise ValueError(f"means must be [..., N, 3], got {tuple(self.means.shape)}")
        lead = tuple(self.means.shape[:-1])  # (..., N)
        expected = {
            "log_scales": lead + (3,),
            "quats": lead + (4,),
            "opacity_logits": lead,
            "sh_dc": lead + (3,),
        }
        if self.sh_rest is not None:
            if self.sh_rest.ndim != len(lead) + 2:
                raise ValueError(f"sh_rest must be [..., N, K, 3], got {tuple(self.sh_rest.shape)}")
            expected["sh_rest"] = lead + (self.sh_rest.shape[-2], 3)
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(
                    f"{name} must have shape {shape} (given means {tuple(self.means.shape)}), got {got}"
                )
        for name, t in self._tensors().items():
            if t is None:
                continue
            if not t.is_floating_point():
                raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
            if t.device != self.device:
                raise ValueError(f"{name} is on {t.device}, means on {self.device}")
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ValueError(f"{name} has {bad} non-finite entries (of {t.numel()})")
        return self

    def to_numpy(self) -> Dict[str, np.ndarray]:
        """Activated parameters as float32 numpy arrays: means, scales, rotations, opacities, colors."""
        g = self.detach()
        return {
            name: getattr(g, name).to("cpu", torch.float32).numpy()
            for name in ("means", "scales", "rotations", "opacities", "colors")
        }

    # ------------------------------------------------------------------ PLY (standard 3DGS layout)
    def _ply_columns(self) -> Dict[str, np.ndarray]:
        """Property name -> float32 column [N], in the standard 3DGS order."""
        g = self.detach().to("cpu", torch.float32)
        n = g.num_gaussians
        cols = {}
        for i, axis in enumerate("xyz"):
            cols[axis] = g.means[:, i]
        for axis in "xyz":
            cols["n" + axis] = torch.zeros(n)  # normals: unused by 3DGS, written as zeros
        for i in range(3):
            cols[f"f_dc_{i}"] = g.sh_dc[:, i]
        if g.sh_rest is not None:
            # Channel-major as in 3DGS: all R coefficients, then all G, then all B.
            rest = g.sh_rest.transpose(-1, -2).reshape(n, -1)  # [N, 3 * K]
            for i in range(rest.shape[1]):
                cols[f"f_rest_{i}"] = rest[:, i]
        cols["opacity"] = g.opacity_logits.clamp(-OPACITY_LOGIT_BOUND, OPACITY_LOGIT_BOUND)
        for i in range(3):
            cols[f"scale_{i}"] = g.log_scales[:, i]
        for i in range(4):
            cols[f"rot_{i}"] = g.quats[:, i]  # rot_0 = w
        return {k: v.numpy() for k, v in cols.items()}

    def save_ply(self, path: PathLike) -> str:
        """Write the standard 3DGS PLY (binary little-endian float32, raw values). Atomic."""
        write_atomically(path, [self.to_ply_bytes()])
        return os.fspath(path)

    def to_ply_bytes(self) -> bytes:
        """The standard 3DGS PLY file as bytes (what save_ply writes)."""
        self._require_unbatched("save_ply")
        self.validate()  # before anything touches the disk
        cols = self._ply_columns()
        vertex = np.empty(self.num_gaussians, dtype=[(name, "<f4") for name in cols])  # [N] records
        for name, col in cols.items():
            vertex[name] = col
        header = "\n".join(
            ["ply", "format binary_little_endian 1.0", f"element vertex {self.num_gaussians}"]
            + [f"property float {name}" for name in cols]
            + ["end_header", ""]
        )
        return header.encode("ascii") + vertex.tobytes()

    @classmethod
    def load_ply(cls, path: PathLike, device=None) -> "Gaussians":
        """Read a 3DGS PLY (ours or another tool's: normals optional, extra properties ignored)."""
        from plyfile import PlyData, PlyParseError

        path = os.fspath(path)
        with open(path, "rb") as f:
            magic = f.read(4)
            if magic[:3] != b"ply" or magic[3:] not in (b"\n", b"\r"):
                raise ValueError(f"{path}: not a PLY file (it does not start with 'ply')")
            f.seek(0)
            try:
                ply = PlyData.read(f, mmap=False)
            except (PlyParseError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}: malformed or truncated PLY file: {e}") from e
        if "vertex" not in [el.name for el in ply.elements]:
            raise ValueError(f"{path}: PLY file has no 'vertex' element")
        data = ply["vertex"].data  # structured array [N]
        names = set(data.dtype.names or ())
        missing = [p for p in PLY_REQUIRED_PROPERTIES if p not in names]
        if missing:
            raise ValueError(f"{path}: PLY vertex element lacks required properties: {', '.join(missing)}")

        def stack(props):  # -> float32 tensor [N, len(props)]
            arr = np.stack([np.asarray(data[p], dtype=np.float32) for p in props], axis=-1)
            return torch.from_numpy(np.ascontiguousarray(arr))

        rest_ids = sorted(int(m.group(1)) for p in names if (m := _F_REST.match(p)))
        sh_rest = None
        if rest_ids:
            if rest_ids != list(range(len(rest_ids))) or len(rest_ids) % 3:
                raise ValueError(
                    f"{path}: f_rest_* properties must be f_rest_0..f_rest_(3K-1), got {len(rest_ids)} "
                    f"with indices {rest_ids[:3]}..{rest_ids[-1]}"
                )
            k = len(rest_ids) // 3
            rest = stack([f"f_rest_{i}" for i in rest_ids])  # [N, 3 * K] channel-major
            sh_rest = rest.reshape(-1, 3, k).transpose(1, 2).contiguous()  # [N, K, 3]
        g = cls(
            means=stack(["x", "y", "z"]),
            log_scales=stack(["scale_0", "scale_1", "scale_2"]),
            quats=stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
            opacity_logits=stack(["opacity"])[:, 0],
            sh_dc=stack(["f_dc_0", "f_dc_1", "f_dc_2"]),
            sh_rest=sh_rest,
        )
        return g if device is None else g.to(device)

    # ------------------------------------------------------------------ .splat (antimatter15 viewer)
    # One 32-byte record: float32 xyz, float32 exp-scales, RGBA u8, wxyz quaternion u8 (q * 128 + 128).
    _SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])

    def save_splat(self, path: PathLike) -> str:
        """Write the 32-byte-per-Gaussian ``.splat`` format (lossy: colour, opacity, rotation as u8).

        Atomic, like save_ply.
        """
        self._require_unbatched("save_splat")
        self.validate()
        g = self.detach().to("cpu", torch.float32)
        scales = g.scales  # [N, 3]
        rgba = torch.cat([g.colors.clamp(0, 1), g.opacities[:, None]], dim=-1)  # [N, 4]
        rot = g.rotations * 128 + 128  # [N, 4] wxyz in [0, 256]
        # antimatter15's viewer expects the most important splats first: sort by
        # descending opacity * volume (its convert.py key), ties kept in input order.
        importance = g.opacities * scales.prod(dim=-1)  # [N]
        order = torch.argsort(importance, descending=True, stable=True)  # [N]
        rec = np.empty(g.num_gaussians, dtype=self._SPLAT_DTYPE)  # [N] records of 32 bytes
        rec["position"] = g.means[order].numpy()
        rec["scale"] = scales[order].numpy()
        rec["rgba"] = (rgba[order] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        rec["rot"] = rot[order].round().clamp(0, 255).to(torch.uint8).numpy()
        write_atomically(path, [rec.tobytes()])
        return os.fspath(path)

    @classmethod
    def load_splat(cls, path: PathLike) -> "Gaussians":
        """Read a ``.splat`` file (in its stored, importance-sorted order); u8 fields are quantised."""
        raw = open(path, "rb").read()
        if len(raw) % cls._SPLAT_DTYPE.itemsize:
            raise ValueError(f"{path}: .splat size {len(raw)} is not a multiple of 32 bytes")
        rec = np.frombuffer(raw, dtype=cls._SPLAT_DTYPE)  # [N]
        rgba = torch.from_numpy(rec["rgba"].astype(np.float32) / 255)  # [N, 4]
        return cls.from_activated(
            means=torch.from_numpy(rec["position"].copy()),
            scales=torch.from_numpy(rec["scale"].copy()),
            rotations=torch.from_numpy((rec["rot"].astype(np.float32) - 128) / 128),
            opacities=rgba[:, 3],
            colors=rgba[:, :3],
        )
