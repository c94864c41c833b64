"""Per-item evaluation records, one JSON object per line.

A record holds everything needed to audit or re-score an item without the task code:
task, lang, idx, the rendered ``prompt`` (prefix + context), the options, the gold index,
per-option ``logprob`` / ``n_tokens`` / ``n_chars`` / ``is_greedy``, and under ``pred`` and
``correct`` the prediction and its correctness for every normalisation of
``xalign.eval.scoring.NORMALIZATIONS``. Keys are sorted and items keep their input order,
so the same scores give byte-identical files.

Option j's score is the log-likelihood of ``options[j]`` after its prompt. That prompt is
``prompt`` for every option, except for items whose options have their own contexts
(lm-eval's "multiple input" mode, XWinograd's ``lm_eval`` template) when these differ:
their records also hold ``prompts``, one full prompt (prefix + the option's context) per
option, and ``prompt`` is then the part they share (prefix + the item's shared context).
``record_prompts`` gives option j's prompt in both cases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from xalign.eval.items import EvalItem, OptionScore
from xalign.eval.scoring import NORMALIZATIONS, check_normalization, choose


def make_record(item: EvalItem, scores: Sequence[OptionScore]) -> dict:
    if len(scores) != len(item.options):
        raise ValueError(
            f"item {item.task}/{item.lang}/{item.idx} has {len(item.options)} options but {len(scores)} scores"
        )
    preds = {norm: choose(scores, norm) for norm in NORMALIZATIONS}
    record = {
        "task": item.task,
        "lang": item.lang,
        "idx": item.idx,
        "prompt": item.prefix + item.context,
        "options": list(item.options),
        "gold": item.gold,
        "logprob": [s.logprob for s in scores],
        "n_tokens": [s.n_tokens for s in scores],
        "n_chars": [s.n_chars for s in scores],
        "is_greedy": [s.is_greedy for s in scores],
        "pred": preds,
        "correct": {norm: pred == item.gold for norm, pred in preds.items()},
    }
    prompts = list(item.prompts())
    if any(p != record["prompt"] for p in prompts):  # per-option contexts that differ
        record["prompts"] = prompts
    return record


def record_prompts(record: dict) -> list[str]:
    """Option j's prompt (prefix + its context) for every option of a record: ``prompts``
    where the record has them, else ``prompt`` for each option."""
    if "prompts" in record:
        return list(record["prompts"])
    return [record["prompt"]] * len(record["options"])


def write_records(path: str | Path, items: Sequence[EvalItem], scores: Sequence[Sequence[OptionScore]]) -> Path:
    """Write one record per item (input order) to ``path`` as JSONL; returns the path."""
    if len(items) != len(scores):
        raise ValueError(f"{len(items)} items but {len(scores)} score lists")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(make_record(item, s), sort_keys=True, ensure_ascii=False) for item, s in zip(items, scores)]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_records(path: str | Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def record_scores(record: dict) -> list[OptionScore]:
    """The record's per-option numbers as ``OptionScore``s."""
    return [
        OptionScore(logprob=lp, n_tokens=nt, n_chars=nc, is_greedy=g)
        for lp, nt, nc, g in zip(record["logprob"], record["n_tokens"], record["n_chars"], record["is_greedy"])
    ]


def accuracy_from_records(records: Sequence[dict], normalization: str = "none") -> float:
    """Share of records whose prediction, recomputed from the stored per-option numbers,
    is the gold option."""
    check_normalization(normalization)
    if not records:
        raise ValueError("accuracy of zero records is undefined")
    hits = sum(choose(record_scores(r), normalization) == r["gold"] for r in records)
    return hits / len(records)
