"""The learned combination: Bayesian logistic regression updated online from attributed outcomes.

The weights have a Gaussian posterior N(mean, precision⁻¹). Its prior mean is the heuristic model
(weight 1 on the feature that carries the heuristic prediction, 0 elsewhere), so a fresh tenant starts
from the heuristic and moves as far as its own outcomes say. Each batch of resolved outcomes is a
Laplace update (a few Newton steps from the current mean). Evidence forgets in event time: the
precision relaxes toward the prior's, the mean stays where the data put it. The posterior mean answers
scores; draws from the posterior (Thompson sampling) explore.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import cho_factor, cho_solve, solve_triangular

_NEWTON_STEPS = 8
_CLIP = 30.0


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -_CLIP, _CLIP)))


class OnlineLogit:
    """P(y | x) = sigmoid(x · w), with w ~ N(mean, precision⁻¹) learned online.

    Parameters
    ----------
    prior_mean : [d] the heuristic weights a fresh tenant starts from.
    prior_sd : [d] or scalar standard deviation of the prior.
    forget_half_life_s : data precision halves after this much event time.
    """

    def __init__(self, prior_mean: np.ndarray, prior_sd, forget_half_life_s: float):
        self.prior_mean = np.asarray(prior_mean, np.float64)
        d = len(self.prior_mean)
        self.prior_precision = np.diag(1.0 / np.broadcast_to(np.asarray(prior_sd, np.float64), (d,)) ** 2)
        self.forget_half_life_s = forget_half_life_s
        self.mean = self.prior_mean.copy()
        self.precision = self.prior_precision.copy()
        self.clock_s = -np.inf
        self.outcomes = 0.0  # weighted outcomes learned from, for reports
        # L^-T for the Cholesky factor L of the precision, while the precision holds: a draw is then one
        # matrix product (a triangular solve per scoring batch cost more in call overhead than in arithmetic).
        self._draw_factor: np.ndarray | None = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Posterior-mean probability per row of ``x``."""
        return sigmoid(np.asarray(x, np.float64) @ self.mean)

    def logit(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.mean

    def draw(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Probability per row under its own draw of the weights (Thompson sampling).

        Only each row's logit is used, and under w ~ N(mean, S) it is N(x . mean, x S x'): one normal per row
        draws it exactly, where a weight vector per row took a normal per feature (7.7 of 54 ms of an 8,192-user
        score).
        """
        x = np.asarray(x, np.float64)
        spread = np.linalg.norm(x @ self.draw_factor(), axis=1)
        return sigmoid(x @ self.mean + spread * rng.standard_normal(len(x)))

    def draw_factor(self) -> np.ndarray:
        """F with F F' = S, the weights' covariance, so that a row's logit has spread |x F|."""
        if self._draw_factor is None:
            # S = precision^-1 = (L L')^-1 = F F' with F = L^-T.
            lower = np.linalg.cholesky(self.precision)
            self._draw_factor = solve_triangular(lower, np.eye(len(lower)), lower=True).T
        return self._draw_factor

    def update(self, x: np.ndarray, y: np.ndarray, weight: np.ndarray, now_s: float) -> None:
        """Learn from resolved outcomes (x, y) with example weights; ``now_s`` dates them for forgetting."""
        self._forget(now_s)
        if not len(y):
            return
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        w = np.asarray(weight, np.float64)
        prior_mean, prior_precision = self.mean, self.precision

        def objective(m: np.ndarray) -> float:
            z = x @ m
            # -log likelihood of the batch, plus the Gaussian prior's quadratic form
            nll = float(w @ (np.logaddexp(0.0, z) - y * z))
            d = m - prior_mean
            return nll + 0.5 * float(d @ prior_precision @ d)

        mean, value = prior_mean.copy(), objective(prior_mean)
        for _ in range(_NEWTON_STEPS):
            p = sigmoid(x @ mean)
            gradient = prior_precision @ (mean - prior_mean) - x.T @ (w * (y - p))
            hessian = prior_precision + (x * (w * p * (1.0 - p))[:, None]).T @ x
            step = cho_solve(cho_factor(hessian), gradient)
            size = 1.0
            while size > 1e-3:  # backtrack: a full Newton step can overshoot far from the optimum
                candidate = mean - size * step
                new_value = objective(candidate)
                if new_value <= value:
                    break
                size /= 2.0
            else:
                break
            converged = value - new_value < 1e-6 * (1.0 + abs(value))
            mean, value = candidate, new_value
            if converged:
                break
        p = sigmoid(x @ mean)
        self.mean = mean
        self.precision = prior_precision + (x * (w * p * (1.0 - p))[:, None]).T @ x
        self._draw_factor = None
        self.outcomes += float(w.sum())

    def _forget(self, now_s: float) -> None:
        if np.isfinite(self.clock_s) and now_s > self.clock_s:
            factor = float(np.exp2(-(now_s - self.clock_s) / self.forget_half_life_s))
            self.precision = self.prior_precision + factor * (self.precision - self.prior_precision)
            self._draw_factor = None
        self.clock_s = max(self.clock_s, now_s)

    def state_dict(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.mean": self.mean.copy(), f"{prefix}.precision": self.precision.copy(),
                f"{prefix}.scalars": np.array([self.clock_s, self.outcomes])}

    def load_state(self, state: dict[str, np.ndarray], prefix: str) -> None:
        self.mean = state[f"{prefix}.mean"].copy()
        self.precision = state[f"{prefix}.precision"].copy()
        self._draw_factor = None
        self.clock_s, self.outcomes = (float(v) for v in state[f"{prefix}.scalars"])


_FIELDS = ("user", "ts", "action", "x", "weight")
_CHUNK_ROWS = 1024


class Deferred:
    """An array to be concatenated from parts that never change, when it is needed (a snapshot's writer thread)."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts

    def __call__(self) -> np.ndarray:
        return np.concatenate(self.parts)


def resolve(state: dict) -> dict[str, np.ndarray]:
    """``state`` with every :class:`Deferred` array made."""
    return {k: v() if isinstance(v, Deferred) else v for k, v in state.items()}


class ExampleQueue:
    """Feature rows waiting for their outcome; bounded by sampling.

    When more than ``capacity`` wait, only every ``stride``-th new row is kept (the stride doubles),
    and kept rows carry weight ``stride``, so the learned model stays unbiased. The choice depends only
    on the order of events, so a replay keeps the same rows.
    """

    def __init__(self, horizon_s: float, width: int, capacity: int = 65536, min_batch: int = 64,
                 max_wait_s: float = 3600.0):
        self.horizon_s, self.width, self.capacity = horizon_s, width, capacity
        self.min_batch, self.max_wait_s = min_batch, max_wait_s
        self.chunks: list[dict[str, np.ndarray]] = []
        self._due: list[dict[str, np.ndarray]] = []  # resolved, waiting for enough to learn from
        self.stride = 1
        self.seen = 0
        self.updated_s = -np.inf
        self.waiting_at_tick = 0  # rows waiting when the stride was last set
        self.sampled_since_tick = 0  # rows the stride kept since then (before thinning)

    def __len__(self) -> int:
        return sum(len(c["ts"]) for c in self.chunks)

    def adapt(self) -> None:
        """Set the sampling stride from how many rows wait (called at the engine's ticks)."""
        waiting = len(self)
        if waiting > self.capacity:
            self.stride *= 2
        elif waiting < self.capacity // 4 and self.stride > 1:
            self.stride //= 2
        self.waiting_at_tick, self.sampled_since_tick = waiting, 0

    def push(self, user: np.ndarray, ts: np.ndarray, action: np.ndarray, x: np.ndarray) -> None:
        keep = (self.seen + np.arange(len(ts))) % self.stride == 0
        self.seen += len(ts)
        # Between ticks the stride stays, so a flood would grow the queue without bound: past twice the capacity,
        # each doubling of the rows sampled since the tick halves the share kept (levels by their count, so the
        # choice still depends only on the order of events). The queue then grows by about ``capacity`` rows per
        # doubling, and kept rows weigh what they stand for.
        sampled = self.sampled_since_tick + np.cumsum(keep) - 1
        self.sampled_since_tick += int(keep.sum())
        level = np.floor(np.log2(np.maximum((self.waiting_at_tick + sampled) / self.capacity, 1.0))).astype(np.int64)
        thin = 2 ** level
        keep &= sampled % thin == 0
        if not keep.any():
            return
        chunk = {"user": user[keep].astype(np.int64), "ts": ts[keep].astype(np.float64),
                 "action": action[keep].astype(np.int32), "x": x[keep].astype(np.float32),
                 "weight": (self.stride * thin[keep]).astype(np.float32)}
        # Small pushes join the last chunk, so chunks stay few without copying the whole queue.
        if self.chunks and len(self.chunks[-1]["ts"]) < _CHUNK_ROWS:
            last = self.chunks[-1]
            chunk = {k: np.concatenate([last[k], chunk[k]]) for k in _FIELDS}
            self.chunks[-1] = chunk
        else:
            self.chunks.append(chunk)

    def resolve(self, watermark: float, now_s: float) -> dict[str, np.ndarray] | None:
        """Rows whose horizon ended before ``watermark``, once there are enough of them to learn from.

        One update per handful of outcomes costs the same as one per outcome: due rows wait (in order) until
        ``min_batch`` are due, or ``max_wait_s`` of event time has passed since the last update.
        """
        due = self.pop_due(watermark)
        if len(due["ts"]):
            self._due.append(due)
        waiting = sum(len(d["ts"]) for d in self._due)
        if not waiting or (waiting < self.min_batch and now_s - self.updated_s < self.max_wait_s):
            return None
        out = {k: np.concatenate([d[k] for d in self._due]) for k in _FIELDS}
        self._due, self.updated_s = [], now_s
        return out

    def pop_due(self, watermark: float) -> dict[str, np.ndarray]:
        """Rows whose horizon ended before ``watermark`` (they are removed)."""
        cutoff = watermark - self.horizon_s
        taken, kept = [], []
        for chunk in self.chunks:
            if chunk["ts"].min() >= cutoff:  # most chunks: nothing due yet
                kept.append(chunk)
                continue
            due = chunk["ts"] < cutoff
            taken.append({k: v[due] for k, v in chunk.items()})
            if not due.all():
                kept.append({k: v[~due] for k, v in chunk.items()})
        self.chunks = kept
        if not taken:
            return {"user": np.zeros(0, np.int64), "ts": np.zeros(0), "action": np.zeros(0, np.int32),
                    "x": np.zeros((0, self.width), np.float32), "weight": np.zeros(0, np.float32)}
        return {k: np.concatenate([c[k] for c in taken]) for k in _FIELDS}

    def drop_user(self, user: int) -> None:
        self.chunks = [{k: v[c["user"] != user] for k, v in c.items()} for c in self.chunks]
        self._due = [{k: v[d["user"] != user] for k, v in d.items()} for d in self._due]

    def state_dict(self, prefix: str) -> dict[str, "np.ndarray | Deferred"]:
        """The queue's state; its rows as :class:`Deferred` concatenations (its chunks are never changed in place,
        only replaced, so holding them is a consistent capture, and the copying can wait for the writer)."""
        # Resolved rows waiting to be learned from go first: they are older than every pending one.
        rows = self._due + self.chunks
        empty = self.pop_due(-np.inf) if not rows else None
        state: dict[str, np.ndarray | Deferred] = {
            f"{prefix}.{k}": Deferred([c[k] for c in rows]) if rows else empty[k] for k in _FIELDS}
        state[f"{prefix}.counters"] = np.array([self.stride, self.seen, sum(len(d["ts"]) for d in self._due),
                                                self.waiting_at_tick, self.sampled_since_tick])
        state[f"{prefix}.updated_s"] = np.array(self.updated_s)
        return state

    def load_state(self, state: dict[str, np.ndarray], prefix: str) -> None:
        rows = {k: state[f"{prefix}.{k}"].copy() for k in _FIELDS}
        counters = [int(v) for v in state[f"{prefix}.counters"]]
        self.stride, self.seen, n_due = counters[:3]
        # Snapshots of older nudges lack the counts since the tick: thinning starts from what waits.
        self.waiting_at_tick, self.sampled_since_tick = counters[3:] if len(counters) == 5 else (len(rows["ts"]), 0)
        self.updated_s = float(state[f"{prefix}.updated_s"])
        due = {k: v[:n_due] for k, v in rows.items()}
        pending = {k: v[n_due:] for k, v in rows.items()}
        self._due = [due] if n_due else []
        self.chunks = [pending] if len(pending["ts"]) else []
