"""The procedural world: random 3D objects made of Gaussians, for the tiny teacher and for evaluations.

An object is a composition of 1-4 primitives (a body plus attachments that touch or sink into it, some
of them mirrored in pairs), each with a procedural texture. Every primitive is sampled as area-uniform
surface points with normals; points that fall inside another primitive are dropped, so the Gaussians
cover exactly the outer surface of the union. Each point becomes a flat, opaque Gaussian (thin axis along
the normal, tangent size from the sampling density so that the surface renders closed). Colours are the
texture's albedo times a Lambertian light baked in (view-independent, so it is consistent with SH degree 0
and gives renders a 3D look); `lighting="mixed"` (what the teacher and the distillation corpus now use) gives a
third of the objects that hard light, a third a soft one (ambient 0.75-0.95) and a third none (flat albedo, as
the real-scan evaluation renders and as many softly lit photos look). `print_fraction` gives that share of the
bodies (half that of the attachments) a printed label instead of their texture (text-like lines of glyphs, colour
bands, logos, a picture: what packaged goods carry, and the real scans mostly are; the teacher trains with 0.5). The
object is then turned by a random yaw, centred on its bounding-box centre and scaled so that every Gaussian, 3 sigma
included, lies inside the sphere of radius 0.5 (docs/design.md section 4).

Determinism: an object depends only on its seed (and the arguments): every draw comes from one PCG64
generator seeded from `sample_seed("dd3g.synthetic", WORLD_VERSION, seed)`, read only through uniform
doubles (a stream NumPy keeps stable), never from global state. Objects are made on the CPU in float64
NumPy and returned as float32 torch tensors; move them to the device to render.

Splits (`SPLITS`) are disjoint seed ranges. The **held-out shape family is the torus**: the "standard"
family (train, val, test, corpus splits) never uses a torus; the "heldout" family (the `heldout` split, or
`make_object(seed, family="heldout")`) always contains at least one visible torus (half the time as the
body, otherwise as an attachment: a handle, a ring, a wheel).
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from dd3g.cameras import ViewLayout
from dd3g.gaussians import Gaussians
from dd3g.randomness import sample_seed
from dd3g.rendering import render

__all__ = [
    "WORLD_VERSION", "DEFAULT_NUM_GAUSSIANS", "OBJECT_RADIUS", "PRIMITIVE_TYPES", "STANDARD_PRIMITIVES",
    "HELDOUT_PRIMITIVE", "TEXTURE_KINDS", "FAMILIES", "SPLITS", "SyntheticObject", "make_object",
    "batch_objects", "render_views", "split_seed", "split_of_seed", "family_of_seed", "contact_sheet",
    "LIGHTINGS", "LIGHT_KINDS", "light_kind_of_seed", "PRINT",
]

WORLD_VERSION = 1  # bump when a change alters the objects a seed makes
DEFAULT_NUM_GAUSSIANS = 8192
OBJECT_RADIUS = 0.5  # every Gaussian's mean + 3 sigma lies inside this sphere
OPACITY = 0.95
THIN_RATIO = 0.15  # scale along the normal / tangent scale
TANGENT_SPACING_RATIO = 1.25  # tangent sigma / mean spacing sqrt(area / N): the front surface alone renders opaque
BOUND_SIGMAS = 3.0

PRIMITIVE_TYPES = ("sphere", "ellipsoid", "box", "cylinder", "cone", "capsule", "prism", "pyramid", "torus")
HELDOUT_PRIMITIVE = "torus"
STANDARD_PRIMITIVES = tuple(t for t in PRIMITIVE_TYPES if t != HELDOUT_PRIMITIVE)
TEXTURE_KINDS = ("solid", "stripes", "checkers", "gradient", "noise", "dots")
PRINT = "print"  # a printed label (make_object's print_fraction), not one of the kinds drawn above
# "standard" and "heldout" compose 1-4 primitives; a primitive type's name makes a one-primitive object.
FAMILIES = ("standard", "heldout") + PRIMITIVE_TYPES

# Disjoint seed ranges. train/val/test/corpus make standard-family objects (no torus); heldout makes
# torus-family objects. corpus: objects the teacher never trains on, for the distillation image corpus.
SPLITS: Dict[str, range] = {
    "train": range(0, 1_000_000_000),
    "val": range(1_000_000_000, 1_001_000_000),
    "test": range(1_001_000_000, 1_002_000_000),
    "corpus": range(1_100_000_000, 1_200_000_000),
    "heldout": range(2_000_000_000, 2_001_000_000),
}
_SPLIT_FAMILY = {"heldout": "heldout"}

# The light baked into an object's colours. "baked": one hard Lambertian light (ambient 0.4-0.6), the world of
# WORLD_VERSION 1 and the default; "mixed": the kind is drawn per object from LIGHT_KINDS by a generator of its own
# (keyed by the seed), so shapes and textures stay those of the seed and WORLD_VERSION holds.
LIGHT_KINDS = ("hard", "soft", "unlit")
LIGHTINGS = ("baked", "mixed") + LIGHT_KINDS
SOFT_AMBIENT = (0.75, 0.95)  # a hard light's ambient is 0.4-0.6


def light_kind_of_seed(seed: int, lighting: str = "baked") -> str:
    """The light kind an object of `seed` gets under `lighting` (one of LIGHTINGS)."""
    if lighting not in LIGHTINGS:
        raise ValueError(f"unknown lighting {lighting!r}; expected one of {LIGHTINGS}")
    if lighting == "baked":
        return "hard"
    if lighting == "mixed":
        draw = np.random.Generator(np.random.PCG64(sample_seed("dd3g.synthetic.light", int(seed)))).uniform()
        return LIGHT_KINDS[min(int(draw * len(LIGHT_KINDS)), len(LIGHT_KINDS) - 1)]
    return lighting


def split_seed(split: str, index: int) -> int:
    """The seed of the `index`-th object of a split (IndexError past its end)."""
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    return SPLITS[split][index]


def split_of_seed(seed: int) -> Optional[str]:
    """The split a seed belongs to, or None for seeds outside every split."""
    for name, seeds in SPLITS.items():
        if seed in seeds:
            return name
    return None


def family_of_seed(seed: int) -> str:
    """The family a seed makes when no family is given: 'heldout' in the heldout split, else 'standard'."""
    return _SPLIT_FAMILY.get(split_of_seed(seed), "standard")


# ---------------------------------------------------------------------------------------------- randomness
class _Rng:
    """Uniform doubles from PCG64 and everything else derived from them (NumPy keeps that stream stable)."""

    def __init__(self, seed: int, *key):
        # key: another stream of the same seed (e.g. the prints), so the shapes' stream is left as it was
        key = key or ("dd3g.synthetic", WORLD_VERSION)
        self._gen = np.random.Generator(np.random.PCG64(sample_seed(*key, int(seed))))

    def uniform(self, low: float = 0.0, high: float = 1.0, size=None):
        u = self._gen.random(size)
        return low + (high - low) * u

    def normal(self, size) -> np.ndarray:
        u1 = 1.0 - self._gen.random(size)  # (0, 1]
        u2 = self._gen.random(size)
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)

    def chance(self, p: float) -> bool:
        return bool(self._gen.random() < p)

    def index(self, n: int) -> int:
        return min(int(self._gen.random() * n), n - 1)

    def choice(self, items: Sequence, weights: Optional[Sequence[float]] = None):
        if weights is None:
            return items[self.index(len(items))]
        cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
        return items[min(int(np.searchsorted(cdf / cdf[-1], self._gen.random(), side="right")), len(items) - 1)]

    def categorical(self, weights: np.ndarray, size: int) -> np.ndarray:
        cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
        idx = np.searchsorted(cdf / cdf[-1], self._gen.random(size), side="right")
        return np.minimum(idx, len(weights) - 1)

    def unit_vectors(self, n: int) -> np.ndarray:
        v = self.normal((n, 3))
        norm = np.linalg.norm(v, axis=1, keepdims=True)
        return np.where(norm > 1e-12, v / np.maximum(norm, 1e-12), np.array([0.0, 1.0, 0.0]))

    def rotation(self) -> np.ndarray:
        q = self.normal(4)
        return _quat_to_matrix(q / max(np.linalg.norm(q), 1e-12))

    def child_seed(self) -> int:
        return int(self._gen.random() * 2**52)


# ---------------------------------------------------------------------------------------------- geometry helpers
def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / max(np.linalg.norm(axis), 1e-12)
    half = 0.5 * angle
    return _quat_to_matrix(np.concatenate([[math.cos(half)], math.sin(half) * axis]))


def _rotation_y_to(direction: np.ndarray) -> np.ndarray:
    """A rotation taking +Y to the unit vector `direction`."""
    y = np.array([0.0, 1.0, 0.0])
    axis = np.cross(y, direction)
    s, c = np.linalg.norm(axis), float(np.dot(y, direction))
    if s < 1e-9:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    return _axis_angle(axis, math.atan2(s, c))


def _quats_z_to(normals: np.ndarray) -> np.ndarray:
    """wxyz quaternions taking the local +Z axis (a Gaussian's thin axis) to each unit normal.  [N, 3] -> [N, 4]"""
    nx, ny, nz = normals[:, 0], normals[:, 1], normals[:, 2]
    q = np.stack([1.0 + nz, -ny, nx, np.zeros_like(nz)], axis=1)  # (1 + z.n, z x n), normalised below
    flipped = nz < -1.0 + 1e-9  # opposite to +Z: half a turn about X
    q[flipped] = np.array([0.0, 1.0, 0.0, 0.0])
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _radial(points: np.ndarray) -> np.ndarray:
    return np.sqrt(points[:, 0] ** 2 + points[:, 2] ** 2)


# ---------------------------------------------------------------------------------------------- primitives
class _Primitive:
    """A closed surface in its local frame (main axis +Y), placed by a rotation and a translation."""

    kind = "primitive"

    def __init__(self, **params):
        self.params = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in params.items()}
        self.rotation = np.eye(3)
        self.translation = np.zeros(3)
        self.texture: Dict = {}

    # Subclasses implement these four, in local coordinates.
    def area(self) -> float:
        raise NotImplementedError

    def sample_local(self, rng: _Rng, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """n area-uniform surface points and their outward unit normals.  [n, 3] each"""
        raise NotImplementedError

    def inside_local(self, points: np.ndarray) -> np.ndarray:
        """True strictly inside the solid.  [n, 3] -> [n]"""
        raise NotImplementedError

    def support_local(self, direction: np.ndarray) -> float:
        """max over the surface of p . direction (direction a unit vector)."""
        raise NotImplementedError

    # Shared.
    def size(self) -> float:
        """Half-size: the largest support along the local axes."""
        return max(self.support_local(s * e) for e in np.eye(3) for s in (1.0, -1.0))

    def sample_world(self, rng: _Rng, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        local, normals = self.sample_local(rng, n)
        return local @ self.rotation.T + self.translation, normals @ self.rotation.T, local

    def inside_world(self, points: np.ndarray) -> np.ndarray:
        return self.inside_local((points - self.translation) @ self.rotation)

    def support_world(self, direction: np.ndarray) -> float:
        return self.support_local(self.rotation.T @ direction) + float(self.translation @ direction)

    def mirrored(self) -> "_Primitive":
        """The mirror image across the world plane x = 0 (every local shape is symmetric under local x -> -x)."""
        m = np.diag([-1.0, 1.0, 1.0])
        twin = type(self)(**self.params)
        twin.rotation = m @ self.rotation @ m
        twin.translation = m @ self.translation
        twin.texture = dict(self.texture)
        return twin


class _Sphere(_Primitive):
    kind = "sphere"

    def area(self):
        return 4 * math.pi * self.params["radius"] ** 2

    def sample_local(self, rng, n):
        normals = rng.unit_vectors(n)
        return self.params["radius"] * normals, normals

    def inside_local(self, p):
        return np.einsum("ij,ij->i", p, p) < self.params["radius"] ** 2

    def support_local(self, d):
        return self.params["radius"]


class _Ellipsoid(_Primitive):
    kind = "ellipsoid"

    def _axes(self):
        return np.array([self.params["a"], self.params["b"], self.params["c"]])

    def area(self):
        a, b, c = self._axes()
        p = 1.6075  # Knud Thomsen's approximation, within 1.1%
        return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)

    def sample_local(self, rng, n):
        axes = self._axes()
        a, b, c = axes
        weight_max = max(a * b, a * c, b * c)
        points, normals, have = [], [], 0
        while have < n:  # rejection by the area element of the map sphere -> ellipsoid
            u = rng.unit_vectors(2 * (n - have) + 16)
            element = np.sqrt((b * c * u[:, 0]) ** 2 + (a * c * u[:, 1]) ** 2 + (a * b * u[:, 2]) ** 2)
            u = u[rng.uniform(size=len(u)) * weight_max < element]
            points.append(u * axes)
            normals.append(u / axes)
            have += len(u)
        points, normals = np.concatenate(points)[:n], np.concatenate(normals)[:n]
        return points, normals / np.linalg.norm(normals, axis=1, keepdims=True)

    def inside_local(self, p):
        return np.sum((p / self._axes()) ** 2, axis=1) < 1.0

    def support_local(self, d):
        return float(np.linalg.norm(self._axes() * d))


class _Box(_Primitive):
    """An axis-aligned box with outer half-extents (hx, hy, hz) and edges rounded by `rounding`."""

    kind = "box"

    def _inner(self):
        r = self.params["rounding"]
        return np.array([self.params["hx"], self.params["hy"], self.params["hz"]]) - r, r

    def _piece_areas(self):
        h, r = self._inner()
        faces = [2 * 4 * h[(i + 1) % 3] * h[(i + 2) % 3] for i in range(3)]  # both faces normal to axis i
        edges = [2 * math.pi * r * 2 * h[i] for i in range(3)]  # four quarter cylinders along axis i
        return np.array(faces + edges + [4 * math.pi * r * r])  # eight sphere octants

    def area(self):
        return float(self._piece_areas().sum())

    def sample_local(self, rng, n):
        h, r = self._inner()
        piece = rng.categorical(self._piece_areas(), n)
        points, normals = np.zeros((n, 3)), np.zeros((n, 3))
        for i in range(3):
            j, k = (i + 1) % 3, (i + 2) % 3
            sel = np.nonzero(piece == i)[0]  # faces normal to axis i
            sign = np.where(rng.uniform(size=len(sel)) < 0.5, -1.0, 1.0)
            points[sel, i] = sign * (h[i] + r)
            points[sel, j] = rng.uniform(-h[j], h[j], len(sel))
            points[sel, k] = rng.uniform(-h[k], h[k], len(sel))
            normals[sel, i] = sign
            sel = np.nonzero(piece == 3 + i)[0]  # rounded edges along axis i
            theta = rng.uniform(0, 2 * math.pi, len(sel))
            dj, dk = np.cos(theta), np.sin(theta)
            points[sel, i] = rng.uniform(-h[i], h[i], len(sel))
            points[sel, j] = np.sign(dj) * h[j] + r * dj
            points[sel, k] = np.sign(dk) * h[k] + r * dk
            normals[sel, j], normals[sel, k] = dj, dk
        sel = np.nonzero(piece == 6)[0]  # rounded corners
        d = rng.unit_vectors(len(sel))
        points[sel] = np.sign(d) * h + r * d
        normals[sel] = d
        return points, normals

    def inside_local(self, p):
        h, r = self._inner()
        q = np.abs(p) - h
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
        return outside + np.minimum(q.max(axis=1), 0.0) - r < 0.0

    def support_local(self, d):
        h, r = self._inner()
        return float(np.abs(d) @ h + r)


class _Cylinder(_Primitive):
    kind = "cylinder"

    def area(self):
        r, h = self.params["radius"], self.params["half_height"]
        return 2 * math.pi * r * 2 * h + 2 * math.pi * r * r

    def sample_local(self, rng, n):
        r, h = self.params["radius"], self.params["half_height"]
        piece = rng.categorical([2 * math.pi * r * 2 * h, math.pi * r * r, math.pi * r * r], n)
        theta = rng.uniform(0, 2 * math.pi, n)
        rho = np.where(piece == 0, r, r * np.sqrt(rng.uniform(size=n)))
        y = np.where(piece == 0, rng.uniform(-h, h, n), np.where(piece == 1, h, -h))
        points = np.stack([rho * np.cos(theta), y, rho * np.sin(theta)], axis=1)
        side = (piece == 0)[:, None]
        cap = np.stack([np.zeros(n), np.where(piece == 1, 1.0, -1.0), np.zeros(n)], axis=1)
        normals = np.where(side, np.stack([np.cos(theta), np.zeros(n), np.sin(theta)], axis=1), cap)
        return points, normals

    def inside_local(self, p):
        return (_radial(p) < self.params["radius"]) & (np.abs(p[:, 1]) < self.params["half_height"])

    def support_local(self, d):
        return self.params["half_height"] * abs(d[1]) + self.params["radius"] * math.hypot(d[0], d[2])


class _Cone(_Primitive):
    """A cone (top radius 0) or frustum along Y: radius `bottom` at y = -h, `top` at y = +h."""

    kind = "cone"

    def _slant(self):
        r0, r1, h = self.params["bottom"], self.params["top"], self.params["half_height"]
        return math.hypot(r0 - r1, 2 * h)

    def _piece_areas(self):
        r0, r1 = self.params["bottom"], self.params["top"]
        return np.array([math.pi * (r0 + r1) * self._slant(), math.pi * r0 * r0, math.pi * r1 * r1])

    def area(self):
        return float(self._piece_areas().sum())

    def sample_local(self, rng, n):
        r0, r1, h = self.params["bottom"], self.params["top"], self.params["half_height"]
        piece = rng.categorical(self._piece_areas(), n)
        theta = rng.uniform(0, 2 * math.pi, n)
        u = rng.uniform(size=n)
        # Lateral surface: the area density grows with the radius r(t) = r0 + (r1 - r0) t; invert its CDF.
        t = u if abs(r1 - r0) < 1e-9 else (np.sqrt(r0 * r0 + u * (r1 * r1 - r0 * r0)) - r0) / (r1 - r0)
        rho = np.select([piece == 0, piece == 1], [r0 + (r1 - r0) * t, r0 * np.sqrt(u)], r1 * np.sqrt(u))
        y = np.select([piece == 0, piece == 1], [-h + 2 * h * t, np.full(n, -h)], np.full(n, h))
        points = np.stack([rho * np.cos(theta), y, rho * np.sin(theta)], axis=1)
        s = self._slant()
        lateral = np.stack([2 * h * np.cos(theta), np.full(n, (r0 - r1)), 2 * h * np.sin(theta)], axis=1) / s
        cap = np.stack([np.zeros(n), np.where(piece == 2, 1.0, -1.0), np.zeros(n)], axis=1)
        return points, np.where((piece == 0)[:, None], lateral, cap)

    def inside_local(self, p):
        r0, r1, h = self.params["bottom"], self.params["top"], self.params["half_height"]
        t = (p[:, 1] + h) / (2 * h)
        return (np.abs(p[:, 1]) < h) & (_radial(p) < r0 + (r1 - r0) * t)

    def support_local(self, d):
        r0, r1, h = self.params["bottom"], self.params["top"], self.params["half_height"]
        rd = math.hypot(d[0], d[2])
        return max(-h * d[1] + r0 * rd, h * d[1] + r1 * rd)


class _Torus(_Primitive):
    """A torus around the Y axis: ring radius `major`, tube radius `minor`."""

    kind = "torus"

    def area(self):
        return 4 * math.pi**2 * self.params["major"] * self.params["minor"]

    def sample_local(self, rng, n):
        big, small = self.params["major"], self.params["minor"]
        phis, have = [], 0
        while have < n:  # the area element grows with the distance from the axis, R + r cos(phi)
            phi = rng.uniform(0, 2 * math.pi, 2 * (n - have) + 16)
            phi = phi[rng.uniform(size=len(phi)) * (big + small) < big + small * np.cos(phi)]
            phis.append(phi)
            have += len(phi)
        phi = np.concatenate(phis)[:n]
        theta = rng.uniform(0, 2 * math.pi, n)
        normals = np.stack([np.cos(phi) * np.cos(theta), np.sin(phi), np.cos(phi) * np.sin(theta)], axis=1)
        centre = np.stack([big * np.cos(theta), np.zeros(n), big * np.sin(theta)], axis=1)
        return centre + small * normals, normals

    def inside_local(self, p):
        return (_radial(p) - self.params["major"]) ** 2 + p[:, 1] ** 2 < self.params["minor"] ** 2

    def support_local(self, d):
        return self.params["major"] * math.hypot(d[0], d[2]) + self.params["minor"]


class _Capsule(_Primitive):
    kind = "capsule"

    def area(self):
        r, h = self.params["radius"], self.params["half_length"]
        return 2 * math.pi * r * 2 * h + 4 * math.pi * r * r

    def sample_local(self, rng, n):
        r, h = self.params["radius"], self.params["half_length"]
        side = rng.uniform(size=n) * self.area() < 2 * math.pi * r * 2 * h
        theta = rng.uniform(0, 2 * math.pi, n)
        ring = np.stack([np.cos(theta), np.zeros(n), np.sin(theta)], axis=1)
        d = rng.unit_vectors(n)
        normals = np.where(side[:, None], ring, d)
        y = np.where(side, rng.uniform(-h, h, n), np.sign(d[:, 1]) * h)
        points = r * normals + np.stack([np.zeros(n), y, np.zeros(n)], axis=1)
        return points, normals

    def inside_local(self, p):
        axis = np.stack([np.zeros(len(p)), np.clip(p[:, 1], -self.params["half_length"], self.params["half_length"]), np.zeros(len(p))], 1)
        return np.linalg.norm(p - axis, axis=1) < self.params["radius"]

    def support_local(self, d):
        return self.params["half_length"] * abs(d[1]) + self.params["radius"]


class _ConvexMesh(_Primitive):
    """A convex polyhedron (prism or pyramid over a regular polygon stretched in x/z)."""

    def _mesh(self) -> Tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _polygon(self) -> np.ndarray:
        k, r = int(self.params["sides"]), self.params["radius"]
        angles = math.pi / 2 + 2 * math.pi * np.arange(k) / k  # a vertex on +Z: symmetric under x -> -x
        return np.stack([self.params["stretch_x"] * r * np.cos(angles), self.params["stretch_z"] * r * np.sin(angles)], 1)

    def _faces(self):
        if not hasattr(self, "_cache"):
            vertices, triangles = self._mesh()
            a, b, c = (vertices[triangles[:, i]] for i in range(3))
            cross = np.cross(b - a, c - a)
            areas = 0.5 * np.linalg.norm(cross, axis=1)
            normals = cross / np.linalg.norm(cross, axis=1, keepdims=True)
            outward = np.einsum("ij,ij->i", normals, a - vertices.mean(axis=0)) > 0
            normals = np.where(outward[:, None], normals, -normals)
            offsets = np.einsum("ij,ij->i", normals, a)
            self._cache = (vertices, a, b, c, areas, normals, offsets)
        return self._cache

    def area(self):
        return float(self._faces()[4].sum())

    def sample_local(self, rng, n):
        _, a, b, c, areas, normals, _ = self._faces()
        tri = rng.categorical(areas, n)
        s, t = np.sqrt(rng.uniform(size=n))[:, None], rng.uniform(size=n)[:, None]
        points = (1 - s) * a[tri] + s * (1 - t) * b[tri] + s * t * c[tri]
        return points, normals[tri]

    def inside_local(self, p):
        _, _, _, _, _, normals, offsets = self._faces()
        return np.all(p @ normals.T - offsets < 0.0, axis=1)

    def support_local(self, d):
        return float(np.max(self._faces()[0] @ d))


class _Prism(_ConvexMesh):
    kind = "prism"

    def _mesh(self):
        poly, k, h = self._polygon(), int(self.params["sides"]), self.params["half_height"]
        bottom = np.stack([poly[:, 0], np.full(k, -h), poly[:, 1]], 1)
        top = np.stack([poly[:, 0], np.full(k, h), poly[:, 1]], 1)
        vertices = np.concatenate([bottom, top])
        tris = [[0, i, i + 1] for i in range(1, k - 1)] + [[k, k + i, k + i + 1] for i in range(1, k - 1)]
        for i in range(k):
            j = (i + 1) % k
            tris += [[i, j, k + j], [i, k + j, k + i]]
        return vertices, np.array(tris)


class _Pyramid(_ConvexMesh):
    kind = "pyramid"

    def _mesh(self):
        poly, k, h = self._polygon(), int(self.params["sides"]), self.params["half_height"]
        base = np.stack([poly[:, 0], np.full(k, -h), poly[:, 1]], 1)
        vertices = np.concatenate([base, [[0.0, h, 0.0]]])
        tris = [[0, i, i + 1] for i in range(1, k - 1)] + [[i, (i + 1) % k, k] for i in range(k)]
        return vertices, np.array(tris)


_CLASSES = {c.kind: c for c in (_Sphere, _Ellipsoid, _Box, _Cylinder, _Cone, _Torus, _Capsule, _Prism, _Pyramid)}


def _random_primitive(kind: str, rng: _Rng, scale: float) -> _Primitive:
    """A primitive of `kind` with random proportions and a half-size around `scale`."""
    u = lambda lo, hi: scale * rng.uniform(lo, hi)  # noqa: E731
    if kind == "sphere":
        return _Sphere(radius=u(0.7, 1.0))
    if kind == "ellipsoid":
        return _Ellipsoid(a=u(0.35, 1.0), b=u(0.35, 1.0), c=u(0.35, 1.0))
    if kind == "box":
        hx, hy, hz = u(0.3, 1.0), u(0.3, 1.0), u(0.3, 1.0)
        rounding = 0.0 if rng.chance(0.5) else rng.uniform(0.05, 0.5) * min(hx, hy, hz)
        return _Box(hx=hx, hy=hy, hz=hz, rounding=rounding)
    if kind == "cylinder":
        return _Cylinder(radius=u(0.25, 0.9), half_height=u(0.2, 1.0))
    if kind == "cone":
        bottom = u(0.4, 1.0)
        top = 0.0 if rng.chance(0.6) else bottom * rng.uniform(0.2, 0.8)
        return _Cone(bottom=bottom, top=top, half_height=u(0.35, 1.0))
    if kind == "capsule":
        return _Capsule(radius=u(0.2, 0.55), half_length=u(0.15, 0.6))
    if kind == "torus":
        major = u(0.55, 0.85)
        return _Torus(major=major, minor=major * rng.uniform(0.18, 0.5))
    if kind in ("prism", "pyramid"):
        sides = rng.choice([3, 4, 5, 6], [0.35, 0.3, 0.15, 0.2]) if kind == "prism" else rng.choice([3, 4], [0.4, 0.6])
        cls = _Prism if kind == "prism" else _Pyramid
        return cls(sides=int(sides), radius=u(0.5, 1.0), half_height=u(0.25, 0.9) if kind == "prism" else u(0.4, 1.0),
                   stretch_x=rng.uniform(0.7, 1.0), stretch_z=rng.uniform(0.7, 1.0))
    raise ValueError(f"unknown primitive {kind!r}")


# ---------------------------------------------------------------------------------------------- textures
def _hsv_to_rgb(h: float, s: float, v: float) -> List[float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return list((v, t, p) if i == 0 else (q, v, p) if i == 1 else (p, v, t) if i == 2 else
                (p, q, v) if i == 3 else (t, p, v) if i == 4 else (v, p, q))


def _random_palette(rng: _Rng, count: int = 4) -> List[List[float]]:
    """`count` colours around a random base hue (analogous, complementary, triadic or free schemes)."""
    base = rng.uniform()
    scheme = rng.choice(["analogous", "complementary", "triadic", "free"])
    colours = []
    for i in range(count):
        if rng.chance(0.12):  # a neutral: white, black or grey
            colours.append([rng.choice([0.95, 0.12, rng.uniform(0.35, 0.75)])] * 3)
            continue
        offset = {"analogous": rng.uniform(-0.09, 0.09), "complementary": 0.5 * (i % 2) + rng.uniform(-0.04, 0.04),
                  "triadic": (i % 3) / 3 + rng.uniform(-0.03, 0.03), "free": rng.uniform()}[scheme]
        colours.append(_hsv_to_rgb((base + offset) % 1.0, rng.uniform(0.25, 0.95), rng.uniform(0.35, 1.0)))
    return colours


def _random_texture(rng: _Rng, palette: List[List[float]], kind: Optional[str] = None) -> Dict:
    kind = kind or rng.choice(TEXTURE_KINDS, [0.22, 0.18, 0.14, 0.16, 0.16, 0.14])
    first = rng.index(len(palette))
    second = (first + 1 + rng.index(len(palette) - 1)) % len(palette)
    texture = {"kind": kind, "colors": [palette[first], palette[second]]}
    direction = rng.unit_vectors(1)[0].tolist()
    if kind == "stripes":
        texture.update(direction=direction, period=rng.uniform(0.25, 0.8), duty=rng.uniform(0.3, 0.7), phase=rng.uniform())
    elif kind == "checkers":
        texture.update(cell=rng.uniform(0.25, 0.6), rotation=rng.rotation().tolist())
    elif kind == "gradient":
        third = palette[(second + 1) % len(palette)]
        texture.update(direction=direction, colors=texture["colors"] + ([third] if rng.chance(0.4) else []))
    elif kind == "noise":
        texture.update(frequency=rng.uniform(1.2, 3.5), octaves=3, contrast=rng.uniform(1.5, 3.0),
                       noise_seed=rng.child_seed())
    elif kind == "dots":
        texture.update(cell=rng.uniform(0.3, 0.65), radius=rng.uniform(0.2, 0.38), rotation=rng.rotation().tolist())
    return texture


# A printed label: what packaged goods, cans and boxes carry (text lines, bands, logos, a picture), which the other
# kinds do not resemble. Drawn once per print seed into a raster of PRINT_RASTER (rows = height around the primitive,
# columns = once around it) and looked up at each point: cylindrical about the local main axis for round bodies,
# box-like (a quarter of the raster on each side face) for the rest.
PRINT_RASTER = (64, 128)
PRINT_CYLINDRICAL = ("cylinder", "capsule", "cone", "ellipsoid", "sphere")


def _print_texture(seed: int, primitive_kind: str) -> Dict:
    rng = _Rng(seed, "dd3g.synthetic.print")
    return {"kind": "print", "print_seed": rng.child_seed(), "phase": rng.uniform(),
            "mapping": "cylindrical" if primitive_kind in PRINT_CYLINDRICAL else "planar"}


def _ink(rng: _Rng, background: np.ndarray) -> np.ndarray:
    """A colour that reads against `background`: near-black or white by its brightness, or a saturated hue."""
    if rng.chance(0.55):
        return np.full(3, rng.uniform(0.02, 0.18) if background.mean() > 0.45 else rng.uniform(0.88, 1.0))
    colour = np.asarray(_hsv_to_rgb(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.45, 0.95)))
    return colour if abs(colour.mean() - background.mean()) > 0.2 else 1.0 - colour


@functools.lru_cache(maxsize=256)
def _print_raster(print_seed: int) -> np.ndarray:
    """The label of `print_seed`: background, colour bands, a picture, logos, lines of glyphs.  -> [H, W, 3] in [0, 1]"""
    rng = _Rng(print_seed, "dd3g.synthetic.print-raster")
    height, width = PRINT_RASTER
    kind = rng.choice(["light", "colour", "dark"], [0.45, 0.4, 0.15])
    background = (np.full(3, rng.uniform(0.85, 0.98)) * np.asarray([1.0, rng.uniform(0.93, 1.0), rng.uniform(0.8, 1.0)])
                  if kind == "light" else np.full(3, rng.uniform(0.05, 0.2)) if kind == "dark"
                  else np.asarray(_hsv_to_rgb(rng.uniform(), rng.uniform(0.5, 1.0), rng.uniform(0.4, 0.95))))
    image = np.broadcast_to(background, (height, width, 3)).copy()
    rows, cols = np.mgrid[0:height, 0:width]
    for _ in range(rng.choice([0, 1, 2, 3], [0.25, 0.35, 0.25, 0.15])):  # bands across the whole label
        top = int(rng.uniform(0, height - 4))
        image[top : top + int(rng.uniform(3, height * 0.35))] = _ink(rng, background) if rng.chance(0.3) else \
            np.asarray(_hsv_to_rgb(rng.uniform(), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0)))
    if rng.chance(0.45):  # a picture: a panel of smooth, many-coloured noise (the food on a can, a product photo)
        top, left = int(rng.uniform(0, height * 0.6)), int(rng.uniform(0, width * 0.8))
        h, w = int(rng.uniform(height * 0.25, height * 0.6)), int(rng.uniform(width * 0.12, width * 0.35))
        h, w = min(h, height - top), min(w, width - left)  # the part inside the label
        panel = (slice(top, top + h), slice(left, left + w))
        points = np.stack([rows[panel], cols[panel], np.zeros((h, w))], axis=-1).reshape(-1, 3) / 16.0
        palette = np.asarray([_hsv_to_rgb(rng.uniform(), rng.uniform(0.3, 1.0), rng.uniform(0.2, 1.0)) for _ in range(3)])
        noise = _value_noise(points, rng.child_seed(), rng.uniform(0.8, 2.0), 3)
        image[panel] = _ramp(palette, 0.5 + 2.5 * (noise - 0.5)).reshape(h, w, 3)
    for _ in range(rng.choice([0, 1, 2, 3], [0.3, 0.35, 0.2, 0.15])):  # logos: filled ellipses, some ringed
        centre_row, centre_col = rng.uniform(0, height), rng.uniform(0, width)
        radius_row = rng.uniform(3, 14)
        radius_col = radius_row * rng.uniform(0.7, 2.5)
        distance = ((rows - centre_row) / radius_row) ** 2 + ((cols - centre_col) / radius_col) ** 2
        image[distance < 1] = _ink(rng, background)
        if rng.chance(0.4):
            image[(distance > 0.55) & (distance < 0.8)] = _ink(rng, background)
    for _ in range(rng.choice([1, 2, 3, 4, 6, 8], [0.1, 0.2, 0.2, 0.2, 0.2, 0.1])):  # lines of glyphs (text)
        glyph_height = rng.choice([2, 3, 4, 6, 9], [0.25, 0.3, 0.2, 0.15, 0.1])
        top = int(rng.uniform(0, height - glyph_height))
        col = rng.uniform(0, width * 0.6)
        end = col + rng.uniform(width * 0.15, width * 0.7)
        ink = _ink(rng, image[min(top + glyph_height // 2, height - 1), int(col) % width])
        while col < end:
            glyph_width = max(1, int(round(glyph_height * rng.uniform(0.4, 0.9))))
            glyph_top = top + (0 if rng.chance(0.7) else int(rng.uniform(0, glyph_height * 0.4)))
            first = int(col) % width
            image[glyph_top : top + glyph_height, first : first + glyph_width] = ink
            col += glyph_width + max(1.0, glyph_height * (rng.uniform(0.2, 0.45) if rng.chance(0.8) else rng.uniform(0.8, 1.4)))
    return np.clip(image, 0.0, 1.0)


def _print_albedo(texture: Dict, q: np.ndarray) -> np.ndarray:
    """The print's colour at normalised local points q [n, 3] (main axis +Y): cylindrical or box-like lookup. -> [n, 3]"""
    raster = _print_raster(int(texture["print_seed"]))  # [H, W, 3]
    height, width = raster.shape[:2]
    extent = np.maximum(np.abs(q).max(axis=0), 1e-6)  # [3] the primitive's reach along each local axis
    v = 0.5 - 0.5 * q[:, 1] / extent[1]
    if texture["mapping"] == "cylindrical":  # lids (the flat ends) plain, in the label's corner colour
        u = np.arctan2(q[:, 0], q[:, 2]) / (2 * math.pi) + 0.5
        lid = np.abs(q[:, 1]) > 0.985 * extent[1]
        u, v = np.where(lid, -texture["phase"], u), np.where(lid, 0.0, v)
    else:  # the side faces each take a quarter of the label, in turn around the axis; tops and bottoms the label's middle
        across = q[:, [0, 2]] / extent[[0, 2]]
        side = np.where(np.abs(across[:, 0]) > np.abs(across[:, 1]), np.where(across[:, 0] > 0, 1, 3), np.where(across[:, 1] > 0, 0, 2))
        along = np.where(side % 2 == 1, -across[:, 1] * np.sign(across[:, 0]), across[:, 0] * np.sign(across[:, 1]))
        u = (side + 0.5 + 0.5 * along) / 4.0
        cap = np.abs(q[:, 1] / extent[1]) > np.abs(across).max(axis=1)
        u = np.where(cap, 0.375 + 0.25 * (0.5 + 0.5 * across[:, 0]), u)
        v = np.where(cap, 0.25 + 0.5 * (0.5 + 0.5 * across[:, 1]), v)
    row = np.clip((v * height).astype(np.int64), 0, height - 1)
    col = (((u + texture["phase"]) % 1.0) * width).astype(np.int64) % width
    return raster[row, col]


def _value_noise(points: np.ndarray, seed: int, frequency: float, octaves: int) -> np.ndarray:
    """Fractal value noise in [0, 1] on a 16^3 random lattice (wrapped), trilinear with smoothstep."""
    lattice = np.random.Generator(np.random.PCG64(seed)).random((16, 16, 16))
    total, weight, norm = np.zeros(len(points)), 1.0, 0.0
    for octave in range(octaves):
        p = points * frequency * 2**octave + 3.7 * octave
        i = np.floor(p).astype(np.int64)
        f = p - i
        f = f * f * (3 - 2 * f)
        value = np.zeros(len(points))
        for corner in range(8):
            o = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
            w = np.prod(np.where(o, f, 1 - f), axis=1)
            idx = (i + o) % 16
            value += w * lattice[idx[:, 0], idx[:, 1], idx[:, 2]]
        total += weight * value
        norm += weight
        weight *= 0.5
    return total / norm


def _ramp(colors: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Piecewise-linear colour ramp through `colors` [K, 3] at t in [0, 1].  -> [n, 3]"""
    t = np.clip(t, 0.0, 1.0) * (len(colors) - 1)
    i = np.minimum(np.floor(t).astype(np.int64), len(colors) - 2)
    f = (t - i)[:, None]
    return (1 - f) * colors[i] + f * colors[i + 1]


def _texture_albedo(texture: Dict, q: np.ndarray) -> np.ndarray:
    """Albedo at object-space points `q` (a primitive's local frame, divided by its half-size).  -> [n, 3]"""
    kind = texture["kind"]
    if kind == PRINT:
        return _print_albedo(texture, q)
    colors = np.asarray(texture["colors"], dtype=np.float64)
    if kind == "solid":
        return np.broadcast_to(colors[0], q.shape).copy()
    if kind == "stripes":
        s = (q @ np.asarray(texture["direction"])) / texture["period"] + texture["phase"]
        return np.where(((s - np.floor(s)) < texture["duty"])[:, None], colors[0], colors[1])
    if kind == "checkers":
        cells = np.floor((q @ np.asarray(texture["rotation"]).T) / texture["cell"]).astype(np.int64)
        return np.where((cells.sum(axis=1) % 2 == 0)[:, None], colors[0], colors[1])
    if kind == "gradient":
        return _ramp(colors, 0.5 + 0.5 * (q @ np.asarray(texture["direction"])))
    if kind == "noise":
        n = _value_noise(q, texture["noise_seed"], texture["frequency"], texture["octaves"])
        return _ramp(colors, 0.5 + texture["contrast"] * (n - 0.5))
    if kind == "dots":
        p = (q @ np.asarray(texture["rotation"]).T) / texture["cell"]
        offset = p - np.floor(p) - 0.5
        inside = np.linalg.norm(offset, axis=1) < texture["radius"]
        return np.where(inside[:, None], colors[1], colors[0])
    raise ValueError(f"unknown texture {kind!r}")


# ---------------------------------------------------------------------------------------------- composition
@dataclass
class SyntheticObject:
    """One procedural object: unbatched Gaussians [N] and the recipe that made them (JSON-friendly)."""

    gaussians: Gaussians  # means [N, 3] etc., float32 on the CPU
    seed: int
    family: str
    primitives: List[Dict]  # type, params, rotation, translation, texture, area, visible_fraction, num_gaussians
    light: Dict  # the baked Lambertian light: direction (world, unit), ambient, kind (LIGHT_KINDS), baked

    @property
    def primitive_types(self) -> List[str]:
        return [p["type"] for p in self.primitives]


def _pick_anchor(rng: _Rng, parent: _Primitive, others: Sequence[_Primitive], prefer_top: bool):
    """A point on the parent's surface that is not buried in another primitive, and its normal."""
    points, normals, _ = parent.sample_world(rng, 48)
    free = np.ones(len(points), dtype=bool)
    for other in others:
        if other is not parent:
            free &= ~other.inside_world(points)
    if free.any():
        points, normals = points[free], normals[free]
    i = int(np.argmax(points[:, 1])) if prefer_top else rng.index(len(points))
    return points[i], normals[i]


def _attach(rng: _Rng, child: _Primitive, anchor: np.ndarray, normal: np.ndarray) -> None:
    """Orient the child (main axis along the normal, or across it for a torus handle) and sink it partly in."""
    if child.kind == "torus" and rng.chance(0.6):
        # A handle: the ring's axis lies in the tangent plane, half the ring sticks out.
        tangent = np.cross(normal, rng.unit_vectors(1)[0])
        tangent = tangent / max(np.linalg.norm(tangent), 1e-9)
        frame = np.stack([normal, tangent, np.cross(normal, tangent)], axis=1)  # columns: local x, y, z
        child.rotation = frame
        depth_fraction = rng.uniform(0.45, 0.75)
    elif rng.chance(0.2):
        child.rotation = rng.rotation()
        depth_fraction = rng.uniform(0.25, 0.7)
    else:
        twist = _axis_angle(np.array([0.0, 1.0, 0.0]), rng.uniform(0, 2 * math.pi))
        child.rotation = _rotation_y_to(normal) @ twist
        depth_fraction = rng.uniform(0.2, 0.8) if child.kind != "torus" else rng.uniform(0.6, 0.9)
    # The child reaches `reach` below its centre along -normal; put the centre above the anchor so that
    # the child sinks (1 - depth_fraction) * reach into the parent.
    child.translation = np.zeros(3)
    reach = child.support_world(-normal)
    child.translation = anchor + normal * reach * depth_fraction


def _compose(rng: _Rng, family: str, texture_kind: Optional[str]) -> List[_Primitive]:
    if family in PRIMITIVE_TYPES:
        kinds = [family]
    else:
        count = rng.choice([1, 2, 3, 4], [0.15, 0.3, 0.3, 0.25])
        kinds = [rng.choice(STANDARD_PRIMITIVES) for _ in range(count)]
        if family == "heldout":
            kinds[0 if count == 1 or rng.chance(0.5) else 1 + rng.index(count - 1)] = HELDOUT_PRIMITIVE
    palette = _random_palette(rng)
    body = _random_primitive(kinds[0], rng, 1.0)
    if rng.chance(0.35):  # tilted body (otherwise upright: main axis +Y)
        body.rotation = _axis_angle(np.array([1.0, 0.0, 0.0]) @ _axis_angle(np.array([0.0, 1.0, 0.0]), rng.uniform(0, 2 * math.pi)),
                                    rng.uniform(-0.5 * math.pi, 0.5 * math.pi))
    body.texture = _random_texture(rng, palette, texture_kind)
    prims = [body]
    while len(prims) < len(kinds):
        kind = kinds[len(prims)]
        parent = body if len(prims) == 1 or rng.chance(0.65) else prims[1 + rng.index(len(prims) - 1)]
        scale = parent.size() * rng.uniform(0.35, 0.75) if parent is body else parent.size() * rng.uniform(0.5, 0.9)
        child = _random_primitive(kind, rng, scale)
        anchor, normal = _pick_anchor(rng, parent, prims, prefer_top=rng.chance(0.3))
        _attach(rng, child, anchor, normal)
        child.texture = dict(parent.texture) if rng.chance(0.35) else _random_texture(rng, palette, texture_kind)
        prims.append(child)
        # Sometimes a mirrored twin across x = 0 (legs, arms, wheels) when the anchor is off-centre and a
        # slot is left (never taking the torus slot of a held-out object).
        nxt = len(prims)
        if (nxt < len(kinds) and (kinds[nxt] != HELDOUT_PRIMITIVE or kind == HELDOUT_PRIMITIVE)
                and abs(child.translation[0]) > 0.2 * body.size() and rng.chance(0.5)):
            kinds[nxt] = kind
            prims.append(child.mirrored())
    return prims


def _sample_surface(rng: _Rng, prims: Sequence[_Primitive], n: int):
    """Exactly n area-uniform points on the outer surface of the union of the primitives.

    Every round samples all primitives in proportion to their area and drops points inside another
    primitive; the kept points are uniform over the union's surface, and n of them are drawn at random.
    Returns world points [n, 3], normals [n, 3], primitive ids [n], local points [n, 3], the union's area,
    and per-primitive visible fractions.
    """
    areas = np.array([p.area() for p in prims])
    batches, candidates, kept_counts, have = [], np.zeros(len(prims)), np.zeros(len(prims)), 0
    keep_rate = 1.0
    while have < n:
        total = int(math.ceil(1.15 * (n - have) / max(keep_rate, 0.05))) + 64
        counts = np.floor(total * areas / areas.sum()).astype(np.int64)  # largest remainder rounding
        order = np.argsort(-(total * areas / areas.sum() - counts), kind="stable")
        counts[order[: total - counts.sum()]] += 1
        for i, prim in enumerate(prims):
            points, normals, local = prim.sample_world(rng, int(counts[i]))
            keep = np.ones(len(points), dtype=bool)
            for j, other in enumerate(prims):
                if j != i:
                    keep &= ~other.inside_world(points)
            candidates[i] += len(points)
            kept_counts[i] += keep.sum()
            batches.append((points[keep], normals[keep], np.full(int(keep.sum()), i), local[keep]))
            have += int(keep.sum())
        keep_rate = max(kept_counts.sum() / candidates.sum(), 1e-3)
    points, normals, ids, local = (np.concatenate([b[k] for b in batches]) for k in range(4))
    chosen = np.sort(np.argsort(rng.uniform(size=len(points)), kind="stable")[:n])
    union_area = float(areas.sum() * kept_counts.sum() / candidates.sum())
    visible = kept_counts / np.maximum(candidates, 1)
    return points[chosen], normals[chosen], ids[chosen], local[chosen], union_area, visible


def make_object(
    seed: int,
    num_gaussians: int = DEFAULT_NUM_GAUSSIANS,
    family: Optional[str] = None,
    texture: Optional[str] = None,
    shading: bool = True,
    lighting: str = "baked",
    print_fraction: float = 0.0,
) -> SyntheticObject:
    """The procedural object of `seed`: exactly `num_gaussians` Gaussians inside the sphere of radius 0.5.

    family: None (from the seed's split: 'heldout' there, else 'standard'), 'standard' (1-4 primitives, never
    a torus), 'heldout' (always a visible torus) or a primitive type (a one-primitive object).
    texture: force one texture kind on every primitive (None: random per primitive).
    shading: bake a Lambertian light into the colours (False: flat albedo, whatever `lighting` says).
    lighting: one of LIGHTINGS (see `light_kind_of_seed`); "baked" is the world of WORLD_VERSION 1.
    print_fraction: the chance that the body carries a printed label instead of its texture (an attachment: half
    that), drawn from a stream of its own so the shapes, and every texture not replaced, stay those of the seed
    (0: the world of WORLD_VERSION 1). texture="print" prints on every primitive.
    """
    if num_gaussians < 1:
        raise ValueError(f"num_gaussians must be positive, got {num_gaussians}")
    family = family_of_seed(seed) if family is None else family
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if texture is not None and texture not in TEXTURE_KINDS + (PRINT,):
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURE_KINDS + (PRINT,)}")
    if not 0.0 <= print_fraction <= 1.0:
        raise ValueError(f"print_fraction must lie in [0, 1], got {print_fraction}")
    rng = _Rng(seed)
    for _attempt in range(8):
        prims = _compose(rng, family, None if texture == PRINT else texture)
        points, normals, ids, local, union_area, visible = _sample_surface(rng, prims, num_gaussians)
        # A held-out object must show its torus; a composition that buries it is drawn again.
        tori = [i for i, p in enumerate(prims) if p.kind == HELDOUT_PRIMITIVE]
        if family != "heldout" or any(visible[i] > 0.3 for i in tori):
            break

    if texture == PRINT or print_fraction > 0:
        chance = _Rng(seed, "dd3g.synthetic.print-chance")
        for i, prim in enumerate(prims):
            draw = chance.uniform()  # one per primitive, whatever the fraction, so a seed's prints nest as it grows
            if texture == PRINT or draw < (print_fraction if i == 0 else 0.5 * print_fraction):
                prim.texture = _print_texture(sample_seed(seed, i), prim.kind)

    # Albedo from each primitive's texture in its own normalised frame.
    albedo = np.zeros((num_gaussians, 3))
    for i, prim in enumerate(prims):
        sel = ids == i
        albedo[sel] = _texture_albedo(prim.texture, local[sel] / prim.size())

    # Random yaw ("front" varies), then centre on the bounding box and fit the sphere, 3 sigma included.
    yaw = _axis_angle(np.array([0.0, 1.0, 0.0]), rng.uniform(0, 2 * math.pi))
    points, normals = points @ yaw.T, normals @ yaw.T
    centre = 0.5 * (points.min(axis=0) + points.max(axis=0))
    sigma = TANGENT_SPACING_RATIO * math.sqrt(union_area / num_gaussians)
    scale = OBJECT_RADIUS / (np.linalg.norm(points - centre, axis=1).max() + BOUND_SIGMAS * sigma)
    points, sigma = (points - centre) * scale, sigma * scale

    light_elevation, light_azimuth = rng.uniform(0.45, 1.2), rng.uniform(0, 2 * math.pi)
    light = np.array([math.cos(light_elevation) * math.sin(light_azimuth), math.sin(light_elevation),
                      math.cos(light_elevation) * math.cos(light_azimuth)])
    ambient = rng.uniform(0.4, 0.6)  # drawn for every kind, so later draws stay those of WORLD_VERSION 1
    kind = light_kind_of_seed(seed, lighting) if shading else "unlit"
    if kind == "soft":
        low, high = SOFT_AMBIENT
        ambient = low + (high - low) * (ambient - 0.4) / 0.2
    if kind != "unlit":
        lambert = np.clip(normals @ light, 0.0, 1.0)
        colors = albedo * (ambient + (1.0 - ambient) * lambert)[:, None]
    else:
        colors = albedo

    n = num_gaussians
    gaussians = Gaussians.from_activated(
        means=torch.from_numpy(points).float(),
        scales=torch.from_numpy(np.tile([sigma, sigma, THIN_RATIO * sigma], (n, 1))).float(),
        rotations=torch.from_numpy(_quats_z_to(normals)).float(),
        opacities=torch.full((n,), OPACITY),
        colors=torch.from_numpy(np.clip(colors, 0.0, 1.0)).float(),
    )
    description = []
    for i, prim in enumerate(prims):
        description.append({
            "type": prim.kind,
            "params": dict(prim.params),
            "rotation": (yaw @ prim.rotation).tolist(),  # local -> final world (before the scale)
            "translation": ((yaw @ prim.translation - centre) * scale).tolist(),
            "scale": float(scale),  # final world = scale * rotation @ local + translation
            "texture": prim.texture,
            "area": float(prim.area() * scale**2),
            "visible_fraction": float(visible[i]),
            "num_gaussians": int((ids == i).sum()),
        })
    return SyntheticObject(gaussians, int(seed), family, description,
                           {"direction": light.tolist(), "ambient": float(ambient), "baked": kind != "unlit", "kind": kind})


def batch_objects(
    seeds: Sequence[int],
    num_gaussians: int = DEFAULT_NUM_GAUSSIANS,
    family: Optional[str] = None,
    device: Union[str, torch.device, None] = None,
    workers: int = 1,
    **kwargs,
) -> Gaussians:
    """The objects of `seeds` stacked into one Gaussians [B, N] (made on the CPU, then moved to `device`).
    workers > 1: made by that many processes (a training pool of thousands takes ~40 ms an object on one core)."""
    if len(seeds) == 0:
        raise ValueError("batch_objects needs at least one seed")
    seeds = [int(s) for s in seeds]
    if workers > 1 and len(seeds) >= 4 * workers:
        import concurrent.futures
        import multiprocessing

        chunks = [seeds[k::workers] for k in range(workers)]  # strided: every chunk gets a similar mix
        # spawn, not fork: the caller may already hold a CUDA context
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            made = list(pool.map(_objects_of, chunks, [num_gaussians] * workers, [family] * workers, [kwargs] * workers))
        by_seed = {seed: g for chunk, objects in zip(chunks, made) for seed, g in zip(chunk, objects)}
        stacked = Gaussians.stack([by_seed[s] for s in seeds])
    else:
        stacked = Gaussians.stack(_objects_of(seeds, num_gaussians, family, kwargs))
    return stacked if device is None else stacked.to(device)


def _objects_of(seeds: Sequence[int], num_gaussians: int, family: Optional[str], options: Dict) -> List[Gaussians]:
    return [make_object(s, num_gaussians, family, **options).gaussians for s in seeds]


def render_views(
    gaussians: Gaussians,  # [B, N]
    elevation_deg: Union[float, Sequence[float], Tensor] = 0.0,  # scalar or [B]
    azimuth_offset_deg: Union[float, Sequence[float], Tensor] = 0.0,  # scalar or [B]
    size: int = 64,
    include_input: bool = True,
    layout: Optional[ViewLayout] = None,
    backend: str = "auto",
) -> Tensor:
    """Straight-alpha RGBA renders of the view layout (outputs, then the input view): [B, V(+1), 4, size, size]."""
    if len(gaussians.batch_shape) != 1:
        raise ValueError(f"render_views needs Gaussians [B, N], got batch shape {tuple(gaussians.batch_shape)}")
    batch = gaussians.batch_shape[0]
    elevation = torch.as_tensor(elevation_deg, dtype=torch.float32).expand(batch)
    offset = torch.as_tensor(azimuth_offset_deg, dtype=torch.float32).expand(batch)
    cameras = (layout or ViewLayout()).cameras(size, size, elevation, offset, include_input=include_input)  # [B, V(+1)]
    return render(gaussians, cameras, size, size, background=None, backend=backend).rgba()


def contact_sheet(
    seeds: Sequence[int],
    size: int = 128,
    num_gaussians: int = DEFAULT_NUM_GAUSSIANS,
    family: Optional[str] = None,
    elevation_deg: float = 15.0,
    azimuth_offset_deg: float = 45.0,
    **object_options,
):
    """A PIL image on white: one row per seed, the input view (azimuth 0) then the 4 output views.
    object_options: make_object's (lighting, print_fraction, texture...)."""
    from PIL import Image

    rows = []
    for seed in seeds:
        g = batch_objects([seed], num_gaussians, family, **object_options)
        rgba = render_views(g, elevation_deg, azimuth_offset_deg, size)[0]  # [V+1, 4, H, W]
        rgba = torch.cat([rgba[-1:], rgba[:-1]])  # input first
        rgb = rgba[:, :3] * rgba[:, 3:] + (1 - rgba[:, 3:])  # on white
        rows.append(torch.cat(list(rgb), dim=-1))  # [3, H, V W]
    sheet = torch.cat(rows, dim=-2)  # [3, R H, V W]
    return Image.fromarray((sheet.permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Procedural objects: a contact sheet and timings")
    parser.add_argument("--sheet", default=None, help="write a contact sheet PNG here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--split", default=None, help="take the seeds as indices into this split")
    parser.add_argument("--family", default=None)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--num-gaussians", type=int, default=DEFAULT_NUM_GAUSSIANS)
    parser.add_argument("--lighting", default="baked", choices=LIGHTINGS)
    parser.add_argument("--print-fraction", type=float, default=0.0, help="the chance of a printed label (make_object)")
    parser.add_argument("--benchmark", action="store_true", help="time object creation and CPU rendering")
    args = parser.parse_args(argv)
    world = {"lighting": args.lighting, "print_fraction": args.print_fraction}
    seeds = [split_seed(args.split, i) for i in args.seeds] if args.split else args.seeds
    if args.sheet:
        contact_sheet(seeds, args.size, args.num_gaussians, args.family, **world).save(args.sheet)
        print(f"wrote {args.sheet}")
    if args.benchmark:
        make_object(seeds[0], args.num_gaussians, args.family, **world)  # warm-up
        start = time.perf_counter()
        for s in range(20):
            make_object(seeds[0] + s, args.num_gaussians, args.family, **world)
        print(f"make_object: {(time.perf_counter() - start) / 20 * 1e3:.1f} ms per object ({args.num_gaussians} Gaussians)")
        g = batch_objects(seeds[:2], args.num_gaussians, args.family)
        render_views(g, 0.0, 0.0, 64)
        start = time.perf_counter()
        for _ in range(3):
            render_views(g, 0.0, 0.0, 64)
        print(f"render_views: {(time.perf_counter() - start) / 3 * 1e3:.0f} ms for batch 2 x 5 views at 64 px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
