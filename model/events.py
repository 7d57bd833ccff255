"""A batch of validated events as columns, the unit the engine applies."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from .contexts import OTHER_DEVICE

if TYPE_CHECKING:
    from .config import TenantConfig


@dataclass(frozen=True)
class EventBatch:
    """Validated events, one array per field, all of the same length.

    Parameters
    ----------
    user_ids : object array of str.
    actions : int32 action codes of the tenant's vocabulary.
    ts : float64 event times, seconds since the epoch.
    device : int8 codes of ``contexts.DEVICES``.
    segment : int16 segment codes (0 = none, i + 1 = the tenant's i-th segment).
    tz_offset_min : int16 minutes east of UTC.
    event_ids, item_ids, categories, queries : object arrays, None where absent.
    """

    user_ids: np.ndarray
    actions: np.ndarray
    ts: np.ndarray
    device: np.ndarray
    segment: np.ndarray
    tz_offset_min: np.ndarray
    event_ids: np.ndarray
    item_ids: np.ndarray
    categories: np.ndarray
    queries: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.user_ids)
        for f in fields(self):
            if len(getattr(self, f.name)) != n:
                raise ValueError(f"column {f.name} has {len(getattr(self, f.name))} rows, user_ids has {n}")

    def __len__(self) -> int:
        return len(self.user_ids)

    def take(self, index: np.ndarray) -> "EventBatch":
        """The rows selected by a boolean mask or an index array."""
        return EventBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def concat(cls, batches: list["EventBatch"]) -> "EventBatch":
        """One batch holding ``batches`` in order."""
        return cls(**{f.name: np.concatenate([getattr(b, f.name) for b in batches]) for f in fields(cls)})

    @classmethod
    def build(
        cls,
        user_ids,
        actions,
        ts,
        *,
        device=None,
        segment=None,
        tz_offset_min=None,
        event_ids=None,
        item_ids=None,
        categories=None,
        queries=None,
    ) -> "EventBatch":
        """Columns with defaults for the optional fields (device 'other', no segment, UTC)."""
        n = len(user_ids)

        def objects(values):
            out = np.empty(n, dtype=object)
            if values is not None:
                out[:] = list(values)
            return out

        return cls(
            user_ids=objects(user_ids),
            actions=np.asarray(actions, dtype=np.int32),
            ts=np.asarray(ts, dtype=np.float64),
            device=np.full(n, OTHER_DEVICE, np.int8) if device is None else np.asarray(device, dtype=np.int8),
            segment=np.zeros(n, np.int16) if segment is None else np.asarray(segment, dtype=np.int16),
            tz_offset_min=np.zeros(n, np.int16) if tz_offset_min is None else np.asarray(tz_offset_min, np.int16),
            event_ids=objects(event_ids),
            item_ids=objects(item_ids),
            categories=objects(categories),
            queries=objects(queries),
        )


class ConfigChanged(Exception):
    """A batch validated under a config that was replaced before it committed uses what the new one lacks."""


def recode_events(batch: EventBatch, old: TenantConfig, new: TenantConfig) -> EventBatch:
    """``batch``, validated under ``old``, with its action and segment codes of ``new``; or :class:`ConfigChanged`."""
    actions = {a: i for i, a in enumerate(new.actions)}
    segments = {s: i + 1 for i, s in enumerate(new.segments)}
    action_map = np.array([actions.get(a, -1) for a in old.actions], dtype=np.int32)
    segment_map = np.array([0, *(segments.get(s, -1) for s in old.segments)], dtype=np.int16)
    new_actions, new_segments = action_map[batch.actions], segment_map[batch.segment]
    gone = sorted({old.actions[a] for a in batch.actions[new_actions < 0]})
    gone += sorted({f"segment {old.segments[s - 1]}" for s in batch.segment[new_segments < 0]})
    if gone:
        raise ConfigChanged(f"the tenant's config changed while this batch was in flight and no longer has "
                            f"{', '.join(map(repr, gone[:10]))}; nothing was accepted")
    return dataclasses.replace(batch, actions=new_actions, segment=new_segments)
