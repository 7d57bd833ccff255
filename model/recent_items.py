"""Each user's session of recent items, followed through a batch of events without a loop per event.

A user's session ends where an event comes more than ``gap`` seconds after the latest event time seen before it.
Within a session, the recent items are the last ``R`` distinct items, the most recently seen first (a
least-recently-used list): an item seen again moves to the front, and the oldest falls off. What an event with an
item co-visits is the list just before it, less its own item.

The batch is sorted by user (stably, so each user's events keep their order). The time seen before each event is
a running maximum within each user's stream, started from the user's last time. The list before an event is found
by walking back over the session's earlier items (the user's carried list first), keeping the ones not seen again
before the event, until ``R`` are found. All the batch's events walk together, one step back per NumPy pass: about
``R + 1`` passes when users have few events in a batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Walked:
    """What a batch did to its users' sessions.

    Parameters
    ----------
    rows, others : the batch's event ``rows[i]`` co-visits item ``others[i]``.
    users : each user of the batch, once.
    last_ts : their latest event time now.
    recent : their recent items now, the most recent first, -1 past the end (shape (len(users), R)).
    """

    rows: np.ndarray
    others: np.ndarray
    users: np.ndarray
    last_ts: np.ndarray
    recent: np.ndarray


def _running_max(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """The running maximum of ``values`` within each run of equal (non-decreasing) ``group``, exactly: the values
    are replaced by their ranks, which an offset per group keeps apart."""
    distinct, rank = np.unique(values, return_inverse=True)
    width = len(distinct)
    return distinct[np.maximum.accumulate(group * width + rank) - group * width]


def walk(users: np.ndarray, ts: np.ndarray, items: np.ndarray, user_ts: np.ndarray, user_items: np.ndarray,
         gap: float) -> Walked:
    """Follow a batch through its users' sessions.

    ``users``, ``ts`` and ``items`` (-1 for an event without one) are the batch's columns in order.
    ``user_ts`` and ``user_items`` are every user's latest event time (-inf if none) and recent items (the most
    recent first, -1 past the end).
    """
    n, depth = len(users), user_items.shape[1]
    order = np.argsort(users, kind="stable")
    u, t, x = users[order], ts[order], items[order]
    first = np.concatenate([[True], u[1:] != u[:-1]])
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.concatenate([starts[1:], [n]]) - 1
    groups = len(starts)
    batch_users = u[starts]

    # Each user's running maximum of event times, started from the one carried (placed just before its events).
    at = np.arange(n) + group + 1
    carried_at = starts + np.arange(groups)
    times = np.empty(n + groups)
    times[at], times[carried_at] = t, user_ts[batch_users]
    running = _running_max(times, np.repeat(np.arange(groups), np.diff(np.concatenate([starts, [n]])) + 1))
    breaks = t - running[at - 1] > gap
    session = np.cumsum(first | breaks) - 1

    # The walk's sequence, per user: the carried items (oldest first) unless the first event starts a new session,
    # the events with items, and an end marker whose walk gives the user's list after the batch.
    carry = np.flatnonzero(~breaks[starts])
    carried = user_items[batch_users[carry]][:, ::-1]  # oldest first
    kept = carried >= 0
    c_group = np.repeat(carry, kept.sum(axis=1))
    with_item = np.flatnonzero(x >= 0)
    w_group = np.concatenate([c_group, group[with_item], np.arange(groups)])
    w_phase = np.concatenate([np.zeros(len(c_group)), np.ones(len(with_item)), np.full(groups, 2)]).astype(np.int8)
    w_order = np.concatenate([np.nonzero(kept)[1], with_item, np.zeros(groups, np.int64)])
    w_item = np.concatenate([carried[kept], x[with_item], np.full(groups, -1)])
    w_session = np.concatenate([session[starts[c_group]], session[with_item], session[ends]])
    w_row = np.concatenate([np.full(len(c_group), -1), order[with_item], np.full(groups, -1)])
    seq = np.lexsort((w_order, w_phase, w_group))
    w_item, w_session, w_row, w_phase, w_group = w_item[seq], w_session[seq], w_row[seq], w_phase[seq], w_group[seq]

    # Where each item is seen next in its session (past the end if never).
    size = len(seq)
    next_seen = np.full(size, size, dtype=np.int64)
    real = np.flatnonzero(w_item >= 0)
    by_item = real[np.lexsort((real, w_item[real], w_session[real]))]
    same = (w_item[by_item[1:]] == w_item[by_item[:-1]]) & (w_session[by_item[1:]] == w_session[by_item[:-1]])
    next_seen[by_item[:-1][same]] = by_item[1:][same]

    # Walk back from every event with an item and every end marker at once.
    asking = np.flatnonzero(w_phase >= 1)
    query, found = asking.copy(), np.zeros(len(asking), dtype=np.int64)
    hits_query, hits_item = [], []
    step = 1
    while len(query):
        back = query - step
        ok = back >= 0
        ok[ok] = w_session[back[ok]] == w_session[query[ok]]
        query, found, back = query[ok], found[ok], back[ok]
        hit = (w_item[back] >= 0) & (next_seen[back] >= query)
        hits_query.append(query[hit])
        hits_item.append(w_item[back[hit]])
        found += hit
        alive = found < depth
        query, found = query[alive], found[alive]
        step += 1
    hit_query = np.concatenate(hits_query) if hits_query else np.zeros(0, np.int64)
    hit_item = np.concatenate(hits_item) if hits_item else np.zeros(0, np.int64)

    # The events' co-visits: their list before them, less their own item.
    from_event = w_phase[hit_query] == 1
    event_q, other = hit_query[from_event], hit_item[from_event]
    differs = other != w_item[event_q]
    rows, others = w_row[event_q[differs]], other[differs]

    # The users' lists now: the end markers' hits, in the order found (the most recent first).
    end_q, end_item = hit_query[~from_event], hit_item[~from_event]
    by_query = np.argsort(end_q, kind="stable")
    end_q, end_item = end_q[by_query], end_item[by_query]
    recent = np.full((groups, depth), -1, dtype=np.int64)
    if len(end_q):
        head = np.concatenate([[True], end_q[1:] != end_q[:-1]])
        heads = np.flatnonzero(head)
        rank = np.arange(len(end_q)) - np.repeat(heads, np.diff(np.concatenate([heads, [len(end_q)]])))
        recent[w_group[end_q], rank] = end_item
    return Walked(rows=rows, others=others, users=batch_users, last_ts=running[at[ends]], recent=recent)
