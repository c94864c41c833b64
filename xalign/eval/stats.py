"""Differences between two evaluations on the same items, with their standard errors.

- ``paired``: from per-item outcomes (the per-item records, ``xalign.eval.records``): the
  differences d_i = a_i - b_i over the items both have; SE = sd(d) / sqrt(n). The right
  error for two accuracies on the same items (it removes the items' shared difficulty).
- ``independent``: from the two proportions and their item counts only, as if the items
  were two independent samples: SE = sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2). Used where no
  per-item outcomes are at hand; larger than the paired error when the two agree item by item.
- ``combine``: a weighted mean of differences over disjoint item sets (languages, tasks):
  SE = sqrt(sum w^2 SE^2), the item counts summed.

Values are on the 0..1 scale of the metrics. An item's outcome is its share correct over
its records (one per demonstration seed), and over runs (training seeds) with ``mean_outcomes``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

Outcomes = dict[tuple[str, str], dict[str, float]]   # {(task, lang): {item idx: share correct}}


@dataclass(frozen=True)
class Difference:
    value: float          # a - b
    se: float             # its standard error (NaN where it cannot be estimated)
    n: int                # items the difference is over
    paired: bool          # paired over per-item outcomes (else independent proportions)


def item_outcomes(records: Sequence[dict], normalization: str = "none") -> Outcomes:
    """Each item's share correct under ``normalization``, over its records (one per
    demonstration seed), by (task, language)."""
    hits: dict[tuple[str, str], dict[str, list[bool]]] = {}
    for r in records:
        cell = hits.setdefault((r["task"], r["lang"]), {})
        cell.setdefault(str(r["idx"]), []).append(bool(r["correct"][normalization]))
    return {cell: {idx: sum(v) / len(v) for idx, v in items.items()} for cell, items in hits.items()}


def mean_outcomes(runs: Sequence[Outcomes]) -> Outcomes:
    """Per item, the mean outcome over several runs (training seeds) of one config; an item
    counts only where every run has it."""
    if not runs:
        return {}
    out: Outcomes = {}
    for cell in set.intersection(*(set(r) for r in runs)):
        common = set.intersection(*(set(r[cell]) for r in runs))
        out[cell] = {idx: sum(r[cell][idx] for r in runs) / len(runs) for idx in common}
    return out


def paired(a: Mapping[str, float], b: Mapping[str, float]) -> Difference:
    """Mean of a_i - b_i over the items both have, and its standard error sd(d) / sqrt(n)."""
    common = sorted(set(a) & set(b))
    n = len(common)
    if n == 0:
        return Difference(math.nan, math.nan, 0, True)
    d = [a[i] - b[i] for i in common]
    se = statistics.stdev(d) / math.sqrt(n) if n > 1 else math.nan
    return Difference(sum(d) / n, se, n, True)


def independent(p1: float, p2: float, n1: int, n2: Optional[int] = None) -> Difference:
    """p1 - p2 with SE sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2) (n2 = n1 unless given)."""
    n2 = n1 if n2 is None else n2
    if n1 <= 0 or n2 <= 0:
        return Difference(p1 - p2, math.nan, 0, False)
    return Difference(p1 - p2, math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2), min(n1, n2), False)


def combine(parts: Sequence[tuple[float, Difference]]) -> Difference:
    """The weighted mean sum w_k d_k of differences over disjoint item sets, with SE
    sqrt(sum w_k^2 SE_k^2) and n = sum n_k; paired only if every part is."""
    if not parts:
        return Difference(math.nan, math.nan, 0, False)
    value = sum(w * d.value for w, d in parts)
    se = math.sqrt(sum((w * d.se) ** 2 for w, d in parts))
    return Difference(value, se, sum(d.n for _, d in parts), all(d.paired for _, d in parts))
