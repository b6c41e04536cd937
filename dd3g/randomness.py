"""Keyed randomness (docs/design.md section 4): every per-sample draw comes from its own CPU generator.

A sample's noise depends only on its seed, never on its batch position, the device or the number of
processes, so a stored seed reproduces the teacher's N exactly and a resumed run draws what it would have.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch

_SEED_SPACE = 2**63 - 1


def sample_seed(*keys: int | str) -> int:
    """A 63-bit seed from a key such as (run seed, global sample index, step): stable across Python runs."""
    text = "/".join(str(k) for k in keys).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") % _SEED_SPACE


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed` (draw on the CPU, then move to the device)."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def noise_from_seeds(shape: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
    """One standard normal tensor of `shape` per seed, stacked: [len(seeds), *shape], float32 on the CPU."""
    return torch.stack([torch.randn(tuple(shape), generator=generator(s)) for s in seeds])


def noise_sha256(noise: torch.Tensor) -> str:
    """A hash of one sample's noise (float32, contiguous, little-endian bytes): stored beside quadruples."""
    return hashlib.sha256(noise.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()
