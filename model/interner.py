"""Names to dense integer ids, numbered in order of first appearance."""
from __future__ import annotations

import numpy as np


def dense_ids(names: list, ids: dict, known: list | None) -> np.ndarray:
    """The id of each of ``names`` in ``ids``; names not there get the next ids, in order of appearance (appended
    to ``known``), or -1 where ``known`` is None. One dictionary read per name, in C, when all are known."""
    get = ids.get
    out = [get(name) for name in names]
    if None in out:
        for i in [i for i, found in enumerate(out) if found is None]:
            found = ids.get(names[i])
            if found is None and known is not None:
                found = ids[names[i]] = len(known)
                known.append(names[i])
            out[i] = -1 if found is None else found
    return np.array(out, dtype=np.int64)


class Interner:
    """Gives each name an id, in the order the stream first shows them: ids (and ties broken by them) depend on
    the stream alone, not on how it was batched or on the hash seed. An id is never given to another name."""

    def __init__(self, names: list[str | None] | None = None) -> None:
        self.names: list[str | None] = []  # id -> name; None once forgotten
        self.ids: dict[str, int] = {}
        self.load(names or [])

    def load(self, names: list[str | None]) -> None:
        """Hold ``names`` (by id; None for a forgotten one) instead, in place: whoever shares this sees them."""
        self.names[:] = names
        self.ids.clear()
        self.ids.update((name, i) for i, name in enumerate(names) if name is not None)

    def __len__(self) -> int:
        return len(self.names)

    def intern(self, names: list[str]) -> np.ndarray:
        """The id of each name, new names numbered in order."""
        return dense_ids(names, self.ids, self.names)

    def find(self, name: str) -> int | None:
        return self.ids.get(name)

    def forget(self, name: str) -> int | None:
        """Drop ``name``; its id (returned) stays unused."""
        found = self.ids.pop(name, None)
        if found is not None:
            self.names[found] = None
        return found
