"""Figures of an evaluation, as PNG files: per-language accuracy bars with the gap marked,
and a 2-D projection of sentence representations coloured by language (the paper's
"isolated distributions" picture; compare before and after alignment)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def accuracy_bars(metrics: Mapping[str, float], *, pivot: str, path: Path, prefix: str = "eval",
                  title: str = "") -> Path:
    """One group of bars per task, one bar per language; a dashed line at the pivot's
    accuracy and the gap written above each group."""
    plt = _pyplot()
    cells: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[0] == prefix and parts[3] == "acc":
            cells.setdefault(parts[1], {})[parts[2]] = value
    tasks = sorted(cells)
    langs = sorted({lang for row in cells.values() for lang in row}, key=lambda lang: (lang != pivot, lang))
    width = 0.8 / max(1, len(langs))
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(tasks), 3.6))
    for j, lang in enumerate(langs):
        xs = [i + j * width for i, task in enumerate(tasks) if lang in cells[task]]
        ys = [100 * cells[task][lang] for task in tasks if lang in cells[task]]
        ax.bar(xs, ys, width, label=lang + (" (pivot)" if lang == pivot else ""))
    for i, task in enumerate(tasks):
        if pivot in cells[task]:
            ax.hlines(100 * cells[task][pivot], i - width / 2, i + 0.8 - width / 2, colors="k", linestyles="dashed")
        task_gap = metrics.get(f"{prefix}/{task}/gap")
        if task_gap is not None:
            ax.text(i + 0.4 - width / 2, 101, f"gap {100 * task_gap:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 112)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_title(title or "accuracy per language (dashed: pivot)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def projection(vectors: Mapping[str, torch.Tensor], *, path: Path, title: str = "") -> Path:
    """PCA to 2-D of the pooled sentence vectors (rows: sentences), one colour per language.
    Keys ``"en>de"`` (the English side of the de pairs) join their source language, so every
    pivot sentence shares one colour; the pivot is drawn first, in grey, under the others."""
    import numpy as np

    plt = _pyplot()
    keys = sorted(vectors)
    stacked = torch.cat([vectors[key].float() for key in keys])
    centred = stacked - stacked.mean(dim=0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    points = (centred @ v[:2].T).numpy()
    rows: dict[str, list] = {}
    start = 0
    for key in keys:
        n = vectors[key].shape[0]
        rows.setdefault(key.split(">")[0], []).append(points[start: start + n])
        start += n
    sides = {lang for key in keys if ">" in key for lang in [key.split(">")[0]]}
    langs = sorted(rows, key=lambda lang: (lang not in sides, lang))   # the pivot (source of "en>xx") first
    tab20 = plt.get_cmap("tab20").colors   # dark hues first, then their light partners; no greys (the pivot's)
    colours = [tab20[j] for j in [*range(0, 20, 2), *range(1, 20, 2)] if j not in (14, 15)]
    markers = "o^sD"
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    others = 0
    for lang in langs:
        xy = np.concatenate(rows[lang])
        pivot = lang in sides
        i = others
        others += not pivot
        ax.scatter(xy[:, 0], xy[:, 1], s=4 if pivot else 6, alpha=0.25 if pivot else 0.7,
                   color="0.55" if pivot else colours[i % len(colours)], marker=markers[(i // len(colours)) % 4],
                   label=f"{lang} (pivot side of every pair)" if pivot else lang, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2.5, bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False,
              ncol=2 if len(langs) > 16 else 1)
    ax.set_title(title or "sentence representations (PCA)", fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def scatter(xs: list, ys: list[float], *, xlabel: str, ylabel: str, path: Path, log_x: bool = False) -> Path:
    """One point per (x, y); x values that are not all numbers are shown as categories."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    numeric = all(isinstance(x, (int, float)) for x in xs)
    ax.scatter(xs if numeric else [str(x) for x in xs], ys)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if numeric and log_x:
        ax.set_xscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto(xs: list[float], ys: list[float], on_front: list[bool], *, labels: list[str], xlabel: str, ylabel: str,
           path: Path) -> Path:
    """Trials as points on two objectives, the Pareto front joined and labelled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    ax.scatter([x for x, f in zip(xs, on_front) if not f], [y for y, f in zip(ys, on_front) if not f],
               c="0.6", label="trial")
    front = sorted((x, y, label) for x, y, f, label in zip(xs, ys, on_front, labels) if f)
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], "o-", c="C3", label="Pareto front")
        for x, y, label in front:
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
