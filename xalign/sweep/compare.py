"""The confirmation table of a sweep (issue 15): the starting model, the best config over its
seeds and each control, per task and language, with every difference's item count and
standard error.

Rows: each task's pivot and other languages and the mean over its other languages; then,
over tasks, the pivot (``eval/acc_pivot``) apart from the other languages
(``eval/acc_non_pivot``) and the gap; then retrieval and MEXA. Columns: each variant's value
(mean ± sd over its runs, i.e. seeds), the number of items ``n``, and the differences
best - base, control - base and best - control, each ± its standard error
(``xalign.eval.stats``): paired over the items where every run of both variants has per-item
records, else from the two proportions and ``n`` (independent proportions), marked so.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Optional, Sequence

from xalign.eval.stats import Difference, Outcomes, combine, independent, mean_outcomes, paired


@dataclass
class Variant:
    """One config's runs: ``metrics`` one dict per run (``eval/...``, ``align/...`` names),
    ``outcomes`` per run from its per-item records (None where any run has none)."""

    name: str
    metrics: list[dict[str, float]]
    outcomes: Optional[list[Outcomes]] = None

    def items(self) -> Optional[Outcomes]:
        return mean_outcomes(self.outcomes) if self.outcomes else None


def base_variant(metrics: dict[str, float], outcomes: Optional[Outcomes] = None, name: str = "base") -> Variant:
    """The starting model's ``base/...`` metrics under the names trained runs use
    (``base/xcopa/zh/acc`` -> ``eval/xcopa/zh/acc``, ``base_same/...`` -> ``eval_same/...``,
    ``base/align/mexa`` -> ``align/mexa``)."""
    renamed = {}
    for key, value in metrics.items():
        key = key.removeprefix("best/")
        head, _, rest = key.partition("/")
        if key.startswith("base/align/"):
            renamed[rest] = value
        elif head == "base" or head.startswith("base_"):
            renamed[f"eval{head[4:]}/{rest}"] = value
    return Variant(name, [renamed] if renamed else [], [outcomes] if outcomes is not None else None)


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)

    def text(self, title: str = "") -> str:
        widths = [max(len(str(r[j])) for r in [self.header, *self.rows]) for j in range(len(self.header))]
        line = lambda r: "  ".join(str(c).ljust(w) if j < 2 else str(c).rjust(w)   # noqa: E731
                                   for j, (c, w) in enumerate(zip(r, widths)))
        out = ([title] if title else []) + [line(self.header)] + [line(r) for r in self.rows]
        return "\n".join(out + self.notes)


def _pct(value: float) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f}"


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return _pct(values[0])
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def _diff(d: Optional[Difference], n_row: Optional[int], mark: str) -> str:
    if d is None or d.value != d.value:
        return "-"
    se = f" ± {100 * d.se:.1f}" if d.se == d.se else " ± ?"
    extra = f" [n={d.n}]" if d.n and d.n != n_row else ""
    return f"{100 * d.value:+.1f}{se}{'' if d.paired else mark}{extra}"


def pairs_of(variants: Sequence[Variant]) -> list[tuple[str, str]]:
    """(a, b) of each difference a - b: every other variant - base, then best - each control."""
    names = [v.name for v in variants if v.metrics]
    out = [(a, "base") for a in names if a != "base"] if "base" in names else []
    if "best" in names:
        out += [("best", c) for c in names if c not in ("best", "base")]
    return out


class _Cells:
    """One variant's per-run values and item counts, and its per-item outcomes."""

    def __init__(self, variant: Variant, prefix: str = "eval"):
        self.v, self.prefix = variant, prefix
        self.items = variant.items()

    def acc(self, task: str, lang: str) -> list[float]:
        key = f"{self.prefix}/{task}/{lang}/acc"
        return [m[key] for m in self.v.metrics if key in m]

    def n(self, task: str, lang: str) -> Optional[int]:
        if self.items is not None and (task, lang) in self.items:
            return len(self.items[(task, lang)])
        key = f"{self.prefix}/{task}/{lang}/n_items"
        found = [m[key] for m in self.v.metrics if key in m]
        return int(found[0]) if found else None

    def values(self, key: str) -> list[float]:
        return [m[key] for m in self.v.metrics if isinstance(m.get(key), (int, float))]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def cell_difference(a: _Cells, b: _Cells, task: str, lang: str) -> Optional[Difference]:
    """a - b on one task and language: the difference of the mean accuracies, with the paired
    SE where both have per-item outcomes for the cell, else the independent one."""
    va, vb = a.acc(task, lang), b.acc(task, lang)
    if not va or not vb:
        return None
    value = _mean(va) - _mean(vb)
    if a.items is not None and b.items is not None and (task, lang) in a.items and (task, lang) in b.items:
        d = paired(a.items[(task, lang)], b.items[(task, lang)])
        if d.n:
            return Difference(value, d.se, d.n, True)
    na, nb = a.n(task, lang), b.n(task, lang)
    if not na or not nb:
        return Difference(value, math.nan, 0, False)
    d = independent(_mean(va), _mean(vb), na, nb)
    return Difference(value, d.se, d.n, False)


