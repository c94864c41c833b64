"""Read a configured data source: a hub id (+ config, split), local files (JSON/JSONL/CSV/
TSV/Parquet, globs, ``{lang}`` for one file per language), or a ``save_to_disk`` directory;
rename columns to ours.

Local JSON/JSONL/CSV/TSV are read with the standard library, line by line: that gives every
error a file and line number, and it reads text exactly as written (the ``datasets`` CSV
builder changed PAWS-X sentences that contain quotes; TSV here is read with
``csv.QUOTE_NONE``: a tab separates fields, a quote is just a character). ``datasets``
reads Parquet, hub ids and ``save_to_disk`` directories, streamed (an iterable dataset)
when the source says ``streaming: true``. ``max_rows`` stops reading after that many rows,
so a capped source is never read whole.

Problems are ``SourceError`` (an ``XalignError``: the CLI prints it without a traceback)
naming the file, the line and what was expected; up to ``max_bad_lines`` malformed lines
are skipped and counted (``Rows.bad_lines``, and the run's ``data/bad_lines/...``).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from xalign.config.schema import SourceConfig
from xalign.errors import XalignError

_FORMATS = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
#: Formats read with the standard library (line numbers, text exactly as written).
TEXT_FORMATS = ("json", "jsonl", "csv", "tsv")


class SourceError(XalignError, ValueError):
    """A data source that cannot be read as configured."""


class Rows(list):
    """The rows of a source (dicts with our column names), with what reading them found."""

    bad_lines: int = 0


def fill_lang(value: Optional[str], lang: Optional[str]) -> Optional[str]:
    return value.replace("{lang}", lang) if value is not None and lang else value


def source_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = Path(path.replace("*", "x")).suffix.lower()
    if suffix not in _FORMATS:
        raise SourceError(f"cannot tell the format of {path!r} from its extension; set `format` "
                          f"(one of json, jsonl, csv, tsv, parquet, disk)")
    return _FORMATS[suffix]


def local_files(src: SourceConfig, *, lang: Optional[str], key: str) -> list[str]:
    """The files of a local source (a glob's matches, sorted), each checked to exist."""
    path = str(Path(fill_lang(src.path, lang)).expanduser())
    if src.format == "disk":
        if not Path(path).is_dir():
            raise SourceError(f"{key}.path: {path!r} is not a save_to_disk directory (it does not exist"
                              f"{'' if not Path(path).exists() else ' as a directory'})")
        return [path]
    if any(c in path for c in "*?["):
        files = sorted(f for f in glob.glob(path) if Path(f).is_file())
        if not files:
            raise SourceError(f"{key}.path: no file matches {path!r}")
        return files
    if not Path(path).is_file():
        where = Path(path).parent
        near = sorted(p.name for p in where.iterdir())[:20] if where.is_dir() else []
        what = f" for language {lang!r}" if lang and "{lang}" in (src.path or "") else ""
        raise SourceError(f"{key}.path: no file matches {path!r}{what}: it does not exist"
                          + (f" ({where} holds {', '.join(near)})" if near else f" (no folder {where})"))
    return [path]


# --- local text files, with line numbers ---------------------------------------------------

class BadLines:
    """Counts malformed lines of one source; the one past ``limit`` is an error."""

    def __init__(self, key: str, limit: int):
        self.key, self.limit, self.count = key, limit, 0

    def __call__(self, path: str, line: int, what: str) -> None:
        self.count += 1
        if self.count > self.limit:
            skipped = (f" ({self.limit} earlier malformed line(s) were skipped, the most `{self.key}.max_bad_lines` "
                       f"allows)" if self.limit else "")
            raise SourceError(f"{path}:{line}: {what}{skipped}. Fix the line, or set `{self.key}.max_bad_lines` "
                              f"to skip up to that many malformed lines (they are counted in the run's data stats)")


#: Longest line read from a text source; a longer one is refused (without reading it whole).
MAX_LINE_BYTES = 16 * 2**20


def text_lines(path: str, bad: BadLines) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, read lazily; a line that is not UTF-8 is a bad
    line named by its byte offset in the file."""
    with open(path, "rb") as f:
        offset = 0
        for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(raw) > MAX_LINE_BYTES:
                raise SourceError(f"{path}:{number}: the line is longer than {MAX_LINE_BYTES // 2**20} MiB (read stopped "
                                  "there); expected text with one record per line. Is this the right file (not a "
                                  "binary or a one-line dump)? Split it into one JSON object per line")
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                bad(path, number, f"not UTF-8: byte offset {offset + exc.start} (0x{raw[exc.start]:02x}, "
                    f"column {exc.start + 1} of the line) cannot be decoded; save the file as UTF-8 "
                    f"(e.g. iconv -f <its encoding> -t UTF-8)")
                text = None
            offset += len(raw)
            if text is not None:
                yield number, text


def json_rows(path: str, bad: BadLines) -> Iterator[tuple[int, dict]]:
    """JSON lines (one object per line); a ``.json`` file that starts with ``[`` is one array."""
    lines = text_lines(path, bad)
    first = next(((n, t) for n, t in lines if t.strip()), None)
    if first is None:
        return
    if first[1].lstrip().startswith("["):
        text = first[1] + "".join(t for _, t in lines)
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}:{first[0] + exc.lineno - 1}: not valid JSON ({exc.msg}, column {exc.colno}); "
                              "expected a JSON array of objects or one JSON object per line") from None
        for i, item in enumerate(items):
            if isinstance(item, dict):
                yield first[0], item
            else:
                bad(path, first[0], f"item {i} of the JSON array is a {type(item).__name__}, expected an object")
        return
    for number, text in itertools.chain([first], lines):
        if not text.strip():
            continue
        try:
            row = json.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            bad(path, number, f"not valid JSON ({exc.msg}, column {exc.colno}); expected one JSON object per line")
            continue
        if not isinstance(row, dict):
            bad(path, number, f"a JSON {type(row).__name__}, expected one JSON object per line")
            continue
        yield number, row


def delimited_rows(path: str, bad: BadLines, *, tsv: bool) -> Iterator[tuple[int, dict]]:
    """CSV (standard quoting) or TSV (no quoting: a tab separates, quotes are text), with a
    header line; a line with another number of fields than the header is a bad line."""
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {}
    reader = csv.reader((text for _, text in text_lines(path, bad)), **options)
    name = "tab-separated" if tsv else "comma-separated"
    try:
        header = next(reader)
    except StopIteration:
        return
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            bad(path, reader.line_num, f"not valid CSV ({exc})")
            continue
        if not fields or fields == [""]:
            continue
        if len(fields) != len(header):
            bad(path, reader.line_num, f"{len(fields)} {name} fields, expected {len(header)} as in the header "
                f"({', '.join(header)})")
            continue
        yield reader.line_num, dict(zip(header, fields))


def _text_rows(path: str, fmt: str, bad: BadLines) -> Iterator[tuple[int, dict]]:
    if fmt in ("json", "jsonl"):
        return json_rows(path, bad)
    return delimited_rows(path, bad, tsv=fmt == "tsv")


# --- datasets: Parquet, hub ids, save_to_disk -------------------------------------------------

def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_error(src: SourceConfig, lang: Optional[str], key: str, exc: Exception) -> SourceError:
    hub, name = fill_lang(src.hub, lang), fill_lang(src.name, lang)
    what = f"{key}.hub: cannot load hub dataset {hub!r} (name={name!r}, split={src.split!r})"
    local = (f"To use local files instead, download them elsewhere and point `path:` at them, e.g. "
             f"{key}: {{path: /data/{hub.rsplit('/', 1)[-1]}/{'{lang}' if src.name and '{lang}' in src.name else 'train'}"
             f".jsonl}} (JSONL, CSV, TSV, Parquet or a save_to_disk folder with format: disk)")
    chain, e = [], exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if hub_offline():
        return SourceError(f"{what}: HF_HUB_OFFLINE=1 (or HF_DATASETS_OFFLINE=1) is set and it is not in the local "
                           f"datasets cache. {local}. ({type(exc).__name__}: {exc})")
    network = any(isinstance(e, (ConnectionError, TimeoutError)) or "Connect" in type(e).__name__
                  or "Timeout" in type(e).__name__ for e in chain)
    if network:
        return SourceError(f"{what}: the Hugging Face hub cannot be reached (no network?). {local}. "
                           f"({type(exc).__name__}: {exc})")
    return SourceError(f"{what}: {type(exc).__name__}: {exc}. {local}.")


def _datasets_source(src: SourceConfig, *, lang: Optional[str], key: str, files: Optional[list[str]]):
    """(a Dataset or IterableDataset, a description for messages)."""
    import datasets

    if src.hub is not None:
        hub, name = fill_lang(src.hub, lang), fill_lang(src.name, lang)
        try:
            ds = datasets.load_dataset(hub, name, split=src.split, streaming=src.streaming)
        except Exception as exc:  # datasets raises many kinds; all mean "cannot read this"
            raise _hub_error(src, lang, key, exc) from exc
        return ds, f"hub dataset {hub!r} (name={name!r}, split={src.split!r})"
    if src.format == "disk":
        try:
            ds = datasets.load_from_disk(files[0])
        except Exception as exc:
            raise SourceError(f"{key}.path: {files[0]!r} is not a save_to_disk directory: {exc}") from exc
        if isinstance(ds, datasets.DatasetDict):
            if src.split not in ds:
                raise SourceError(f"{key}.split: {files[0]!r} has no split {src.split!r}; it has {sorted(ds)}")
            ds = ds[src.split]
        return (ds.to_iterable_dataset() if src.streaming else ds), files[0]
    try:
        ds = datasets.load_dataset("parquet", data_files=files, split="train", streaming=src.streaming)
    except Exception as exc:
        raise SourceError(f"{key}.path: cannot read {files if len(files) > 1 else files[0]!r} as Parquet: {exc}") from exc
    return ds, files[0] if len(files) == 1 else f"{len(files)} Parquet files ({files[0]}, ...)"


# --- the entry point -----------------------------------------------------------------------------

def _missing_columns(key: str, where: str, have: Sequence[str], renames: dict, required: Sequence[str]) -> None:
    theirs = [renames.get(c, c) for c in required]
    absent = [c for c in theirs if c not in have]
    if not absent:
        return
    named = [c for c in absent if c in renames.values()]
    if named:
        raise SourceError(f"{key}.columns: {where} has no column {named}; it has {list(have)}")
    raise SourceError(f"{key}: {where} has no column {absent}; it has {list(have)}. Map them with {key}.columns, "
                      f"e.g. {{{absent[0]}: <its column name>}}")


def load_source(src: SourceConfig, *, required: Sequence[str], lang: Optional[str] = None,
                key: str = "data") -> Rows:
    """Rows of the source (``required`` columns only, with our names), at most
    ``src.max_rows`` of them; every column in ``required`` must exist."""
    renames = {ours: theirs for ours, theirs in src.columns.items()}
    out = Rows()
    if src.hub is None and source_format(src.path, src.format) in TEXT_FORMATS:
        fmt = source_format(src.path, src.format)
        bad = BadLines(key, src.max_bad_lines)
        for path in local_files(src, lang=lang, key=key):
            checked = False
            for number, row in _text_rows(path, fmt, bad):
                if not checked:
                    _missing_columns(key, f"{path} (line {number})", list(row), renames, required)
                    checked = True
                try:
                    out.append({c: row[renames.get(c, c)] for c in required})
                except KeyError as exc:
                    bad(path, number, f"no field {exc.args[0]!r} (the line has {', '.join(row)})")
                    continue
                if src.max_rows is not None and len(out) >= src.max_rows:
                    break
            if src.max_rows is not None and len(out) >= src.max_rows:
                break
        out.bad_lines = bad.count
        if not out:
            raise SourceError(f"{key}: {', '.join(local_files(src, lang=lang, key=key))} has no rows (empty, or only "
                              "blank or skipped lines); expected one record per line with the columns "
                              f"{', '.join(required)}")
        return out
    files = None if src.hub is not None else local_files(src, lang=lang, key=key)
    ds, where = _datasets_source(src, lang=lang, key=key, files=files)
    if getattr(ds, "column_names", None):
        _missing_columns(key, where, ds.column_names, renames, required)
    else:                                  # a stream whose features are unknown: look at its first row
        first = next(iter(ds), None)
        if first is None:
            raise SourceError(f"{key}: {where} has no rows")
        _missing_columns(key, where, list(first), renames, required)
    theirs = sorted({renames.get(c, c) for c in required})
    rows: Iterable[dict]
    if src.streaming:                      # an iterable dataset: read no further than max_rows
        rows = ds if src.max_rows is None else itertools.islice(ds, src.max_rows)
    else:
        if src.max_rows is not None:
            ds = ds.select(range(min(src.max_rows, len(ds))))
        rows = ds.select_columns(theirs).to_list()
    for row in rows:
        out.append({c: row[renames.get(c, c)] for c in required})
    return out


# --- fingerprints (the data cache's key) ----------------------------------------------------------

def file_digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_fingerprint(src: SourceConfig, *, lang: Optional[str] = None, key: str = "data") -> str:
    """What identifies the source's content: local files by a hash of their bytes, a
    ``save_to_disk`` folder by its metadata files (which hold ``datasets``' fingerprint), a
    hub dataset by its ``datasets`` fingerprint (read from the local datasets cache), or,
    streamed from the hub, by its id, config and split only."""
    if src.hub is not None:
        ident = f"hub:{fill_lang(src.hub, lang)}:{fill_lang(src.name, lang)}:{src.split}"
        if src.streaming:
            return ident
        ds, _ = _datasets_source(src, lang=lang, key=key, files=None)
        return f"{ident}:{getattr(ds, '_fingerprint', '')}"
    files = local_files(src, lang=lang, key=key)
    if src.format == "disk":
        meta = sorted(p for p in Path(files[0]).rglob("*.json"))
        return "disk:" + ",".join(f"{p.relative_to(files[0])}={file_digest(str(p))}" for p in meta)
    return "files:" + ",".join(file_digest(f) for f in files)
