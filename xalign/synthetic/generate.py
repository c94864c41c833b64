"""What the world is about (people, facts, rules) and how each language says it.

``make_world`` draws the meanings; a ``Speaker`` renders meanings as token lists in one
language, following that language's word order. All text is whitespace-tokenised.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Union

from xalign.config.world import RELATIONS, WorldConfig
from xalign.synthetic.lexicon import (
    PUNCTUATION,
    Language,
    make_languages,
    make_names,
    make_words,
    value_concept,
)

ANCHOR, SHARED, PIVOT_ONLY = "anchor", "shared", "pivot_only"


@dataclass(frozen=True)
class Fact:
    """``person`` has ``value`` for ``relation``; stated in the languages ``languages``."""

    person: int
    relation: int
    value: int
    status: str
    languages: tuple[int, ...]


@dataclass(frozen=True)
class Rule:
    """Cause event -> effect event; an event is a (verb, object) done by some person."""

    cause: tuple[int, int]
    effect: tuple[int, int]


@dataclass(frozen=True)
class FactStatement:
    fact: Fact


@dataclass(frozen=True)
class Event:
    """``person`` does the cause (side 0) or effect (side 1) event of rule ``rule``."""

    person: int
    rule: int
    side: int


@dataclass(frozen=True)
class Causal:
    """A rule as one sentence: "EFFECT because CAUSE" or "CAUSE so EFFECT"."""

    person: int
    rule: int
    connective: str


@dataclass(frozen=True)
class Interaction:
    """``agent`` does verb ``verb`` to ``patient``, said in the active or passive voice."""

    agent: int
    verb: int
    patient: int
    passive: bool

    def other_voice(self) -> "Interaction":
        return Interaction(self.agent, self.verb, self.patient, not self.passive)

    def roles_swapped(self) -> "Interaction":
        return Interaction(self.patient, self.verb, self.agent, self.passive)


Meaning = Union[FactStatement, Event, Causal, Interaction]


@dataclass(frozen=True)
class World:
    """The meanings of a world and the words of its languages."""

    cfg: WorldConfig
    languages: list[Language]
    names: list[str]
    words: dict[str, list[str]]
    facts: list[Fact]
    rules: list[Rule]

    @property
    def pivot(self) -> Language:
        return self.languages[0]

    def facts_in(self, lang: int) -> list[Fact]:
        return [f for f in self.facts if lang in f.languages]

    def facts_with(self, status: str) -> list[Fact]:
        return [f for f in self.facts if f.status == status]


def make_world(cfg: WorldConfig) -> World:
    languages = make_languages(cfg.languages)
    taken = set(PUNCTUATION)
    words = make_words(cfg, languages, taken)
    names = make_names(cfg, taken)
    return World(cfg, languages, names, words, make_facts(cfg), make_rules(cfg))


def make_facts(cfg: WorldConfig) -> list[Fact]:
    """One fact per (person, relation); anchors stated everywhere, pivot-only ones drawn
    from the other people's facts, the rest stated in the pivot and one other language."""
    rng = random.Random(f"{cfg.seed}:facts")
    people, anchors = cfg.facts.people, cfg.facts.anchor_people
    values = [[rng.randrange(cfg.facts.values_per_relation) for _ in RELATIONS]
              for _ in range(people)]
    anchor_people = set(rng.sample(range(people), anchors))
    others = [(p, r) for p in range(people) if p not in anchor_people
              for r in range(len(RELATIONS))]
    pivot_only = set(rng.sample(others, cfg.facts.pivot_only_facts))
    everyone = tuple(range(cfg.languages))
    facts = []
    for p in range(people):
        for r in range(len(RELATIONS)):
            if p in anchor_people:
                status, langs = ANCHOR, everyone
            elif (p, r) in pivot_only:
                status, langs = PIVOT_ONLY, (0,)
            else:
                status, langs = SHARED, (0, rng.randrange(1, cfg.languages))
            facts.append(Fact(p, r, values[p][r], status, langs))
    return facts


