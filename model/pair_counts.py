"""Sparse counts of (row, column) pairs of small integers in sorted NumPy arrays: the item catalog's co-visits
(item, item) and popularity (category, item), counted a batch at a time, with no Python loop per pair."""
from __future__ import annotations

import numpy as np

_MIN_NEW = 8192  # keys new since the last merge that never trigger one (merging a small table often is waste)


def _key(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return (rows.astype(np.int64) << 32) | cols.astype(np.int64)


def _find(table: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``keys`` sits in the sorted ``table``, and whether it is there."""
    pos = np.searchsorted(table, keys)
    found = np.zeros(len(keys), dtype=bool)
    inside = pos < len(table)
    found[inside] = table[pos[inside]] == keys[inside]
    return pos, found


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(lo[i], hi[i])`` over i."""
    sizes = hi - lo
    if not sizes.sum():
        return np.zeros(0, dtype=np.int64)
    starts = np.repeat(lo - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return np.arange(sizes.sum()) + starts


class PairCounts:
    """Counts keyed by (row, col), both below 2**31.

    The keys live in a large sorted array and a small sorted one for those new since the last merge, which joins
    the large one once it holds a quarter as many: a batch costs O(batch · log n), plus merges amortised over the
    keys they add. A pruned pair keeps its place with a count of 0 until the next merge, and counts from 1 again
    if it comes back.
    """

    def __init__(self) -> None:
        self.keys = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)
        self.new_keys = np.zeros(0, dtype=np.int64)
        self.new_counts = np.zeros(0, dtype=np.int64)
        self.row_len = np.zeros(0, dtype=np.int64)  # pairs counted (count > 0) in each row

    def __len__(self) -> int:
        return int(self.row_len.sum())

    def add(self, rows: np.ndarray, cols: np.ndarray) -> None:
        """Count each (rows[i], cols[i]) once."""
        if not len(rows):
            return
        keys, n = np.unique(_key(rows, cols), return_counts=True)
        grown = []  # keys whose count goes from 0 (or nothing) to positive: their rows get longer
        for table, counts in ((self.keys, self.counts), (self.new_keys, self.new_counts)):
            pos, found = _find(table, keys)
            at = pos[found]
            grown.append(keys[found][counts[at] == 0])
            counts[at] += n[found]
            keys, n = keys[~found], n[~found]
        if len(keys):
            grown.append(keys)
            at = np.searchsorted(self.new_keys, keys)
            self.new_keys, self.new_counts = np.insert(self.new_keys, at, keys), np.insert(self.new_counts, at, n)
        longer = np.bincount(np.concatenate(grown) >> 32)
        if len(longer) > len(self.row_len):
            self.row_len = np.concatenate([self.row_len, np.zeros(len(longer) - len(self.row_len), np.int64)])
        self.row_len[:len(longer)] += longer
        if len(self.new_keys) > max(_MIN_NEW, len(self.keys) // 4):
            self.merge()

    def merge(self) -> None:
        """One sorted table, without the pruned pairs."""
        at = np.searchsorted(self.keys, self.new_keys)
        keys, counts = np.insert(self.keys, at, self.new_keys), np.insert(self.counts, at, self.new_counts)
        kept = counts > 0
        self.keys, self.counts = keys[kept], counts[kept]
        self.new_keys, self.new_counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)

    def prune(self, keep: int, limit: int) -> None:
        """Rows with more than ``limit`` pairs keep their ``keep`` largest counts, ties to the smaller column."""
        rows = np.flatnonzero(self.row_len > limit)
        if not len(rows):
            return
        parts = []
        for part, (table, counts) in enumerate(((self.keys, self.counts), (self.new_keys, self.new_counts))):
            at = _ranges(np.searchsorted(table, rows.astype(np.int64) << 32),
                         np.searchsorted(table, (rows.astype(np.int64) + 1) << 32))
            at = at[counts[at] > 0]
            parts.append((np.full(len(at), part), at, table[at], counts[at]))
        part, at, keys, counts = (np.concatenate(p) for p in zip(*parts))
        row, col = keys >> 32, keys & 0xFFFFFFFF
        order = np.lexsort((col, -counts, row))
        row = row[order]
        first = np.concatenate([[True], row[1:] != row[:-1]])
        starts = np.flatnonzero(first)
        rank = np.arange(len(row)) - np.repeat(starts, np.diff(np.concatenate([starts, [len(row)]])))
        dropped = order[rank >= keep]
        self.counts[at[dropped[part[dropped] == 0]]] = 0
        self.new_counts[at[dropped[part[dropped] == 1]]] = 0
        self.row_len[rows] = keep

    def row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The columns counted in ``row`` and their counts."""
        cols, counts = [], []
        for table, table_counts in ((self.keys, self.counts), (self.new_keys, self.new_counts)):
            lo, hi = np.searchsorted(table, [row << 32, (row + 1) << 32])
            kept = table_counts[lo:hi] > 0
            cols.append(table[lo:hi][kept] & 0xFFFFFFFF)
            counts.append(table_counts[lo:hi][kept])
        return np.concatenate(cols), np.concatenate(counts)

    def ranked(self, rows: list[int]) -> np.ndarray:
        """The columns of ``rows``, by their summed counts (largest first, ties to the smaller column)."""
        parts = [self.row(r) for r in rows]
        if not parts:
            return np.zeros(0, dtype=np.int64)
        cols = np.concatenate([c for c, _ in parts])
        counts = np.concatenate([n for _, n in parts])
        cols, where = np.unique(cols, return_inverse=True)
        total = np.bincount(where, weights=counts, minlength=len(cols))
        return cols[np.lexsort((cols, -total))]

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        self.merge()
        return self.keys, self.counts

    def load(self, keys: np.ndarray, counts: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys, self.counts = keys[order].astype(np.int64), counts[order].astype(np.int64)
        self.new_keys, self.new_counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        self.row_len = np.bincount(self.keys[self.counts > 0] >> 32).astype(np.int64)

    @classmethod
    def of(cls, rows: np.ndarray, cols: np.ndarray, counts: np.ndarray) -> "PairCounts":
        table = cls()
        table.load(_key(np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)),
                   np.asarray(counts, dtype=np.int64))
        return table
