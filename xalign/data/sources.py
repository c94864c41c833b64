"""Read a configured data source through HF ``datasets``: a hub id (+ config, split), local
files (JSON/JSONL/CSV/TSV/Parquet, globs, ``{lang}`` for one file per language), or a
``save_to_disk`` directory; rename columns to ours."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Optional, Sequence

from xalign.config.schema import SourceConfig
from xalign.errors import XalignError

_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


class SourceError(XalignError, ValueError):
    """A data source that cannot be read as configured."""


def _builder(path: str, fmt: str) -> tuple[str, dict]:
    if fmt == "auto":
        suffix = Path(path.replace("*", "x")).suffix.lower()
        if suffix not in _BUILDERS:
            raise SourceError(f"cannot tell the format of {path!r} from its extension; set `format` "
                              f"(one of json, jsonl, csv, tsv, parquet, disk)")
        fmt = "tsv" if suffix == ".tsv" else _BUILDERS[suffix]
    extra = {"delimiter": "\t"} if fmt == "tsv" else {}
    return {"jsonl": "json", "tsv": "csv"}.get(fmt, fmt), extra


def load_source(src: SourceConfig, *, required: Sequence[str], lang: Optional[str] = None,
                key: str = "data") -> list[dict]:
    """Rows of the source with our column names; every column in ``required`` must exist."""
    import datasets

    fill = (lambda s: s.replace("{lang}", lang)) if lang else (lambda s: s)
    if src.hub is not None:
        try:
            ds = datasets.load_dataset(fill(src.hub), fill(src.name) if src.name else None, split=src.split)
        except Exception as exc:  # datasets raises many kinds; all mean "cannot read this"
            raise SourceError(f"{key}: cannot load hub dataset {fill(src.hub)!r} "
                              f"(name={src.name!r}, split={src.split!r}): {exc}") from exc
    else:
        path = str(Path(fill(src.path)).expanduser())
        if src.format == "disk":
            try:
                ds = datasets.load_from_disk(path)
            except Exception as exc:
                raise SourceError(f"{key}.path: {path!r} is not a save_to_disk directory: {exc}") from exc
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[src.split]
        else:
            files = sorted(glob.glob(path)) if any(c in path for c in "*?[") else [path]
            if not files or not all(Path(f).is_file() for f in files):
                raise SourceError(f"{key}.path: no file matches {path!r}")
            builder, extra = _builder(path, src.format)
            try:
                ds = datasets.load_dataset(builder, data_files=files, split="train", **extra)
            except Exception as exc:
                raise SourceError(f"{key}.path: cannot read {path!r} as {builder}: {exc}") from exc
    renames = {theirs: ours for ours, theirs in src.columns.items() if theirs != ours}
    missing = [c for c in renames if c not in ds.column_names]
    if missing:
        raise SourceError(f"{key}.columns: the source has no column {missing}; it has {ds.column_names}")
    ds = ds.rename_columns(renames) if renames else ds
    absent = [c for c in required if c not in ds.column_names]
    if absent:
        raise SourceError(f"{key}: the source lacks the columns {absent} (it has {ds.column_names}); "
                          f"map them with {key}.columns, e.g. {{{absent[0]}: <its column name>}}")
    return ds.select_columns(list(required)).to_list()
