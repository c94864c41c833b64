"""Cross-lingual instruction samples (method.md, "L_instruction").

From instruction items parallel by id across languages, each item is used ``repeat`` times:
the instruction is shown in a source language s and the response is asked for in a target
language t, with t != s with probability ``cross_probability``:

    "{instruction} {input} Answer in {name of t}:"  ->  "{response in t}"

The fixed words come from a per-language table (``AnswerIn``) so the same builder serves
real data (English words, as released) and the synthetic world (its own words).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence


@dataclass(frozen=True)
class LMSample:
    """A prompt and the response the model is trained to produce (loss on the response)."""

    prompt: str
    response: str
    src_lang: str
    tgt_lang: str
    kind: str  # "instruction" | "translation" | "text"
    item_id: str = ""


#: (source language, target language) -> the closing words of the prompt.
AnswerIn = Callable[[str, str], str]


@dataclass
class InstructionBuild:
    samples: list[LMSample]
    dropped_ids: int            # ids missing in at least one language
    counts: dict[str, int]      # "src->tgt" -> samples


def cross_lingual_samples(items: Mapping[str, Mapping[str, Mapping[str, str]]], *, languages: Sequence[str],
                          answer_in: AnswerIn, cross_probability: float, repeat: int,
                          seed: int, language_weights: Optional[Mapping[str, float]] = None) -> InstructionBuild:
    """``items[lang][id]`` holds ``instruction``, ``input``, ``output``. Ids not present in
    every language are dropped and counted, never assumed aligned.

    ``language_weights`` (language -> weight >= 0, missing = 1) weighs the draws of the
    source language and of the other target language; None or equal weights keep the
    uniform draws (the released behaviour, bit for bit for a seed). The caller's weight is
    ``pair_weights[l] * n_l ** alpha`` with n_l the items usable in l: the shared ids, the
    same number in every language, so for parallel data only the weights move the mix."""
    if len(languages) < 1:
        raise ValueError("cross-lingual samples need at least one language")
    missing = [lang for lang in languages if lang not in items]
    if missing:
        raise ValueError(f"no instruction data for languages {missing}; have {sorted(items)}")
    weights = [float((language_weights or {}).get(lang, 1.0)) for lang in languages]
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"language weights must be >= 0 and not all 0, got {dict(zip(languages, weights))}")
    weighted = len(set(weights)) > 1
    all_ids = set().union(*(items[lang].keys() for lang in languages))
    shared = sorted(set.intersection(*(set(items[lang]) for lang in languages)))
    rng = random.Random(seed)
    samples, counts = [], Counter()
    for item_id in shared:
        for _ in range(repeat):
            if weighted:
                src = rng.choices(languages, weights=weights)[0]
                tgt = src
                if len(languages) > 1 and rng.random() < cross_probability:
                    rest = [(lang, w) for lang, w in zip(languages, weights) if lang != src]
                    if sum(w for _, w in rest) > 0:   # else only src has weight: no other target
                        tgt = rng.choices([lang for lang, _ in rest], weights=[w for _, w in rest])[0]
            else:
                src = rng.choice(languages)
                tgt = src
                if len(languages) > 1 and rng.random() < cross_probability:
                    tgt = rng.choice([lang for lang in languages if lang != src])
            item = items[src][item_id]
            prompt = " ".join(part for part in (item["instruction"], item.get("input", ""), answer_in(src, tgt)) if part)
            samples.append(LMSample(prompt, items[tgt][item_id]["output"], src, tgt, "instruction", item_id))
            counts[f"{src}->{tgt}"] += 1
    return InstructionBuild(samples, len(all_ids) - len(shared), dict(sorted(counts.items())))
