"""The evaluator: a model and a tokenizer in, metrics (the contract's names), per-item
records and plots out. Used stand-alone (`xalign eval`) and by the training loop (periodic
dev evaluations, the final test evaluation). Never imports training code, never changes the
tokenizer, never touches global RNG state."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from xalign import progress
from xalign.config.eval import EvalConfig
from xalign.eval.metrics import summarise, table
from xalign.eval.plots import accuracy_bars, projection
from xalign.eval.records import write_records
from xalign.eval.representations import alignment_by_pair, alignment_metrics, embed_parallel
from xalign.eval.scoring import NORMALIZATIONS, choose, score_items
from xalign.eval.task_items import build_eval_items

#: Metric suffix of each normalisation; the primary one (eval.normalization) is plain "acc".
SUFFIX = {"none": "acc_sum", "token": "acc_token", "char": "acc_char"}


@dataclass
class EvalResult:
    metrics: dict[str, float]
    table: str
    files: list[Path] = field(default_factory=list)   # records and plots, for MLflow artifacts
    seconds: float = 0.0


@dataclass(frozen=True)
class Target:
    """What is evaluated: the pivot, the languages, and where task data comes from."""

    pivot: str
    languages: Optional[Sequence[str]] = None    # None = every language each task has
    world_dir: Optional[Path] = None             # the synthetic world's tasks, when set
    layer: int = 1                               # absolute hidden-state index for MEXA/retrieval
    pooler: str = "mean"
    #: Real runs: held-out pairs of data.pairs (never trained on) for retrieval and MEXA,
    #: {lang: {"pivot": [...], "tgt": [...]}} (xalign.data.build.heldout_pairs).
    heldout: Optional[dict] = field(default=None, hash=False, compare=False)


def plan_items(cfg: EvalConfig, target: Target, *, split: Optional[str] = None,
               protocols: Optional[Sequence[str]] = None):
    """Every (task, language, seed, protocol) -> items, built before any model is loaded so
    that a bad file, column, label or language fails first (all problems in one TaskError).
    ``protocols``: default all of ``eval.protocol``."""
    items = build_eval_items(cfg, pivot=target.pivot, world_dir=target.world_dir, languages=target.languages,
                             split=split, protocols=protocols)
    return {key: value[: cfg.max_items] if cfg.max_items else value for key, value in items.items()}


def shard_bounds(n: int, shard: tuple[int, int]) -> tuple[int, int]:
    """[lo, hi) of part ``index`` of ``count`` contiguous, near-equal parts of n items."""
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard index must lie in [0, {count}), got {index}")
    return n * index // count, n * (index + 1) // count


def score_shard(model, tokenizer, items: dict, *, batch_size: int, shard: tuple[int, int] = (0, 1),
                label: str = "eval", relay: bool = False) -> dict:
    """Scores of part ``shard`` = (index, count) of every (task, language, seed)'s items:
    one contiguous slice of each, so every part still reuses each prefix's KV cache.
    ``merge_shards`` of all parts, in index order, equals ``score_shard`` with (0, 1).
    Shows progress (``label: task/language``, items/s); ``relay``: from a Ray task too."""
    out = {}
    bounds = {key: shard_bounds(len(batch), shard) for key, batch in items.items()}
    # The same items under another protocol (the pivot's: cross and same render it alike) are scored once.
    same_as = {}
    for key, batch in items.items():
        same_as[key] = next((k for k in same_as if same_as[k] == k and k[:3] == key[:3] and items[k] == batch), key)
    several_seeds, several_protocols = len({k[2] for k in items}) > 1, len({k[3] for k in items}) > 1
    total = sum(hi - lo for key, (lo, hi) in bounds.items() if same_as[key] == key)
    with progress.bar(label, total=total, unit="item", relay=relay) as shown:
        for key, batch in items.items():
            (lo, hi), (task, lang, seed, protocol) = bounds[key], key
            if same_as[key] != key:
                out[key] = out[same_as[key]]
                continue
            shown.set_description(f"{label} {task}/{lang}" + (f" seed {seed}" if several_seeds else "")
                                  + (f" ({protocol})" if several_protocols else ""))
            out[key] = score_items(model, tokenizer, batch[lo:hi], batch_size=batch_size,
                                   progress=shown.update) if hi > lo else []
    return out


def merge_shards(parts: Sequence[dict]) -> dict:
    """The scores of every item, from the parts of ``score_shard`` in index order."""
    return {key: [score for part in parts for score in part[key]] for key in parts[0]}


def evaluate(model, tokenizer, cfg: EvalConfig, target: Target, *, split: Optional[str] = None,
             prefix: str = "eval", out_dir: Optional[Path] = None, representations: bool = True,
             items: Optional[dict] = None, scores: Optional[dict] = None, label: str = "eval",
             relay: bool = False) -> EvalResult:
    """Score every task x language x seed (``items`` from ``plan_items``, built here when not
    given; ``scores``: already scored, e.g. in shards by several workers), summarise, and
    (with ``out_dir``) write per-item records and plots there. ``label``, ``relay``: the
    progress display (see ``score_shard``)."""
    start = time.perf_counter()
    items = items if items is not None else plan_items(cfg, target, split=split)
    if scores is None:
        scores = score_shard(model, tokenizer, items, batch_size=cfg.batch_size, label=label, relay=relay)
    protocols = [p for p in cfg.protocols if any(k[3] == p for k in items)]
    protocols += sorted({k[3] for k in items} - set(protocols))
    # The primary protocol's metrics keep the contract's names; another's go under <prefix>_<protocol>/.
    prefixes = {p: prefix if i == 0 else f"{prefix}_{p}" for i, p in enumerate(protocols)}
    metrics: dict[str, float] = {}
    records: dict[str, tuple[list, list]] = {p: ([], []) for p in protocols}
    for protocol in protocols:
        accuracies: dict[str, dict[str, dict[str, list[float]]]] = {n: {} for n in NORMALIZATIONS}
        distinct: dict[tuple[str, str], set] = {}
        for key, batch in items.items():
            (task, lang, _seed, key_protocol), item_scores = key, scores[key]
            if key_protocol != protocol:
                continue
            for norm in NORMALIZATIONS:
                correct = [choose(s, norm) == item.gold for item, s in zip(batch, item_scores, strict=True)]
                accuracies[norm].setdefault(task, {}).setdefault(lang, []).append(sum(correct) / len(correct))
            distinct.setdefault((task, lang), set()).update(item.idx for item in batch)
            records[protocol][0].extend(batch)
            records[protocol][1].extend(item_scores)
        name = prefixes[protocol]
        metrics.update(summarise(accuracies[cfg.normalization], pivot=target.pivot, prefix=name))
        for norm in NORMALIZATIONS:
            for task, by_lang in accuracies[norm].items():
                for lang, values in by_lang.items():
                    metrics[f"{name}/{task}/{lang}/{SUFFIX[norm]}"] = sum(values) / len(values)
        # The items each accuracy is over (distinct items; each seed scores the same ones): the
        # standard errors of `xalign report` need them.
        metrics.update({f"{name}/{task}/{lang}/n_items": float(len(ids)) for (task, lang), ids in distinct.items()})
    files: list[Path] = []
    vectors = None
    if representations and (target.world_dir is not None or target.heldout):
        if target.world_dir is not None:
            emb = embed_parallel(model, tokenizer, heldout_sentences(target.world_dir, target.pivot, target.languages),
                                 pooler=target.pooler, batch_size=cfg.batch_size)
            align = alignment_metrics(emb, pivot=target.pivot, layer=target.layer)
            pairs = {lang: int(v.shape[1]) for lang, v in emb.vectors.items() if lang != target.pivot}
        else:      # held-out bitext: each language against its own pivot sentences
            langs = [lang for lang in sorted(target.heldout) if not target.languages or lang in target.languages]
            sentences = {f"{target.pivot}>{lang}": target.heldout[lang]["pivot"] for lang in langs}
            sentences.update({lang: target.heldout[lang]["tgt"] for lang in langs})
            emb = embed_parallel(model, tokenizer, sentences, pooler=target.pooler, batch_size=cfg.batch_size)
            align = alignment_by_pair(emb, {lang: f"{target.pivot}>{lang}" for lang in langs}, pivot=target.pivot,
                                      layer=target.layer)
            pairs = {lang: len(target.heldout[lang]["tgt"]) for lang in langs}
        # the held-out pairs retrieval and MEXA are over, per language (for standard errors)
        align.update({f"align/retrieval/{lang}/n_pairs": float(n) for lang, n in pairs.items()})
        # align/... is the evaluated model's (periodically during training, and at the end);
        # another prefix (base/) keeps a second model's apart: base/align/...
        metrics.update(align if prefix in ("eval", "dev") else {f"{prefix}/{k}": v for k, v in align.items()})
        vectors = {lang: v[target.layer] for lang, v in emb.vectors.items()}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for protocol, name in prefixes.items():
            files.append(write_records(out_dir / f"{name}_records.jsonl", *records[protocol]))
            files.append(accuracy_bars(metrics, pivot=target.pivot, path=out_dir / f"{name}_accuracy.png", prefix=name,
                                       title=f"protocol {protocol}" if len(prefixes) > 1 else ""))
        if vectors is not None:
            files.append(projection(vectors, path=out_dir / f"{prefix}_representations.png",
                                    title=f"hidden_states[{target.layer}], {target.pooler} pooling (PCA)"))
        (out_dir / f"{prefix}_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        files.append(out_dir / f"{prefix}_metrics.json")
    tables = [(f"[protocol {protocol}: {name}/...]\n" if len(prefixes) > 1 else "")
              + table(metrics, pivot=target.pivot, prefix=name) for protocol, name in prefixes.items()]
    return EvalResult(metrics, "\n".join(tables), files, time.perf_counter() - start)


def heldout_sentences(world_dir: Path, pivot: str, languages: Optional[Sequence[str]] = None) -> dict[str, list[str]]:
    """The world's held-out parallel sentences: row i of every language is one meaning."""
    out: dict[str, list[str]] = {}
    for path in sorted((Path(world_dir) / "pairs" / "heldout").glob(f"{pivot}-*.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        lang = rows[0]["tgt_lang"]
        if languages and lang not in languages:
            continue
        out.setdefault(pivot, [r["src"] for r in rows])
        out[lang] = [r["tgt"] for r in rows]
    return out
