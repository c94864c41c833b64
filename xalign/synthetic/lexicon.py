"""Languages and their words: codes, scripts, word orders, and a word per concept.

Every language gets its own syllable inventory, so the same concept has unrelated surface
forms across languages; all forms are unique across the whole world. Person names are
shared by all languages (Latin script, capitalised), like real names.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from xalign.config.world import RELATIONS, WorldConfig

#: (script, word order) assigned cyclically from the pivot on: with 4 languages the pivot
#: and one more are Latin SVO, one is Greek-script SVO and one is verb-final.
PROFILES = (("Latin", "SVO"), ("Latin", "SVO"), ("Greek", "SVO"), ("Latin", "SOV"),
            ("Cyrillic", "SOV"), ("Greek", "SOV"), ("Cyrillic", "SVO"), ("Latin", "SOV"))
#: Letters of the underlying (Latin) word forms; the tables below map each one-to-one.
CONSONANTS = "bcdfghklmnprstvxz"
VOWELS = "aeiouy"
SCRIPTS = {
    "Latin": {c: c for c in CONSONANTS + VOWELS},
    "Greek": dict(zip("bcdfghklmnprstvxzaeiouy", "βψδφγχκλμνπρστθξζαειουη")),
    "Cyrillic": dict(zip("bcdfghklmnprstvxzaeiouy", "бцдфгхклмнпрствжзаеиоуы")),
}
#: Tokens every language shares.
PUNCTUATION = (".", ",", "?", ":")
#: Fixed concepts of discourse, connectives and instructions (one word each per language).
DISCOURSE = ("question", "answer", "right", "yes", "no", "cause", "effect", "translate",
             "into", "answer_in", "because", "so", "by")
INSTRUCTIONS = ("answer_the_question", "say_why", "say_what_follows", "say_it_another_way")


@dataclass(frozen=True)
class Language:
    """One language of the world; ``index`` is its position in code order (pivot = 0)."""

    index: int
    code: str
    script: str
    order: str

    @property
    def is_pivot(self) -> bool:
        return self.index == 0


def language_code(index: int) -> str:
    """Private-use ISO 639 code: qaa, qab, ..., qaz, qba, ..."""
    return "q" + string.ascii_lowercase[index // 26] + string.ascii_lowercase[index % 26]


def make_languages(count: int) -> list[Language]:
    return [Language(i, language_code(i), *PROFILES[i % len(PROFILES)]) for i in range(count)]


def concept_names(cfg: WorldConfig) -> list[str]:
    """Every concept that has a word in each language, in a fixed order."""
    concepts: list[str] = []
    for relation, kind in RELATIONS:
        concepts += [relation, f"{relation}_what"]
        concepts += [f"{kind}_{v:02d}" for v in range(cfg.facts.values_per_relation)]
    for v in range(cfg.events.interaction_verbs):
        concepts += [f"act_{v:02d}", f"act_{v:02d}_passive"]
    concepts += [f"do_{v:02d}" for v in range(cfg.events.event_verbs)]
    concepts += [f"thing_{o:02d}" for o in range(cfg.events.event_objects)]
    concepts += list(DISCOURSE) + list(INSTRUCTIONS)
    concepts += [f"language_{lang.code}" for lang in make_languages(cfg.languages)]
    return concepts


def value_concept(relation: int, value: int) -> str:
    return f"{RELATIONS[relation][1]}_{value:02d}"


@dataclass(frozen=True)
class Phonology:
    """A language's syllable inventory: onsets, vowels and codas (underlying Latin letters)."""

    onsets: str
    vowels: str
    codas: str

    def word(self, rng: random.Random) -> str:
        syllables = rng.choice((2, 2, 3))
        out = []
        for _ in range(syllables):
            out.append(rng.choice(self.onsets) + rng.choice(self.vowels))
            if rng.random() < 0.3:
                out.append(rng.choice(self.codas))
        return "".join(out)


def make_phonology(rng: random.Random) -> Phonology:
    onsets = "".join(sorted(rng.sample(CONSONANTS, 9)))
    vowels = "".join(sorted(rng.sample(VOWELS, 3)))
    codas = "".join(sorted(rng.sample(onsets, 3)))
    return Phonology(onsets, vowels, codas)


def transliterate(word: str, script: str) -> str:
    return "".join(SCRIPTS[script][ch] for ch in word)


def make_words(cfg: WorldConfig, languages: list[Language],
               taken: set[str]) -> dict[str, list[str]]:
    """{concept: [word in language 0, 1, ...]}; every form is new to ``taken`` (updated)."""
    concepts = concept_names(cfg)
    words: dict[str, list[str]] = {c: [] for c in concepts}
    for lang in languages:
        rng = random.Random(f"{cfg.seed}:words:{lang.code}")
        phonology = make_phonology(rng)
        for concept in concepts:
            form = transliterate(phonology.word(rng), lang.script)
            while form in taken:
                form = transliterate(phonology.word(rng), lang.script)
            taken.add(form)
            words[concept].append(form)
    return words


def make_names(cfg: WorldConfig, taken: set[str]) -> list[str]:
    """One capitalised Latin-script name per person, unique in the world."""
    rng = random.Random(f"{cfg.seed}:names")
    phonology = Phonology(onsets="bdfgklmnprstvz", vowels="aeiou", codas="lmnrs")
    names = []
    for _ in range(cfg.facts.people):
        name = phonology.word(rng).capitalize()
        while name in taken:
            name = phonology.word(rng).capitalize()
        taken.add(name)
        names.append(name)
    return names
