"""The data mix of a run (``data.mix``): pair filtering, language sampling of the
contrastive pairs, and translation samples among the LM samples. Every choice is a pure
function of the run's seed, and the realised mix is what ``stats`` reports.

Language sampling (``alpha``, ``pair_weights``): language l gets a share of the pairs
proportional to ``weight_l * n_l ** alpha``, n_l its pairs after filtering. The list keeps
its length (the number of pairs available), so an epoch means the same whatever the mix;
each language's quota is the largest-remainder rounding of its share. A language whose
quota is below n_l is subsampled without replacement; one whose quota exceeds n_l takes
every pair ``quota // n_l`` times and the rest as a sample without replacement (so copies
are spread as evenly as possible, never one pair drawn many times by chance). alpha = 1
with equal weights gives every language exactly its n_l: the pairs pass unchanged.

Translation samples (``translation_share``): the number of LM samples stays that of the
instruction samples (``repeat`` x shared ids); round(share x that) of them become
translation samples drawn from the realised pairs the same way (every pair before any
repeats), the instruction samples kept are a seeded subsample in their order.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from xalign.data.instructions import LMSample
from xalign.data.prompts import PromptWords

#: Why a pair is dropped, in the order the checks run.
DROP_REASONS = ("empty", "identical", "duplicate", "too_long")


def rng_for(seed: int, purpose: str) -> random.Random:
    """An independent, reproducible stream per purpose (str seeds hash with SHA-512)."""
    return random.Random(f"xalign.data.{purpose}.{seed}")


def pair_key(pair: Mapping) -> str:
    return f"{pair.get('src_lang')}-{pair.get('tgt_lang')}"


def _norm(text) -> str:
    return " ".join(str(text).split()) if text is not None else ""


@dataclass
class PairFilter:
    kept: list[dict] = field(default_factory=list)
    read: Counter = field(default_factory=Counter)                 # "src-tgt" -> pairs read
    dropped: dict[str, Counter] = field(default_factory=dict)      # "src-tgt" -> reason -> count

    def drop(self, key: str, reason: str, n: int = 1) -> None:
        self.dropped.setdefault(key, Counter())[reason] += n


def filter_pairs(pairs: Sequence[Mapping]) -> PairFilter:
    """Drop and count pairs with an empty side, identical sides, or that repeat an earlier
    pair (same languages and texts); whitespace is normalised for the comparisons, the
    texts kept as they are. Over-long pairs are dropped when tokenised (``too_long``)."""
    out = PairFilter()
    seen: set = set()
    for pair in pairs:
        key = pair_key(pair)
        out.read[key] += 1
        src, tgt = _norm(pair.get("src")), _norm(pair.get("tgt"))
        if not src or not tgt:
            out.drop(key, "empty")
        elif src == tgt:
            out.drop(key, "identical")
        elif (key, src, tgt) in seen:
            out.drop(key, "duplicate")
        else:
            seen.add((key, src, tgt))
            out.kept.append(dict(pair))
    return out


def language_quotas(available: Mapping[str, int], *, alpha: float, weights: Mapping[str, float],
                    total: int | None = None) -> dict[str, int]:
    """Pairs per language: ``total`` (default: all available) split in proportion to
    ``weights[l] * n_l ** alpha`` (missing weight = 1), largest remainders rounded up
    (ties in the order of ``available``)."""
    total = sum(available.values()) if total is None else total
    langs = [lang for lang, n in available.items() if n > 0]
    scores = {lang: float(weights.get(lang, 1.0)) * available[lang] ** alpha for lang in langs}
    norm = sum(scores.values())
    if langs and norm <= 0:
        raise ValueError(f"data.mix.pair_weights gives every language with pairs weight 0: {dict(weights)}")
    exact = {lang: total * scores[lang] / norm for lang in langs}
    quotas = {lang: math.floor(exact[lang] + 1e-9) for lang in langs}
    left = total - sum(quotas.values())
    by_remainder = sorted(langs, key=lambda lang: -(exact[lang] - quotas[lang]))   # stable: ties keep order
    for lang in by_remainder[:max(left, 0)]:
        quotas[lang] += 1
    return {lang: quotas.get(lang, 0) for lang in available}


def spread(indices: Sequence[int], count: int, rng: random.Random) -> list[int]:
    """``count`` of ``indices``: all of them ``count // len`` times, then a sample without
    replacement of the rest (in their order); all of them, unchanged, when count == len."""
    if count == len(indices):
        return list(indices)
    if not indices:
        raise ValueError("cannot draw from no items")
    full, rest = divmod(count, len(indices))
    chosen = sorted(rng.sample(range(len(indices)), rest))
    return list(indices) * full + [indices[i] for i in chosen]


def resample_by_language(langs: Sequence[str], *, alpha: float, weights: Mapping[str, float],
                         seed: int) -> tuple[list[int], dict[str, int]]:
    """(indices into ``langs``' items, quota per language): the pairs list of the mix, as
    long as ``langs``, in input order (copies side by side); the identity when every
    language's quota is what it has."""
    by_lang: dict[str, list[int]] = {}
    for i, lang in enumerate(langs):
        by_lang.setdefault(lang, []).append(i)
    quotas = language_quotas({lang: len(idx) for lang, idx in by_lang.items()}, alpha=alpha, weights=weights)
    rng = rng_for(seed, "pairs")
    order: list[int] = []
    for lang, idx in by_lang.items():
        order += spread(idx, quotas[lang], rng)
    return sorted(order), quotas


def translation_samples(pairs: Sequence[Mapping], count: int, *, words: PromptWords, template: str,
                        seed: int) -> list[LMSample]:
    """``count`` translation samples from ``pairs`` (texts with src/tgt languages): each
    pair's direction is flipped with probability 0.5; the response is the target side."""
    if count == 0:
        return []
    if not pairs:
        raise ValueError("data.mix.translation_share > 0 needs translation pairs, and the run has none "
                         "(every pair was filtered out or no language has pairs)")
    rng = rng_for(seed, "translations")
    out = []
    for i in spread(range(len(pairs)), count, rng):
        pair = pairs[i]
        src, tgt, src_lang, tgt_lang = pair["src"], pair["tgt"], pair["src_lang"], pair["tgt_lang"]
        if rng.random() < 0.5:
            src, tgt, src_lang, tgt_lang = tgt, src, tgt_lang, src_lang
        prompt = words.translation_prompt(src, src_lang, tgt_lang, template)
        out.append(LMSample(prompt, tgt, src_lang, tgt_lang, "translation", str(i)))
    return out


def mix_lm_samples(instructions: Sequence[LMSample], pairs: Sequence[Mapping], *, share: float,
                   words: PromptWords, template: str, seed: int) -> list[LMSample]:
    """Instruction samples with round(share x their number) replaced by translation samples
    (instructions first, in order, then translations; the trainer's order shuffles)."""
    total = len(instructions)
    n_translation = round(share * total)
    if n_translation == 0:
        return list(instructions)
    keep = sorted(rng_for(seed, "instructions").sample(range(total), total - n_translation))
    return [instructions[i] for i in keep] + translation_samples(pairs, n_translation, words=words,
                                                                  template=template, seed=seed)


def chunk_text(tokenizer, text: str, max_tokens: int) -> list[str]:
    """``text`` cut into pieces of at most ``max_tokens`` tokens (every token kept)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(ids[i: i + max_tokens]) for i in range(0, len(ids), max_tokens)]


def add_replay(samples: Sequence[LMSample], texts: Sequence[str], *, share: float, pivot: str, seed: int,
               tokenizer, max_length: int) -> list[LMSample]:
    """round(share x N) of the samples replaced by pivot text (prompt "", so the LM loss
    covers the whole text), drawn with a seeded RNG; N stays the same."""
    total = len(samples)
    n_replay = round(share * total)
    if n_replay == 0:
        return list(samples)
    if not texts:
        raise ValueError("data.mix.replay_share > 0 needs pivot text (data.replay, or the world's corpus); "
                         "the run has none")
    rng = rng_for(seed, "replay")
    pieces: list[str] = []
    for text in rng.sample(list(texts), min(len(texts), n_replay)):
        pieces += chunk_text(tokenizer, text, max_length - 2)   # room for BOS and EOS
    while len(pieces) < n_replay:                                 # few texts: reuse them
        pieces += pieces[: n_replay - len(pieces)]
    keep = sorted(rng.sample(range(total), total - n_replay))
    replay = [LMSample("", piece, pivot, pivot, "replay", f"replay-{i}") for i, piece in enumerate(pieces[:n_replay])]
    return [samples[i] for i in keep] + replay


def lm_stats(samples: Sequence[LMSample]) -> dict:
    """Counts of the realised LM samples, by kind and by src->tgt within each kind."""
    kinds = Counter(s.kind for s in samples)
    by_dir: dict[str, Counter] = {}
    for s in samples:
        by_dir.setdefault(s.kind, Counter())[f"{s.src_lang}->{s.tgt_lang}"] += 1
    total = len(samples)
    return {
        "total": total,
        "instruction": kinds.get("instruction", 0),
        "translation": kinds.get("translation", 0),
        "translation_share": kinds.get("translation", 0) / total if total else 0.0,
        "replay": kinds.get("replay", 0),
        "replay_share": kinds.get("replay", 0) / total if total else 0.0,
        "by_direction": {kind: dict(sorted(c.items())) for kind, c in sorted(by_dir.items())},
    }


def mix_metrics(stats: Mapping) -> dict[str, float]:
    """``AlignmentData.stats`` as flat ``data/...`` numbers for MLflow: names use only
    letters, digits, ``_ - . /`` (a direction src->tgt is written ``src-tgt``), and no name
    is also the folder of another (MLflow's file store keeps one file per metric)::

        data/pairs/qaa-qab               realised pairs (also pairs_available/, pairs_read/, .../total)
        data/pair_share/qaa-qab          share of the realised pairs
        data/pairs_dropped/qaa-qab/empty dropped, by pair and reason (and data/pairs_dropped/<reason>)
        data/lm/total, data/lm/n_instruction, data/lm/n_translation, data/lm/translation_share
        data/lm/instruction/qab-qac      LM samples by kind and direction
        data/instruction_ids_dropped, data/prompts_truncated, data/lm_dropped_too_long
        data/bad_lines/pairs             malformed lines skipped, by source (and data/bad_lines/total)
        data/bitext_empty/<lang>         bitext pairs dropped for an empty line on either side
        data/heldout/<lang>              pairs held out of training (data.pairs.heldout) for align/...
    """
    out: dict[str, float] = {}

    def put(name: str, value) -> None:
        out["data/" + name.replace("->", "-")] = float(value)

    for key in ("pairs", "pairs_available", "pairs_read"):
        for pair, n in stats.get(key, {}).items():
            put(f"{key}/{pair}", n)
        put(f"{key}/total", sum(stats.get(key, {}).values()))
    for pair, share in stats.get("pair_shares", {}).items():
        put(f"pair_share/{pair}", share)
    dropped_total = Counter()
    for pair, reasons in stats.get("pairs_dropped", {}).items():
        for reason, n in reasons.items():
            put(f"pairs_dropped/{pair}/{reason}", n)
            dropped_total[reason] += n
    for reason in DROP_REASONS:
        put(f"pairs_dropped/{reason}", dropped_total[reason])
    lm = stats.get("lm", {})
    for key, name in (("total", "total"), ("instruction", "n_instruction"), ("translation", "n_translation"),
                      ("translation_share", "translation_share"), ("replay", "n_replay"),
                      ("replay_share", "replay_share")):
        if key in lm:
            put(f"lm/{name}", lm[key])
    for kind, counts in lm.get("by_direction", {}).items():
        for direction, n in counts.items():
            put(f"lm/{kind}/{direction}", n)
    for lang, n in stats.get("bitext_empty", {}).items():
        put(f"bitext_empty/{lang}", n)
    for lang, n in stats.get("heldout", {}).items():
        put(f"heldout/{lang}", n)
    bad = stats.get("bad_lines", {})
    for source, n in bad.items():
        put(f"bad_lines/{source}", n)
    if bad:
        put("bad_lines/total", sum(bad.values()))
    for key in ("instruction_ids_dropped", "prompts_truncated", "lm_dropped_too_long"):
        if key in stats:
            put(key, stats[key])
    return out