def _aligned_difference(a: _Cells, b: _Cells, metric: str, langs: Sequence[str]) -> Optional[Difference]:
    """Retrieval or MEXA (``align/retrieval/<lang>/top1`` / ``align/mexa/<lang>``): independent
    proportions over each language's held-out pairs, combined over languages."""
    parts = []
    for lang in langs:
        key = f"align/retrieval/{lang}/top1" if metric == "retrieval" else f"align/mexa/{lang}"
        va, vb = a.values(key), b.values(key)
        n = (a.values(f"align/retrieval/{lang}/n_pairs") or b.values(f"align/retrieval/{lang}/n_pairs") or [0])[0]
        if not va or not vb:
            return None
        parts.append((1 / len(langs), independent(_mean(va), _mean(vb), int(n)) if n
                      else Difference(_mean(va) - _mean(vb), math.nan, 0, False)))
    return combine(parts) if parts else None


def comparison_table(variants: Sequence[Variant], pivot: str, prefix: str = "eval") -> Table:
    """The table (see the module's docstring) of ``variants`` (base first, then best, then the
    controls; a variant without metrics is left out). ``prefix``: the accuracies'
    (``eval_same`` for a second protocol: then without the retrieval and MEXA rows, which
    do not depend on the protocol); ``outcomes`` must be that protocol's."""
    variants = [v for v in variants if v.metrics]
    cells = {v.name: _Cells(v, prefix) for v in variants}
    pairs = pairs_of(variants)
    mark = "†" if any(c.items is None for c in cells.values()) and any(c.items is not None for c in cells.values()) \
        else ""
    tasks: dict[str, set[str]] = {}
    for v in variants:
        for m in v.metrics:
            for key in m:
                parts = key.split("/")
                if len(parts) == 4 and parts[0] == prefix and parts[3] == "acc":
                    tasks.setdefault(parts[1], set()).add(parts[2])
    header = ["task", "language", *[v.name for v in variants], "n", *[f"{a} - {b}" for a, b in pairs]]
    rows: list[list[str]] = []

    def row(task: str, label: str, values: dict[str, list[float]], n: Optional[int], diffs: dict,
            accuracy: bool = True) -> None:
        rows.append([task, label, *[_spread(values.get(v.name, [])) for v in variants], "-" if not n else str(n),
                     *[_diff(diffs.get(p), n, mark if accuracy else "") for p in pairs]])

    pivot_parts: dict[tuple[str, str], list] = {p: [] for p in pairs}
    other_parts: dict[tuple[str, str], list] = {p: [] for p in pairs}
    pivot_runs: dict[str, list[list[float]]] = {v.name: [] for v in variants}   # per task: per-run values
    other_runs: dict[str, list[list[float]]] = {v.name: [] for v in variants}
    n_pivot = n_other = 0
    for task in sorted(tasks):
        langs = sorted(tasks[task], key=lambda lang: (lang != pivot, lang))
        others = [lang for lang in langs if lang != pivot]
        task_parts: dict[tuple[str, str], list] = {p: [] for p in pairs}
        n_task = 0
        for lang in langs:
            n = next((c.n(task, lang) for c in cells.values() if c.n(task, lang)), None)
            diffs = {p: cell_difference(cells[p[0]], cells[p[1]], task, lang) for p in pairs}
            row(task, lang + ("*" if lang == pivot else ""), {name: c.acc(task, lang) for name, c in cells.items()},
                n, diffs)
            for p, d in diffs.items():
                if d is not None:
                    (task_parts[p] if lang != pivot else pivot_parts[p]).append(
                        (1 / len(others) if lang != pivot else 1.0, d))
            if lang == pivot:
                n_pivot += n or 0
                for name, c in cells.items():
                    pivot_runs[name].append(c.acc(task, lang))
            else:
                n_task += n or 0
        if others:
            per_run = {name: _per_run_means([c.acc(task, lang) for lang in others]) for name, c in cells.items()}
            diffs = {p: combine(task_parts[p]) if len(task_parts[p]) == len(others) else None for p in pairs}
            row(task, f"non-{pivot} mean" if pivot else "mean", per_run, n_task, diffs)
            for name in cells:
                other_runs[name].append(per_run[name])
            for p in pairs:
                if diffs[p] is not None:
                    other_parts[p].append(diffs[p])
            n_other += n_task
    n_tasks_pivot = sum(pivot in langs for langs in tasks.values())
    n_tasks_other = sum(bool(langs - {pivot}) for langs in tasks.values())
    overall = {}
    if n_tasks_pivot:
        diffs = {p: combine([(1 / n_tasks_pivot, d) for _, d in pivot_parts[p]])
                 if len(pivot_parts[p]) == n_tasks_pivot else None for p in pairs}
        row("all tasks", f"{pivot}* (pivot)", {n: _per_run_means(r) for n, r in pivot_runs.items()}, n_pivot, diffs)
        overall["pivot"] = diffs
    if n_tasks_other:
        diffs = {p: combine([(1 / n_tasks_other, d) for d in other_parts[p]])
                 if len(other_parts[p]) == n_tasks_other else None for p in pairs}
        row("all tasks", f"non-{pivot}" if pivot else "all languages",
            {n: _per_run_means(r) for n, r in other_runs.items()}, n_other, diffs)
        overall["other"] = diffs
    if len(overall) == 2:
        diffs = {p: combine([(1.0, overall["pivot"][p]), (-1.0, overall["other"][p])])
                 if overall["pivot"][p] is not None and overall["other"][p] is not None else None for p in pairs}
        row("all tasks", "gap", {name: c.values(f"{prefix}/gap") for name, c in cells.items()}, n_pivot + n_other,
            diffs)
    langs = sorted({k.split("/")[2] for v in variants for m in v.metrics for k in m
                    if k.startswith("align/retrieval/") and k.endswith("/top1") and k.count("/") == 3})
    n_pairs = sum(max((int(v) for c in cells.values() for v in c.values(f"align/retrieval/{lang}/n_pairs")),
                      default=0) for lang in langs)
    for metric, key, label in (("retrieval", "align/retrieval/top1", "retrieval top-1"), ("mexa", "align/mexa", "MEXA")):
        if prefix == "eval" and any(c.values(key) for c in cells.values()):
            diffs = {p: _aligned_difference(cells[p[0]], cells[p[1]], metric, langs) for p in pairs}
            row(label, f"{len(langs)} language{'s' if len(langs) != 1 else ''}",
                {name: c.values(key) for name, c in cells.items()}, n_pairs, diffs, accuracy=False)
    notes = _notes(cells, pivot, mark)
    return Table(header, rows, notes if prefix == "eval" else notes[:-1], pairs)


