"""Mean and spread over seeds of a compare run's rows, and ties in its tables.

A compare config with ``seeds: [s1, s2, ...]`` scores every variant and sweep point once per
seed. :func:`aggregate` folds those per-seed rows into one row per (variant, sweep, value):
each numeric metric becomes its mean, with ``<metric>_std`` (the sample standard deviation
over the seeds, dividing by n - 1: with few seeds the population's, dividing by n, understates the
spread and turns noise into verdicts) beside it, and ``seeds`` counts them. :func:`mark_ties` then marks, per metric
column of a table, the best row and every row whose difference from it is within the spread
(``|a - b| <= std_a + std_b``): those are ties, not wins.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from .claims import DIRECTIONS, Measure, order

#: columns that describe a row rather than measure it
KEY_COLUMNS = ("variant", "sweep", "value")


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of ``values``."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-seed rows (each with a ``seed``) -> one row per (variant, sweep, value), first-seen order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in KEY_COLUMNS), []).append(row)
    out = []
    for members in groups.values():
        merged: dict[str, Any] = {"seeds": len(members)}
        for column in dict.fromkeys(k for r in members for k in r):
            if column == "seed":
                continue
            values = [r[column] for r in members if column in r]
            if column in DIRECTIONS and all(isinstance(v, (int, float)) for v in values):
                mean, spread = mean_and_spread(values)
                merged[column], merged[f"{column}_std"] = round(mean, 4), round(spread, 4)
            else:
                merged[column] = values[0]
        out.append(merged)
    return out


def mark_ties(rows: Sequence[dict[str, Any]], metric: str) -> list[str]:
    """Cell text for ``metric`` in each row: ``mean ± std``, ``(best)`` on the best row and ``(tie)``
    on rows within the spread of it."""
    present = [r for r in rows if metric in r]
    if not present:
        return ["" for _ in rows]
    direction = DIRECTIONS[metric]
    measures = [Measure(float(r[metric]), float(r.get(f"{metric}_std", 0.0))) if metric in r else None for r in rows]
    best = min((m for m in measures if m is not None), key=lambda m: direction * m.mean)
    cells = []
    for m in measures:
        if m is None:
            cells.append("")
        elif m is best:
            cells.append(f"{m} (best)")
        else:
            cells.append(f"{m} (tie)" if order(m, best, direction) == "tie" else str(m))
    return cells
