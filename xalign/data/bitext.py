"""Bitext as people keep it: one plain-text file per language, line i of each a translation
of line i of the other (the Moses/OPUS layout: ``corpus.de-en.de`` + ``corpus.de-en.en``;
Tatoeba/LASER: ``deu-eng.deu`` + ``deu-eng.eng``), read as a pairs source
(``data.pairs: {format: bitext, path: ...}``).

The path is a template with these placeholders, filled per language pair of the run
(the pivot against each other language of ``data.languages``):

    {lang}   the other language's code as the files write it
    {pivot}  the pivot's code as the files write it
    {side}   the code of the language the file holds ({pivot} for one file, {lang} for the other)
    {pair}   the two codes in alphabetical order joined by "-" (OPUS: de-en, en-fr)

``file_codes: iso639-3`` says the files use ISO 639-3 codes (deu, cmn, swh, eng), mapped to
the run's 2-letter codes by ``ISO639_3`` (extended, or overridden, by ``iso639_3: {yue: zh}``);
``file_codes: run`` (the default) that they use the run's codes. Two files whose line counts
differ are refused with both counts and both paths; a line empty on either side drops the pair
(counted per language, the run's ``data/bitext_empty/<lang>``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from xalign.config.schema import SourceConfig
from xalign.data.iso639 import file_code_candidates
from xalign.data.sources import BadLines, SourceError

PLACEHOLDERS = ("{lang}", "{pivot}", "{side}", "{pair}")


def fill(template: str, *, lang: str, pivot: str, side: str) -> str:
    pair = "-".join(sorted((lang, pivot)))
    return (template.replace("{lang}", lang).replace("{pivot}", pivot).replace("{side}", side)
            .replace("{pair}", pair))


def bitext_paths(src: SourceConfig, *, pivot: str, lang: str, key: str) -> tuple[str, str]:
    """(pivot file, other language's file) for one pair of the run: the first codes (run
    codes, or ISO 639-3 candidates) for which both files exist."""
    template = str(Path(src.path).expanduser())
    if src.file_codes == "run":
        pivots, langs = [pivot], [lang]
    else:
        pivots = file_code_candidates(pivot, src.iso639_3)
        langs = file_code_candidates(lang, src.iso639_3)
    tried = []
    for lc in langs:
        for pc in pivots:
            pivot_file = fill(template, lang=lc, pivot=pc, side=pc)
            lang_file = fill(template, lang=lc, pivot=pc, side=lc)
            if Path(pivot_file).is_file() and Path(lang_file).is_file():
                return pivot_file, lang_file
            tried.append((pivot_file, lang_file))
    if not langs or not pivots:
        missing = lang if not langs else pivot
        raise SourceError(f"{key}.iso639_3: no ISO 639-3 code is known for {missing!r}; name the code its files "
                          f"use, e.g. {key}.iso639_3: {{<xxx>: {missing}}} (or set {key}.file_codes: run when the "
                          "files use the run's codes)")
    shown = "; ".join(f"{a} + {b}" for a, b in tried[:4])
    where = Path(tried[0][1]).parent
    near = sorted(p.name for p in where.iterdir())[:12] if where.is_dir() else []
    raise SourceError(f"{key}.path: no bitext files for {pivot}-{lang}: tried {shown}"
                      + (f" ({where} holds {', '.join(near)}{', ...' if len(near) == 12 else ''})" if near
                         else f" (no folder {where})"))


@dataclass
class Bitext:
    pairs: list = field(default_factory=list)          # dicts src, tgt, src_lang, tgt_lang (src = pivot)
    empty: dict = field(default_factory=dict)          # lang -> pairs dropped for an empty side
    files: dict = field(default_factory=dict)          # lang -> (pivot file, lang file)
    bad_lines: int = 0


def count_lines(path: str) -> int:
    """Lines of a file (a last line without a newline counts)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def _decode(raw: bytes, path: str, number: int, bad: BadLines) -> Optional[str]:
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        bad(path, number, f"not UTF-8 (column {exc.start + 1} of the line); save the file as UTF-8 (e.g. iconv -f "
            "<its encoding> -t UTF-8); the pair is skipped on both sides")
        return None


