"""Where a task's rows come from, and reading them: the synthetic world's files, local files
(``eval.sources``), or the task's hub dataset through HF ``datasets``.

Local TSV/CSV/JSON(L) files are read with the standard library: ``datasets``' CSV builder
(pandas) applies quote handling to TSV and changes PAWS-X sentences that contain quotes (10
of 2,000 rows of German test, 22 of French), and caches every local file it reads. Parquet,
``save_to_disk`` directories and hub ids go through ``datasets`` (imported only then).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from xalign.config.eval import TaskSourceConfig
from xalign.tasks.base import SPLITS, Hub, Task, TaskError, unknown
from xalign.tasks.registry import get_task

Sources = Optional[Union[Mapping[str, "TaskSourceConfig"], "TaskSourceConfig"]]

_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class Origin:
    """Where one (task, language, split) is read from; ``where`` names it in errors."""

    kind: str                   # "file" | "hub"
    where: str                  # the file path, or "hub id (name=..., split=...)"
    path: Optional[str] = None
    format: str = "auto"
    hub: Optional[str] = None
    name: Optional[str] = None
    split: Optional[str] = None


def source_of(task: Task, sources: Sources) -> "Optional[TaskSourceConfig]":
    """The task's entry of ``eval.sources`` (a dict by task name), or the one given."""
    if sources is None:
        return None
    if isinstance(sources, Mapping):
        return sources.get(task.name)
    return sources


def world_languages(task: Task, world_dir: Path) -> tuple[str, ...]:
    root = Path(world_dir) / "tasks" / task.name
    if task.world is None:
        raise TaskError(f"task {task.name!r} has no synthetic-world version (the world has: facts, pawsx, xcopa); "
                        "evaluate it on real data (eval.source: real)")
    if not root.is_dir():
        raise TaskError(f"task {task.name!r}: the world at {world_dir} has no {root} (is it a built world?)")
    return tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))


def task_languages(task: Union[str, Task], *, world_dir: Optional[Path] = None,
                   sources: Sources = None) -> tuple[str, ...]:
    """Every language ``task`` has: the world's (with ``world_dir``), else the real task's
    languages plus any language named in its ``eval.sources`` entry."""
    task = get_task(task) if isinstance(task, str) else task
    if world_dir is not None:
        return world_languages(task, Path(world_dir))
    if not task.languages:
        raise TaskError(f"task {task.name!r} exists only in the synthetic world: pass the world's directory "
                        "(world_dir) or evaluate the real tasks (pawsx, xcopa, xnli, xstorycloze, xwinograd)")
    src = source_of(task, sources)
    extra = tuple(src.languages) if src is not None else ()
    return tuple(sorted(set(task.languages) | set(extra)))


def check_language(task: Task, lang: str, languages: tuple[str, ...], *, what: str = "language") -> None:
    if lang not in languages:
        raise unknown(what, lang, languages, aliases=task.aliases, where=f"task {task.name!r}: ")


def origin(task: Task, lang: str, split: str, *, world_dir: Optional[Path] = None, sources: Sources = None) -> Origin:
    """Where (task, lang, split) is read from; a split that is not there is a TaskError."""
    if split not in SPLITS:
        raise unknown("split", split, SPLITS, where=f"task {task.name!r}: ")
    if world_dir is not None:
        path = Path(world_dir) / "tasks" / task.name / lang / f"{split}.{task.world_ext}"
        return Origin("file", str(path), path=str(path), format=task.world_ext)
    src = source_of(task, sources)
    key = f"eval.sources.{task.name}"
    if src is not None:
        per_lang = src.languages.get(lang)
        local = getattr(per_lang, split, None) if per_lang is not None else None
        if local is None and src.dev is None and src.test is None and per_lang is not None:
            # this language has its own files but not for this split
            raise TaskError(f"task {task.name!r}, language {lang!r}: no {split} split: {key}.languages.{lang} "
                            f"gives no `{split}` file")
        local = local or getattr(src, split)
        if local is not None:
            path = str(Path(local.replace("{lang}", lang)).expanduser())
            return Origin("file", path, path=path, format=src.format)
        if src.dev is not None or src.test is not None:
            raise TaskError(f"task {task.name!r}, language {lang!r}: no {split} split: {key} gives local files "
                            f"for {[s for s in SPLITS if getattr(src, s)]} only; set {key}.{split}")
    hub = task.hub_by_lang.get(lang, task.hub)
    if src is not None and src.hub is not None:
        hub = Hub(src.hub, name=src.name if src.name is not None else (hub.name if hub else "{lang}"),
                  splits={**(hub.splits if hub else {}), **src.splits})
    elif src is not None and hub is not None and (src.name is not None or src.splits):
        hub = Hub(hub.path, name=src.name if src.name is not None else hub.name, splits={**hub.splits, **src.splits})
    if hub is None:
        raise TaskError(f"task {task.name!r}, language {lang!r}: no data source; set {key}")
    if split not in hub.splits:
        raise TaskError(f"task {task.name!r}, language {lang!r}: no {split} split: the hub dataset {hub.path!r} has "
                        f"only {sorted(hub.splits.values())} (our {sorted(hub.splits)}); give local {split} files "
                        f"with {key}.{split}"
                        + (" (k-shot demonstrations come from dev only)" if split == "dev" else ""))
    name = hub.name.replace("{lang}", task.hub_names.get(lang, lang)) if hub.name else None
    return Origin("hub", f"{hub.path} (name={name}, split={hub.splits[split]})", hub=hub.path, name=name,
                  split=hub.splits[split])


