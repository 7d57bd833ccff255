"""Contexts: device x daypart (from event time and the user's time zone) x optional segment."""
from __future__ import annotations

import numpy as np

DEVICES = ("desktop", "mobile", "tablet", "other")
DAYPARTS = ("night", "morning", "afternoon", "evening")
_PER_SEGMENT = len(DEVICES) * len(DAYPARTS)
OTHER_DEVICE = DEVICES.index("other")


def n_contexts(n_segments: int) -> int:
    """Contexts for a tenant with ``n_segments`` named segments (code 0 is 'no segment')."""
    return _PER_SEGMENT * (n_segments + 1)


def daypart_codes(ts: np.ndarray, tz_offset_min: np.ndarray) -> np.ndarray:
    """0 night (0-6 h), 1 morning, 2 afternoon, 3 evening, by local hour."""
    local_hour = np.floor_divide(np.asarray(ts, dtype=np.float64) + np.asarray(tz_offset_min) * 60.0, 3600.0) % 24
    return (local_hour // 6).astype(np.int32)


def context_codes(device: np.ndarray, ts: np.ndarray, tz_offset_min: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """One int code per event: segment * 16 + device * 4 + daypart."""
    return (
        np.asarray(segment, dtype=np.int32) * _PER_SEGMENT
        + np.asarray(device, dtype=np.int32) * len(DAYPARTS)
        + daypart_codes(ts, tz_offset_min)
    )


def context_parts(codes):
    """(segment, device, daypart) codes of context codes (arrays or ints)."""
    segment, rest = np.divmod(codes, _PER_SEGMENT)
    device, daypart = np.divmod(rest, len(DAYPARTS))
    return segment, device, daypart


def describe_context(code: int, segments: tuple[str, ...]) -> dict[str, str | None]:
    """The named parts of a context code."""
    segment, device, daypart = (int(x) for x in context_parts(int(code)))
    return {
        "device": DEVICES[device],
        "daypart": DAYPARTS[daypart],
        "segment": segments[segment - 1] if segment else None,
    }
