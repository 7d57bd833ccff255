"""Philox stream keys shared by the GPU backends."""
from __future__ import annotations

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def stream_key(seed: int, offset: int) -> int:
    """A 63-bit Philox key for (seed, offset): different pairs give independent streams."""
    return _splitmix64(_splitmix64(int(seed) & _MASK64) ^ (int(offset) & _MASK64)) >> 1
