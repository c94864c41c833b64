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
from typing import Callable, Mapping, Sequence


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
                          seed: int) -> InstructionBuild:
    """``items[lang][id]`` holds ``instruction``, ``input``, ``output``. Ids not present in
    every language are dropped and counted, never assumed aligned."""
    if len(languages) < 1:
        raise ValueError("cross-lingual samples need at least one language")
    missing = [lang for lang in languages if lang not in items]
    if missing:
        raise ValueError(f"no instruction data for languages {missing}; have {sorted(items)}")
    all_ids = set().union(*(items[lang].keys() for lang in languages))
    shared = sorted(set.intersection(*(set(items[lang]) for lang in languages)))
    rng = random.Random(seed)
    samples, counts = [], Counter()
    for item_id in shared:
        for _ in range(repeat):
            src = rng.choice(languages)
            tgt = src
            if len(languages) > 1 and rng.random() < cross_probability:
                tgt = rng.choice([lang for lang in languages if lang != src])
            item = items[src][item_id]
            prompt = " ".join(part for part in (item["instruction"], item.get("input", ""), answer_in(src, tgt)) if part)
            samples.append(LMSample(prompt, items[tgt][item_id]["output"], src, tgt, "instruction", item_id))
            counts[f"{src}->{tgt}"] += 1
    return InstructionBuild(samples, len(all_ids) - len(shared), dict(sorted(counts.items())))
