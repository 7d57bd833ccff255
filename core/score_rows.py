"""The answer of ``POST /v1/score``, from the predictions and decisions a worker made."""
from __future__ import annotations

import functools
from typing import Any, Callable

import msgpack
import numpy as np

from model.decisions import Prediction


def shown_signals(decisions, user_ids: list[str], open_signal: Callable[[str], dict[str, Any] | None]
                  ) -> list[dict[str, Any] | None]:
    """Per user, the signal a score answers with: the one decided now, else the user's latest open one (decided at
    ingest, or at an earlier score; ``open_signal``): one truth per user. A withheld (holdout) decision shows as
    none."""
    return [d.signal() if d is not None and not d.withheld else open_signal(uid) for d, uid in zip(decisions, user_ids)]


def plain(value: Any) -> Any:
    """NumPy values as the Python values msgpack packs (its ``default`` hook)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot encode {type(value).__name__}")


_RECORDS_FROM = 32  # users in a batch from which packing by records beats a dict per user (measured)


def packed_results(actions: tuple[str, ...], user_ids: list[str], p: Prediction,
                   signals: list[dict[str, Any] | None]) -> list[bytes]:
    """:func:`result_rows`, each row packed: the same bytes either way, by :class:`RowPacker` from
    ``_RECORDS_FROM`` users on."""
    if len(user_ids) < _RECORDS_FROM:
        return packed_rows(result_rows(actions, user_ids, p, signals))
    return _row_packer(actions).pack(user_ids, p, signals)


@functools.lru_cache(maxsize=64)
def _row_packer(actions: tuple[str, ...]) -> "RowPacker":
    return RowPacker(actions)


def packed_rows(rows: list[dict[str, Any]]) -> list[bytes]:
    """Each result row packed on its own (msgpack), where it is made: the server splices a request's rows into its
    answer instead of building and packing them on its event loop."""
    pack = msgpack.Packer(default=plain, use_bin_type=True).pack
    return [pack(row) for row in rows]


def result_rows(actions: tuple[str, ...], user_ids: list[str], p: Prediction,
                signals: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The ``POST /v1/score`` results, from the prediction's arrays and each user's signal (or None)."""
    names = [*actions, "session_end"]
    rounded = np.round(p.next_probs, 6)
    best = [names[i] for i in rounded.argmax(axis=1).tolist()]
    if rounded.shape[1] > len(actions):  # the Transformer answered for some: the others have no 'session_end'
        probs = [row if by_model else row[: len(actions)]
                 for row, by_model in zip(rounded.tolist(), p.by_model.tolist())]
    else:
        probs = rounded.tolist()
    predictors = ["transformer" if m else "markov" for m in p.by_model.tolist()]
    out = []
    for uid, score, row, next_action, p5, p60, predictor, signal in zip(
        user_ids, p.score.tolist(), probs, best, p.purchase_5m.tolist(), p.purchase_60m.tolist(), predictors, signals,
    ):
        out.append(
            {
                "user_id": uid,
                "score": score,
                "predicted": {
                    "next_action": next_action,
                    "probs": dict(zip(names, row)),
                    "purchase_5m": p5,
                    "purchase_60m": p60,
                    "predictor": predictor,
                },
                "signal": signal,
            }
        )
    return out


def _template(parts: list[bytes | str]) -> tuple[np.dtype, dict[str, bytes]]:
    """A packed record of constant bytes and big-endian doubles (msgpack's float 64 after its 0xcb marker):
    ``parts`` are bytes, or the name of a value."""
    fields, constants = [], {}
    for i, part in enumerate(parts):
        if isinstance(part, bytes):
            fields.append((f"_{i}", f"S{len(part)}"))
            constants[f"_{i}"] = part
        else:
            fields.append((part, ">f8"))
    return np.dtype(fields), constants


def _fill(template: tuple[np.dtype, dict[str, bytes]], values: dict[str, np.ndarray]) -> list[bytes]:
    dtype, constants = template
    records = np.empty(len(next(iter(values.values()))), dtype)
    for name, part in constants.items():
        records[name] = part
    for name, column in values.items():
        records[name] = column
    flat, size = records.tobytes(), dtype.itemsize
    return [flat[i: i + size] for i in range(0, len(flat), size)]


class RowPacker:
    """:func:`packed_rows` of :func:`result_rows`, the same bytes, without a dict or a packer call per user: the
    parts of a row that are numbers are written for the whole batch at once into fixed records, and a row is
    joined from its user id, those records, its next action's name and its signal."""

    def __init__(self, actions: tuple[str, ...]):
        pack = msgpack.Packer(use_bin_type=True).pack
        self.actions = actions
        self.names = [*actions, "session_end"]
        self._pack = msgpack.Packer(default=plain, use_bin_type=True).pack
        self._head = b"\x84" + pack("user_id")
        self._score = _template([pack("score") + b"\xcb", "score",
                                 pack("predicted") + b"\x85" + pack("next_action")])
        self._name = [pack(name) for name in self.names]
        # The rest of "predicted", per (probabilities, predictor): where the Transformer answered for some rows,
        # theirs have one more probability ('session_end').
        self._rest = {
            (width, by_model): _template([
                pack("probs") + msgpack.Packer().pack_map_header(width),
                *[part for i, name in enumerate(self.names[:width]) for part in (pack(name) + b"\xcb", f"p{i}")],
                pack("purchase_5m") + b"\xcb", "purchase_5m", pack("purchase_60m") + b"\xcb", "purchase_60m",
                pack("predictor") + pack("transformer" if by_model else "markov") + pack("signal"),
            ])
            for width in (len(actions), len(actions) + 1) for by_model in (False, True)
        }

    def pack(self, user_ids: list[str], p: Prediction, signals: list[dict[str, Any] | None]) -> list[bytes]:
        n = len(user_ids)
        if not n:
            return []
        rounded = np.round(p.next_probs, 6)
        best = rounded.argmax(axis=1).tolist()
        scores = _fill(self._score, {"score": p.score})
        by_model = np.asarray(p.by_model, bool)
        widths = np.where(by_model, rounded.shape[1], len(self.actions))
        rest: list[bytes] = [b""] * n
        for (width, model_rows), template in self._rest.items():
            rows = np.flatnonzero((widths == width) & (by_model == model_rows))
            if not len(rows):
                continue
            values = {f"p{i}": rounded[rows, i] for i in range(width)}
            values |= {"purchase_5m": p.purchase_5m[rows], "purchase_60m": p.purchase_60m[rows]}
            for row, part in zip(rows.tolist(), _fill(template, values)):
                rest[row] = part
        head, names, pack = self._head, self._name, self._pack
        return [
            b"".join((head, pack(uid), score, names[b], tail, b"\xc0" if signal is None else pack(signal)))
            for uid, score, b, tail, signal in zip(user_ids, scores, best, rest, signals)
        ]
