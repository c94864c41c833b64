"""Task rows -> EvalItems: template words for the protocol, k demonstrations from dev, one
shared prefix per evaluation.

- Demonstrations are drawn with ``random.Random(seed)`` (the global RNG is never touched)
  from the DEV split only, once per (task, language, template, shots, seed): every item of
  the evaluation has the same ``prefix``, so the scorer encodes it once.
- Each demonstration is its context followed by its gold option, and demonstrations are
  joined lm-eval style: ``ctx + gold_option + "\\n\\n"`` each (the option carries the target
  delimiter), then the query's context. For partial-scoring templates (``Template.fill``)
  ``ctx`` is the gold answer's own context, as lm-eval's multiple-input mode does, and each
  query option gets its own context (``EvalItem.contexts``).
- protocol "same": template words and demonstrations in the query's language; "cross"
  (the AFP setting): template words and demonstrations in the pivot, the query's sentences
  in the target language.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Mapping, Optional, Sequence

from xalign.eval.items import EvalItem
from xalign.suggest import did_you_mean
from xalign.tasks.base import (
    FAMILIES,
    FEWSHOT_DELIMITER,
    PROTOCOLS,
    SPLITS,
    Task,
    TaskError,
    Template,
    unknown,
)
from xalign.eval.task_rows import (
    Sources,
    check_language,
    load_rows,
    origin,
    task_languages,
)
from xalign.tasks.registry import get_task


def template_of(task: Task, family: str, *, world: bool) -> Template:
    if family not in FAMILIES:
        raise unknown("template family", family, FAMILIES, where=f"task {task.name!r}: ")
    return task.world if world else task.templates[family]


def words_for(task: Task, template: Template, lang: str, *, world_dir: Optional[Path] = None) -> Mapping[str, str]:
    """The template words of ``lang``: from the template's table, or (world) from the world's
    lexicon (``lexicon.json``: {concept: {lang: word}}, slot names are concept names)."""
    slots = template.word_slots
    if not slots:
        return {}
    if world_dir is not None:
        return _lexicon_words(task, slots, lang, Path(world_dir))
    if lang not in template.words:
        raise TaskError(f"task {task.name!r}: template {_family_of(task, template)!r} has no words for {lang!r}."
                        f"{did_you_mean(lang, list(template.words))} Languages with words: "
                        f"{', '.join(sorted(template.words))}. Use protocol 'cross' with a pivot that has them, "
                        "or the other template family")
    return template.words[lang]


def _family_of(task: Task, template: Template) -> str:
    return next((f for f, t in task.templates.items() if t is template), "world")


_LEXICONS: dict[str, dict] = {}


def _lexicon_words(task: Task, slots: set, lang: str, world_dir: Path) -> dict[str, str]:
    import json

    path = world_dir / "lexicon.json"
    if not path.is_file():
        raise TaskError(f"task {task.name!r}: the world at {world_dir} has no lexicon.json")
    key = f"{path.resolve()}@{path.stat().st_mtime_ns}"  # a world rebuilt in place is re-read
    if key not in _LEXICONS:
        _LEXICONS[key] = json.loads(path.read_text(encoding="utf-8"))
    lexicon = _LEXICONS[key]
    missing = sorted(s for s in slots if lang not in lexicon.get(s, {}))
    if missing:
        raise TaskError(f"task {task.name!r}: the world's lexicon ({path}) has no {missing} for {lang!r}")
    return {s: lexicon[s][lang] for s in slots}


def _item_id(task: Task, row: dict, position: int) -> str:
    return str(row[task.id_field]) if task.id_field and task.id_field in row else str(position)


def _render(task: Task, template: Template, row: dict, w: Mapping[str, str], lang: str, what: str, n: int):
    try:
        return template.render(row, w, lang)
    except (KeyError, ValueError, IndexError, TypeError, AttributeError) as exc:
        raise TaskError(f"{what}: row {n} cannot be rendered: {exc}") from exc


def build_items(task: str, lang: str, *, split: str = "test", template: str = "afp", shots: int = 0,
                protocol: str = "cross", seed: int = 0, pivot: Optional[str] = None,
                world_dir: Optional[Path] = None, sources: Sources = None,
                max_items: Optional[int] = None) -> list[EvalItem]:
    """The EvalItems of one evaluation of ``task`` in ``lang``.

    ``world_dir``: read the synthetic world's task files (and its lexicon for template
    words); else real data from ``sources`` (``eval.sources``, a dict by task name) or the
    task's hub dataset. ``pivot`` is required by protocol "cross". ``max_items`` keeps the
    first N items. Every problem is a TaskError raised here, before any model is needed.
    """
    t = get_task(task)
    family = template
    if split not in SPLITS:
        raise unknown("split", split, SPLITS, where=f"task {t.name!r}: ")
    if protocol not in PROTOCOLS:
        raise unknown("protocol", protocol, PROTOCOLS, where=f"task {t.name!r}: ")
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise TaskError(f"task {t.name!r}: shots must be an int >= 0, got {shots!r}")
    world_dir = Path(world_dir) if world_dir is not None else None
    languages = task_languages(t, world_dir=world_dir, sources=sources)
    check_language(t, lang, languages)
    tmpl = template_of(t, family, world=world_dir is not None)
    if protocol == "cross":
        if pivot is None:
            raise TaskError(f"task {t.name!r}: protocol 'cross' needs a pivot language (template words and "
                            "demonstrations are in the pivot)")
        if world_dir is not None or shots > 0:  # the pivot's data is read: it must be a language of the task
            check_language(t, pivot, languages, what="pivot language")
    word_lang = pivot if protocol == "cross" else lang
    words = words_for(t, tmpl, word_lang, world_dir=world_dir)

    # Resolve every origin before reading any: a missing split fails before a slow hub read.
    origin(t, lang, split, world_dir=world_dir, sources=sources)
    if shots > 0:
        origin(t, word_lang, "dev", world_dir=world_dir, sources=sources)
    rows = load_rows(t, lang, split, world_dir=world_dir, sources=sources)
    prefix, demo_ids = "", set()
    if shots > 0:
        demo_rows = load_rows(t, word_lang, "dev", world_dir=world_dir, sources=sources)
        what = f"task {t.name!r}, language {word_lang!r}, split 'dev'"
        if shots > len(demo_rows):
            raise TaskError(f"{what}: {shots} shots asked, the dev split has only {len(demo_rows)} items")
        picks = random.Random(seed).sample(range(len(demo_rows)), shots)
        parts = []
        for n in picks:
            demo = _render(t, tmpl, demo_rows[n], words, word_lang, what, n)
            gold = demo_rows[n]["gold"]
            parts.append(demo.context_of(gold) + demo.options[gold] + FEWSHOT_DELIMITER)
            demo_ids.add(_item_id(t, demo_rows[n], n))
        prefix = "".join(parts)
    what = f"task {t.name!r}, language {lang!r}, split {split!r}"
    items = []
    for n, row in enumerate(rows):
        idx = _item_id(t, row, n)
        if split == "dev" and idx in demo_ids:
            continue  # a query must never be one of its own demonstrations (or their translation)
        context, options, contexts = _render(t, tmpl, row, words, lang, what, n)
        items.append(EvalItem(task=t.name, lang=lang, idx=idx, prefix=prefix, context=context,
                              options=options, gold=row["gold"], contexts=contexts))
        if max_items is not None and len(items) >= max_items:
            break
    return items


def build_eval_items(cfg, *, pivot: Optional[str], world_dir: Optional[Path] = None,
                     languages: Optional[Sequence[str]] = None, split: Optional[str] = None,
                     protocols: Optional[Sequence[str]] = None) -> dict[tuple[str, str, int, str], list[EvalItem]]:
    """Every evaluation of an ``EvalConfig`` (task x language x seed x protocol), keyed
    ``(task, lang, seed, protocol)``, built up front so that a bad file, column, label or
    language fails before the model is loaded; all problems are reported together in one
    TaskError.

    ``languages`` (default ``cfg.languages``) are intersected with each task's languages; a
    language that no task has is an error. None = every language of each task.
    ``protocols``: default every protocol of ``cfg.protocol`` (one name or a list).
    """
    split = split or cfg.split
    if protocols is None:
        protocols = cfg.protocol if isinstance(cfg.protocol, list) else [cfg.protocol]
    languages = list(languages) if languages is not None else cfg.languages
    seeds = cfg.seeds if cfg.shots > 0 else cfg.seeds[:1]
    out: dict[tuple[str, str, int], list[EvalItem]] = {}
    problems: list[str] = []
    seen: set[str] = set()
    all_langs: set[str] = set()
    for name in cfg.tasks:
        try:
            have = task_languages(name, world_dir=world_dir, sources=cfg.sources)
        except TaskError as exc:
            problems.append(str(exc))
            continue
        all_langs |= set(have)
        wanted = [lang for lang in languages if lang in have] if languages else list(have)
        seen |= set(wanted)
        for protocol in protocols:
            for lang in wanted:
                for seed in seeds:
                    try:
                        out[(name, lang, seed, protocol)] = build_items(
                            name, lang, split=split, template=cfg.template, shots=cfg.shots, protocol=protocol,
                            seed=seed, pivot=pivot, world_dir=world_dir, sources=cfg.sources, max_items=cfg.max_items)
                    except TaskError as exc:
                        problems.append(str(exc) + (f" (protocol {protocol!r})" if len(protocols) > 1 else ""))
                        break
    for lang in languages or ():
        if lang not in seen and all_langs:
            problems.append(f"eval.languages: no task of {list(cfg.tasks)} has language {lang!r}."
                            f"{did_you_mean(lang, sorted(all_langs))} Available: {', '.join(sorted(all_langs))}")
    if problems:
        raise TaskError(f"{len(problems)} evaluation problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    return out
