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
    """PCA to 2-D of the pooled sentence vectors of every language (rows: sentences)."""
    plt = _pyplot()
    langs = sorted(vectors)
    stacked = torch.cat([vectors[lang].float() for lang in langs])
    centred = stacked - stacked.mean(dim=0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    points = (centred @ v[:2].T).numpy()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    start = 0
    for lang in langs:
        n = vectors[lang].shape[0]
        ax.scatter(points[start: start + n, 0], points[start: start + n, 1], s=5, alpha=0.6, label=lang)
        start += n
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=3)
    ax.set_title(title or "sentence representations (PCA)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
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
