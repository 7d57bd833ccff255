"""The answer of ``POST /v1/score``, from the predictions and decisions a worker made."""
from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from model.decisions import Prediction


def shown_signals(decisions, shown: list[dict[str, Any] | None]) -> list[dict[str, Any] | None]:
    """Per user, the signal a score answers with: the one decided now, else the user's latest open one (decided at
    ingest, or at an earlier score): one truth per user. A withheld (holdout) decision shows as none."""
    return [d.signal() if d is not None and not d.withheld else open_signal for d, open_signal in zip(decisions, shown)]


def plain(value: Any) -> Any:
    """NumPy values as the Python values msgpack packs (its ``default`` hook)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot encode {type(value).__name__}")


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