def _per_run_means(per_cell: list[list[float]]) -> list[float]:
    """Per run, the mean over cells (``per_cell[c][r]``: cell c's value in run r)."""
    runs = min((len(v) for v in per_cell), default=0)
    return [sum(v[r] for v in per_cell) / len(per_cell) for r in range(runs)] if per_cell else []


def _notes(cells: dict[str, _Cells], pivot: str, mark: str) -> list[str]:
    runs = ", ".join(f"{name} {len(c.v.metrics)}" for name, c in cells.items())
    with_records = [name for name, c in cells.items() if c.items is not None]
    notes = [f"Accuracy in %: mean ± sd over each config's runs (runs: {runs}); * = the pivot ({pivot}).",
             "Differences in points ± their standard error over the items (the runs' spread is the sd beside each "
             "value, not in the SE); n = the items each difference on the row is over "
             "(held-out pairs for retrieval and MEXA); a mean's n and SE combine its cells as independent samples "
             "(weights as in the mean; the languages of one task are translations of the same items, so this may "
             "understate the SE of a mean)."]
    if len(with_records) == len(cells):
        notes.append("SE of accuracy differences: paired over the items, from every run's per-item records "
                     "(an item's outcome is its mean over the config's seeds and demonstration seeds).")
    elif not with_records:
        notes.append("SE of accuracy differences: independent proportions, sqrt(p1(1-p1)/n + p2(1-p2)/n) "
                     "(no per-item records were found for these runs).")
    else:
        notes.append(f"SE of accuracy differences: paired over the items from the per-item records where both "
                     f"configs have them ({', '.join(with_records)}); {mark} = independent proportions, "
                     "sqrt(p1(1-p1)/n + p2(1-p2)/n).")
    notes.append("Retrieval and MEXA: SE of independent proportions over the held-out pairs.")
    return notes


# --- `xalign compare NAME=FOLDER ...`: `xalign eval` results side by side -----------------

def variants_from_folders(specs: Sequence[str]) -> list[Variant]:
    """Variants from ``NAME=FOLDER`` specs (an `xalign eval` results folder: ``eval_metrics.json``
    and ``eval_records.jsonl``), in the order first given; a NAME given again adds a run (a
    seed) to that variant. Refused, naming the spec, before anything is read: a spec without
    ``=`` or a folder without those files."""
    import json
    from pathlib import Path

    from xalign.errors import XalignError
    from xalign.eval.records import read_records
    from xalign.eval.stats import item_outcomes

    folders: dict[str, list[Path]] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise XalignError(f"{spec!r}: expected NAME=FOLDER (e.g. base=~/.cache/xalign/eval_results/eval-x-2026...)")
        missing = [f for f in ("eval_metrics.json", "eval_records.jsonl") if not (Path(folder).expanduser() / f).is_file()]
        if missing:
            raise XalignError(f"{spec!r}: {folder} has no {' and no '.join(missing)}; give the folder `xalign eval` "
                              "printed after 'records and plots:'")
        folders.setdefault(name, []).append(Path(folder).expanduser())
    variants = []
    for name, paths in folders.items():
        metrics = [json.loads((p / "eval_metrics.json").read_text(encoding="utf-8")) for p in paths]
        outcomes = [item_outcomes(read_records(p / "eval_records.jsonl")) for p in paths]
        variants.append(Variant(name, metrics, outcomes))
    return variants
