"""The answer of ``POST /v1/score``, from the predictions and decisions made on the device thread."""
from __future__ import annotations

from typing import Any

import numpy as np

from model.decisions import Prediction


def result_rows(actions: tuple[str, ...], user_ids: list[str], p: Prediction, decisions,
                shown: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The ``POST /v1/score`` results. ``signal`` is the signal decided now, else the user's latest open one
    (decided at ingest, or at an earlier score): one truth per user. A withheld (holdout) decision shows as none."""
    names = [*actions, "session_end"]
    probs = np.round(p.next_probs, 6)
    out = []
    for i, uid in enumerate(user_ids):
        row = probs[i] if p.by_model[i] else probs[i, : len(actions)]
        d = decisions[i]
        out.append(
            {
                "user_id": uid,
                "score": float(p.score[i]),
                "predicted": {
                    "next_action": names[int(row.argmax())],
                    "probs": dict(zip(names, row.tolist())),
                    "purchase_5m": float(p.purchase_5m[i]),
                    "purchase_60m": float(p.purchase_60m[i]),
                    "predictor": "transformer" if p.by_model[i] else "markov",
                },
                "signal": d.signal() if d is not None and not d.withheld else shown[i],
            }
        )
    return out