def read_bitext(src: SourceConfig, *, pivot: str, languages: Sequence[str], key: str = "data.pairs") -> Bitext:
    """The pairs of the pivot with every other language of ``languages``; at most
    ``src.max_rows`` per language. Lines are paired by number, so a line that cannot be
    used drops the pair on both sides."""
    out = Bitext()
    bad = BadLines(key, src.max_bad_lines)
    for lang in [lang for lang in dict.fromkeys(languages) if lang != pivot]:
        pivot_file, lang_file = bitext_paths(src, pivot=pivot, lang=lang, key=key)
        out.files[lang] = (pivot_file, lang_file)
        n_pivot, n_lang = count_lines(pivot_file), count_lines(lang_file)
        if n_pivot != n_lang:
            raise SourceError(f"{key}: the bitext files of {pivot}-{lang} differ in length: {pivot_file} has "
                              f"{n_pivot:,} lines and {lang_file} has {n_lang:,}; line i of one must translate "
                              "line i of the other (check that both come from the same release and neither was cut "
                              "short)")
        empty = taken = 0
        with open(pivot_file, "rb") as fa, open(lang_file, "rb") as fb:
            for number, (raw_a, raw_b) in enumerate(zip(fa, fb), 1):
                a = _decode(raw_a, pivot_file, number, bad)
                b = _decode(raw_b, lang_file, number, bad)
                if a is None or b is None:
                    continue
                if not a.strip() or not b.strip():
                    empty += 1
                    continue
                out.pairs.append({"src": a, "tgt": b, "src_lang": pivot, "tgt_lang": lang})
                taken += 1
                if src.max_rows is not None and taken >= src.max_rows:
                    break
        out.empty[lang] = empty
        if taken == 0:
            raise SourceError(f"{key}: {pivot_file} and {lang_file} hold no pair with both sides non-empty "
                              f"({n_pivot:,} lines, {empty:,} with an empty side)")
    out.bad_lines = bad.count
    return out


def split_heldout(pairs: Sequence[Mapping], heldout, *, seed: int, key: str = "data.pairs") -> tuple[list, list]:
    """(training pairs, held-out pairs): per target language, ``heldout`` pairs (an int) or
    that share of them (a float < 1) drawn with a seeded RNG, never trained on; order kept."""
    if not heldout:
        return list(pairs), []
    by_lang: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        by_lang.setdefault(pair["tgt_lang"], []).append(i)
    held: set[int] = set()
    for lang, idx in by_lang.items():
        n = heldout if isinstance(heldout, int) else round(heldout * len(idx))
        if n >= len(idx):
            raise SourceError(f"{key}.heldout: {heldout} held-out pairs leave none to train on for {lang} "
                              f"({len(idx)} pairs); lower it (an int is pairs per language, a float < 1 a share)")
        held.update(idx[j] for j in random.Random(f"xalign.data.heldout.{lang}.{seed}").sample(range(len(idx)), n))
    return ([p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held])


def bitext_fingerprint(src: SourceConfig, *, pivot: str, languages: Sequence[str], key: str = "data.pairs") -> str:
    """What identifies a bitext source's content (the data cache's key): a hash of every
    file's bytes, language by language."""
    from xalign.data.sources import file_digest

    parts = []
    for lang in [lang for lang in dict.fromkeys(languages) if lang != pivot]:
        pivot_file, lang_file = bitext_paths(src, pivot=pivot, lang=lang, key=key)
        parts.append(f"{lang}={file_digest(pivot_file)}+{file_digest(lang_file)}")
    return "bitext:" + ",".join(parts)
