"""Accuracy per task and language, the language gap, and the metric names of the contract
(design.md): ``eval/<task>/<lang>/acc``, ``eval/<task>/gap``, ``eval/acc``,
``eval/acc_pivot``, ``eval/acc_non_pivot``, ``eval/gap``. The same names under another
prefix (``dev/``) serve periodic evaluations on the dev split."""

from __future__ import annotations

import statistics
from typing import Mapping, Sequence


def gap(per_lang: Mapping[str, float], pivot: str) -> float:
    """Pivot accuracy minus the mean over the other languages (NaN without both)."""
    others = [v for lang, v in per_lang.items() if lang != pivot]
    if pivot not in per_lang or not others:
        return float("nan")
    return per_lang[pivot] - sum(others) / len(others)


def summarise(acc: Mapping[str, Mapping[str, Sequence[float]]], *, pivot: str, prefix: str = "eval") -> dict[str, float]:
    """``acc[task][lang]`` holds one accuracy per demonstration seed. Returns the contract's
    metrics (means over seeds) plus ``<prefix>/<task>/<lang>/acc_std`` when there are several
    seeds. Means over tasks use the tasks that have the pivot / other languages."""
    out: dict[str, float] = {}
    pivots, non_pivots, means, gaps = [], [], [], []
    for task, by_lang in sorted(acc.items()):
        per_lang = {}
        for lang, values in sorted(by_lang.items()):
            per_lang[lang] = sum(values) / len(values)
            out[f"{prefix}/{task}/{lang}/acc"] = per_lang[lang]
            if len(values) > 1:
                out[f"{prefix}/{task}/{lang}/acc_std"] = statistics.stdev(values)
        task_gap = gap(per_lang, pivot)
        if task_gap == task_gap:  # not NaN
            out[f"{prefix}/{task}/gap"] = task_gap
            gaps.append(task_gap)
        means.append(sum(per_lang.values()) / len(per_lang))
        if pivot in per_lang:
            pivots.append(per_lang[pivot])
        others = [v for lang, v in per_lang.items() if lang != pivot]
        if others:
            non_pivots.append(sum(others) / len(others))
    for name, values in (("acc", means), ("acc_pivot", pivots), ("acc_non_pivot", non_pivots), ("gap", gaps)):
        if values:
            out[f"{prefix}/{name}"] = sum(values) / len(values)
    return out


def table(metrics: Mapping[str, float], *, pivot: str, prefix: str = "eval") -> str:
    """A per-language table (rows: tasks, columns: languages, pivot first) with the gap."""
    cells: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[0] == prefix and parts[3] == "acc":
            cells.setdefault(parts[1], {})[parts[2]] = value
    langs = sorted({lang for row in cells.values() for lang in row}, key=lambda lang: (lang != pivot, lang))
    head = f"{'task':<12}" + "".join(f"{lang + ('*' if lang == pivot else ''):>8}" for lang in langs) + f"{'gap':>8}"
    lines = [head]
    for task, row in sorted(cells.items()):
        line = f"{task:<12}" + "".join(f"{100 * row[lang]:>8.1f}" if lang in row else f"{'-':>8}" for lang in langs)
        task_gap = metrics.get(f"{prefix}/{task}/gap")
        lines.append(line + (f"{100 * task_gap:>8.1f}" if task_gap is not None else f"{'-':>8}"))
    summary = [f"{name} {100 * metrics[f'{prefix}/{name}']:.1f}" for name in ("acc", "acc_pivot", "acc_non_pivot", "gap")
               if f"{prefix}/{name}" in metrics]
    lines.append(f"(accuracy in %, * = pivot; {', '.join(summary)})")
    return "\n".join(lines)
