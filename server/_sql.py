"""A query helper shared by the storage mixins."""
from __future__ import annotations

import sqlite3
from typing import Any, Iterable, Iterator

# Well under SQLite's limit on bound variables per statement.
_CHUNK = 500


def select_in(db: sqlite3.Connection, sql: str, args: tuple, values: Iterable[Any]) -> Iterator[tuple]:
    """Rows of ``sql`` (which ends in ``IN ({marks})``) for each distinct value, queried in chunks."""
    unique = list(dict.fromkeys(values))
    for start in range(0, len(unique), _CHUNK):
        part = unique[start : start + _CHUNK]
        yield from db.execute(sql.format(marks=",".join("?" * len(part))), (*args, *part))