def make_rules(cfg: WorldConfig) -> list[Rule]:
    """Causal rules over distinct (verb, object) events: no event belongs to two rules."""
    rng = random.Random(f"{cfg.seed}:rules")
    events = [(v, o) for v in range(cfg.events.event_verbs)
              for o in range(cfg.events.event_objects)]
    chosen = rng.sample(events, 2 * cfg.events.causal_rules)
    return [Rule(chosen[2 * i], chosen[2 * i + 1]) for i in range(cfg.events.causal_rules)]


class Speaker:
    """Renders meanings in one language as token lists (join with single spaces)."""

    def __init__(self, world: World, lang: Language):
        self.world = world
        self.lang = lang
        self.verb_final = lang.order == "SOV"
        self.word = {concept: forms[lang.index] for concept, forms in world.words.items()}

    def _clause(self, subject: str, verb: str, obj: list[str]) -> list[str]:
        return [subject, *obj, verb] if self.verb_final else [subject, verb, *obj]

    def fact(self, fact: Fact) -> list[str]:
        """NAME REL VALUE . (verb-final: NAME VALUE REL .)"""
        value = self.word[value_concept(fact.relation, fact.value)]
        return self._clause(self.world.names[fact.person], self.word[RELATIONS[fact.relation][0]],
                            [value]) + ["."]

    def fact_question(self, fact: Fact) -> list[str]:
        """question : NAME REL WHAT ? (verb-final: WHAT before REL)"""
        relation = RELATIONS[fact.relation][0]
        return [self.word["question"], ":"] + self._clause(
            self.world.names[fact.person], self.word[relation],
            [self.word[f"{relation}_what"]]) + ["?"]

    def fact_answer(self, fact: Fact) -> list[str]:
        return [self.word[value_concept(fact.relation, fact.value)], "."]

    def fact_qa(self, fact: Fact) -> list[str]:
        """question : NAME REL WHAT ? answer : VALUE ."""
        return self.fact_question(fact) + [self.word["answer"], ":"] + self.fact_answer(fact)

    def event(self, person: int, event: tuple[int, int]) -> list[str]:
        verb, obj = event
        return self._clause(self.world.names[person], self.word[f"do_{verb:02d}"],
                            [self.word[f"thing_{obj:02d}"]])

    def rule_event(self, event: Event) -> list[str]:
        rule = self.world.rules[event.rule]
        return self.event(event.person, rule.effect if event.side else rule.cause)

    def causal(self, causal: Causal) -> list[str]:
        rule = self.world.rules[causal.rule]
        cause = self.event(causal.person, rule.cause)
        effect = self.event(causal.person, rule.effect)
        if causal.connective == "because":
            return effect + [self.word["because"]] + cause + ["."]
        return cause + [self.word["so"]] + effect + ["."]

    def interaction(self, act: Interaction) -> list[str]:
        """A helps B (A B helps); passive: B is-helped by A (B A by is-helped)."""
        agent, patient = self.world.names[act.agent], self.world.names[act.patient]
        if not act.passive:
            return self._clause(agent, self.word[f"act_{act.verb:02d}"], [patient])
        by_agent = [agent, self.word["by"]] if self.verb_final else [self.word["by"], agent]
        return self._clause(patient, self.word[f"act_{act.verb:02d}_passive"], by_agent)

    def paraphrase(self, first: Interaction, second: Interaction, same: bool) -> list[str]:
        """S1 , right ? yes , S2 .  (no when S2 does not mean S1)"""
        answer = self.word["yes"] if same else self.word["no"]
        return (self.interaction(first) + [",", self.word["right"], "?", answer, ","]
                + self.interaction(second) + ["."])

    def sentence(self, meaning: Meaning) -> list[str]:
        """A meaning said as one full sentence."""
        if isinstance(meaning, FactStatement):
            return self.fact(meaning.fact)
        if isinstance(meaning, Event):
            return self.rule_event(meaning) + ["."]
        if isinstance(meaning, Causal):
            return self.causal(meaning)
        return self.interaction(meaning) + ["."]
