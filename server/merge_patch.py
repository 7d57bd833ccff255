"""JSON merge patch (RFC 7396): how ``PUT /v1/config`` applies a partial config to the current one."""
from __future__ import annotations

from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with ``patch`` applied: objects merge key by key, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    # A loop, not recursion: a hostile body may nest objects as deep as the JSON parser allows.
    pending = [(result, patch)]
    while pending:
        merged, changes = pending.pop()
        for key, value in changes.items():
            if value is None:
                merged.pop(key, None)
            elif isinstance(value, dict):
                current = merged.get(key)
                nested = dict(current) if isinstance(current, dict) else {}
                merged[key] = nested
                pending.append((nested, value))
            else:
                merged[key] = value
    return result
