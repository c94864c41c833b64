"""The fixed words of LM prompts: "Answer in {name}:" closing an instruction and
"Translate into {name}:" / "=" between the two sides of a translation sample (method.md,
"L_instruction").

Real data uses English words and English language names (as released). The synthetic world
uses its own words, looked up in its lexicon: the fixed words in the pivot, the target's
name in the pivot (``target_name_in="pivot"``, as released) or in the prompt's source
language (``"source"``: the world has every language's name in every language).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from xalign.data.languages import language_name
from xalign.data.world_files import WorldData

#: The world's vocabulary has no "=": the equals form uses the world's shared ":" instead.
WORLD_EQUALS = ":"


@dataclass(frozen=True)
class PromptWords:
    #: (source language, target language) -> "Answer in {name of target}:".
    answer_in: Callable[[str, str], str]
    #: (source language, target language) -> "Translate into {name of target}:".
    translate_into: Callable[[str, str], str]
    #: The separator of the "equals" form.
    equals: str

    def translation_prompt(self, text: str, src: str, tgt: str, template: str) -> str:
        """The prompt of a translation sample whose response is the ``tgt`` side."""
        if template == "translate":
            return f"{text} {self.translate_into(src, tgt)}"
        if template == "equals":
            return f"{text} {self.equals}"
        raise ValueError(f"unknown translation template {template!r}; one of 'translate', 'equals'")


def english_words(target_name_in: str = "pivot", names: Mapping[str, str] | None = None) -> PromptWords:
    """The released English words; only English language names exist for real data.
    ``names`` (``data.language_names``) adds to the built-in English names."""
    if target_name_in != "pivot":
        raise ValueError(f"data.mix.target_name_in={target_name_in!r}: real data names languages in English "
                         "only (the pivot's words); 'source' needs the synthetic world's instructions")
    names = dict(names or {})
    return PromptWords(answer_in=lambda src, tgt: f"Answer in {language_name(tgt, names)}:",
                       translate_into=lambda src, tgt: f"Translate into {language_name(tgt, names)}:",
                       equals="=")


def world_words(world: WorldData, target_name_in: str = "pivot") -> PromptWords:
    """The world's words: fixed words in the pivot, the target named in the pivot's or the
    source language's word (world tokens are whitespace separated, so ":" stands apart)."""
    if target_name_in not in ("pivot", "source"):
        raise ValueError(f"data.mix.target_name_in must be 'pivot' or 'source', got {target_name_in!r}")
    p = world.pivot

    def name(src: str, tgt: str) -> str:
        return world.word(f"language_{tgt}", p if target_name_in == "pivot" else src)

    return PromptWords(
        answer_in=lambda src, tgt: f"{world.word('answer_in', p)} {name(src, tgt)} :",
        translate_into=lambda src, tgt: f"{world.word('translate', p)} {world.word('into', p)} {name(src, tgt)} :",
        equals=WORLD_EQUALS)
