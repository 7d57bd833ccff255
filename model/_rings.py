"""Vectorized appends of many items, several per owner, into per-owner ring buffers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RingPlan:
    """Where each appended item goes, in arrival order grouped by owner."""

    order: np.ndarray  # stable sort of items by owner
    owners: np.ndarray  # owner of each sorted item
    rank: np.ndarray  # position of each sorted item within its owner's group
    first: np.ndarray  # sorted item is its owner's first in this append
    unique_owners: np.ndarray
    counts: np.ndarray  # items per unique owner
    last: np.ndarray  # index (into sorted items) of each unique owner's last item


def plan_ring_append(owner: np.ndarray) -> RingPlan:
    """Group items by owner, keeping arrival order inside each group."""
    order = np.argsort(owner, kind="stable")
    owners = owner[order]
    first = np.ones(len(owners), dtype=bool)
    first[1:] = owners[1:] != owners[:-1]
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(owners)))
    rank = np.arange(len(owners)) - np.repeat(starts, counts)
    return RingPlan(order, owners, rank, first, owners[starts], counts, starts + counts - 1)


def ring_write(
    plan: RingPlan, head: np.ndarray, size: int, columns: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    """Write sorted values into ``[owner, slot]`` rings of ``size`` slots and advance ``head``.

    Items beyond the last ``size`` of an owner would be overwritten anyway; they are skipped so
    that no slot is written twice in one fancy assignment (whose order NumPy does not promise).
    """
    per_item_count = np.repeat(plan.counts, plan.counts)
    keep = plan.rank >= per_item_count - size
    slots = (head[plan.owners] + plan.rank) % size
    for ring, sorted_values in columns:
        ring[plan.owners[keep], slots[keep]] = sorted_values[keep]
    head[plan.unique_owners] = (head[plan.unique_owners] + plan.counts) % size


def grow(array: np.ndarray, rows: int, fill) -> np.ndarray:
    """``array`` with at least ``rows`` rows, new rows set to ``fill`` (capacity doubles)."""
    if rows <= len(array):
        return array
    capacity = max(rows, 2 * len(array), 1024)
    out = np.full((capacity,) + array.shape[1:], fill, dtype=array.dtype)
    out[: len(array)] = array
    return out