def read_rows(org: Origin, *, what: str) -> list[dict]:
    """The raw rows of one origin (no renames, no checks)."""
    if org.kind == "hub":
        return _read_hub(org, what=what)
    path = Path(org.path)
    fmt = org.format
    if fmt == "auto":
        fmt = "disk" if path.is_dir() else _FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise TaskError(f"{what}: cannot tell the format of {org.path!r} from its extension; set `format` "
                            "(json, jsonl, csv, tsv, parquet, disk)")
    if not path.exists():
        raise TaskError(f"{what}: file not found: {org.path!r}")
    try:
        if fmt == "tsv":
            with open(path, encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        if fmt == "csv":
            with open(path, encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if fmt in ("json", "jsonl"):
            return _read_json(path)
        return _read_datasets(path, fmt)
    except TaskError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise TaskError(f"{what}: cannot read {org.path!r} as {fmt}: {exc}") from exc


def _read_json(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # JSON Lines in a .json file
        if isinstance(data, list):
            return data
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {n} is not JSON ({exc})") from exc
    return rows


def _read_datasets(path: Path, fmt: str) -> list[dict]:
    import datasets

    if fmt == "disk":
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            raise ValueError(f"a DatasetDict (splits {list(ds)}); point the path at one split's directory")
        return ds.to_list()
    return datasets.load_dataset(fmt, data_files=str(path), split="train").to_list()


def _read_hub(org: Origin, *, what: str) -> list[dict]:
    try:
        import datasets

        return datasets.load_dataset(org.hub, org.name, split=org.split).to_list()
    except Exception as exc:  # datasets raises many kinds; all mean "cannot read this"
        raise TaskError(f"{what}: cannot load the hub dataset {org.where}: {type(exc).__name__}: {exc}. "
                        f"Offline, give local files with eval.sources") from exc


def load_rows(task: Task, lang: str, split: str, *, world_dir: Optional[Path] = None,
              sources: Sources = None) -> list[dict]:
    """Checked rows of (task, lang, split) with our column names and an int ``gold``:
    every required column present, labels in range, at least one row."""
    org = origin(task, lang, split, world_dir=world_dir, sources=sources)
    what = f"task {task.name!r}, language {lang!r}, split {split!r} ({org.where})"
    raw = read_rows(org, what=what)
    src = None if world_dir is not None else source_of(task, sources)
    renames = dict(src.columns) if src is not None else {}
    required = list(task.fields) + [task.label]
    rows = []
    for n, row in enumerate(raw):
        if not isinstance(row, dict):
            raise TaskError(f"{what}: row {n} is not an object: {row!r}")
        row = _renamed(row, renames)
        missing = [c for c in required if c not in row]
        if missing:
            hint = "; map them with " + f"eval.sources.{task.name}.columns (ours: theirs)" if world_dir is None else ""
            raise TaskError(f"{what}: missing column(s) {missing} in row {n}; it has {sorted(row)}{hint}")
        if any(row[c] in (None, "") for c in task.skip_empty):
            continue
        row["gold"] = _gold(task, row, n, what)
        rows.append(row)
    if not rows:
        raise TaskError(f"{what}: no items (the file or split is empty)")
    return rows


def _renamed(row: dict, renames: Mapping[str, str]) -> dict:
    out = dict(row)
    for ours, theirs in renames.items():
        if theirs in out and ours != theirs:
            out[ours] = out.pop(theirs)
    return out


def _gold(task: Task, row: dict, n: int, what: str) -> int:
    raw = row[task.label]
    n_options = task.n_options if task.n_options is not None else _list_len(row, task, n, what)
    try:
        gold = task.gold(raw)
    except (TypeError, ValueError) as exc:
        raise TaskError(f"{what}: row {n}: label column {task.label!r} has {raw!r}, not a label "
                        f"({exc})") from exc
    if not 0 <= gold < n_options:
        raise TaskError(f"{what}: row {n}: label {raw!r} in column {task.label!r} is out of range: "
                        f"{task.name} has {n_options} options (gold index must be 0..{n_options - 1})")
    return gold


def _list_len(row: dict, task: Task, n: int, what: str) -> int:
    field = task.world.choices if task.world is not None and isinstance(task.world.choices, str) else None
    values: Any = row.get(field) if field else None
    if not isinstance(values, list) or len(values) < 2:
        raise TaskError(f"{what}: row {n}: column {field!r} must list at least 2 options, got {values!r}")
    return len(values)
