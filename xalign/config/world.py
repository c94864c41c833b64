"""The parameters of the synthetic world (design.md, "The built-in synthetic world").

Defaults follow the pilot in design.md: 4 languages (one verb-final, one in Greek script),
a pivot that holds 85% of a 2M-token corpus, and most facts stated in the pivot only, so
that the base model shows a language gap that alignment can close.
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field, model_validator

from xalign.config.base import Section

#: The five fact relations, each with the kind of its values (fixed: the grammar knows them).
RELATIONS = (("lives_in", "city"), ("works_as", "job"), ("eats", "food"), ("owns", "animal"),
             ("likes", "colour"))


class FactsConfig(Section):
    """Who the world's people are and which of their facts each language states."""

    #: People of the world; each has one value per relation (5 facts each). 160 people give
    #: 800 facts: enough for 600 test+dev fact questions with no fact asked twice.
    people: int = Field(default=160, ge=4, le=10_000)
    #: People whose facts are stated in EVERY language. The pilot found that their number
    #: sets the size of the language gap (fewer anchors, bigger gap); 40 of 160 leaves a gap.
    anchor_people: int = Field(default=40, ge=0)
    #: Share of ALL facts stated only in the pivot (taken from non-anchor people). These are
    #: what the fact task asks in the other languages: answering needs transfer.
    pivot_only_share: float = Field(default=0.75, ge=0.0, le=1.0)
    #: Values per relation (cities, jobs, ...): 12 keeps chance at 1/4 with 4 options while
    #: the vocabulary stays small.
    values_per_relation: int = Field(default=12, ge=2, le=200)

    @model_validator(mode="after")
    def _fit_in_people(self) -> "FactsConfig":
        if self.anchor_people > self.people:
            raise ValueError(
                "facts.anchor_people must be <= facts.people, got "
                f"anchor_people={self.anchor_people}, people={self.people}")
        if self.anchor_facts + self.pivot_only_facts > self.all_facts:
            raise ValueError(
                "facts.pivot_only_share takes pivot-only facts from non-anchor people, so "
                "anchor facts + pivot-only facts <= all facts must hold, got "
                f"{self.anchor_facts} + {self.pivot_only_facts} > {self.all_facts} "
                f"(people={self.people}, anchor_people={self.anchor_people}, "
                f"pivot_only_share={self.pivot_only_share})")
        return self

    @property
    def all_facts(self) -> int:
        return self.people * len(RELATIONS)

    @property
    def anchor_facts(self) -> int:
        return self.anchor_people * len(RELATIONS)

    @property
    def pivot_only_facts(self) -> int:
        return round(self.pivot_only_share * self.all_facts)


class EventsConfig(Section):
    """The verbs of interactions between people and the cause -> effect rules."""

    #: Transitive verbs between two people ("A helps B"), each with a passive form; they
    #: carry the paraphrase task (active <-> passive) and word-order sensitivity.
    interaction_verbs: int = Field(default=10, ge=1, le=200)
    #: Cause -> effect rules ("A drops cup" -> "A buys glue"); the XCOPA-style task draws
    #: its wrong choice from another rule, so at least 2.
    causal_rules: int = Field(default=30, ge=2, le=1000)
    #: Verbs and objects of cause/effect events; every rule uses 2 distinct (verb, object)
    #: pairs, so event_verbs * event_objects >= 2 * causal_rules must hold.
    event_verbs: int = Field(default=16, ge=1, le=500)
    event_objects: int = Field(default=16, ge=1, le=500)

    @model_validator(mode="after")
    def _enough_events(self) -> "EventsConfig":
        if self.event_verbs * self.event_objects < 2 * self.causal_rules:
            raise ValueError(
                "events.event_verbs * events.event_objects >= 2 * events.causal_rules must "
                f"hold (each rule needs 2 distinct events), got event_verbs={self.event_verbs}, "
                f"event_objects={self.event_objects}, causal_rules={self.causal_rules}")
        return self


class CorpusMix(Section):
    """Relative weights of the sentence types in the pre-training corpus (need not sum to 1).

    Facts dominate because the fact task is what shows the language gap; causal and
    interaction sentences give the XCOPA- and PAWS-X-style tasks something to learn from.
    """

    facts: float = Field(default=0.35, ge=0.0)
    fact_questions: float = Field(default=0.15, ge=0.0)
    causal: float = Field(default=0.2, ge=0.0)
    paraphrase: float = Field(default=0.1, ge=0.0)
    interaction: float = Field(default=0.2, ge=0.0)

    @model_validator(mode="after")
    def _some_weight(self) -> "CorpusMix":
        if sum(self.model_dump().values()) <= 0:
            raise ValueError(f"corpus.mix weights must sum to > 0, got {self.model_dump()}")
        return self


class CorpusConfig(Section):
    """Size and language imbalance of the pre-training corpus."""

    #: Total whitespace tokens, approximately: 2M pre-trains the pilot's 1M-parameter model
    #: in a few CPU minutes and is enough for it to learn the pivot facts.
    tokens: int = Field(default=2_000_000, ge=1_000, le=1_000_000_000)
    #: Pivot share of the corpus; the imbalance of real multilingual LMs (mostly English).
    pivot_share: float = Field(default=0.85, gt=0.0, lt=1.0)
    #: The non-pivot rest is split geometrically: language k+1 gets other_decay times the
    #: text of language k (0.3 -> about 10/3/1 % for 3 other languages).
    other_decay: float = Field(default=0.3, gt=0.0, le=1.0)
    #: Explicit shares, one per language in code order (the pivot first), summing to 1;
    #: overrides pivot_share and other_decay. None = use them.
    shares: Optional[list[float]] = None
    #: Sentence types and their weights.
    mix: CorpusMix = Field(default_factory=CorpusMix)
    #: Sentences per document (one document per line), drawn uniformly in [min, max].
    sentences_per_doc_min: int = Field(default=8, ge=1, le=1000)
    sentences_per_doc_max: int = Field(default=12, ge=1, le=1000)

    @model_validator(mode="after")
    def _check(self) -> "CorpusConfig":
        if self.sentences_per_doc_min > self.sentences_per_doc_max:
            raise ValueError(
                "corpus.sentences_per_doc_min <= corpus.sentences_per_doc_max must hold, got "
                f"{self.sentences_per_doc_min} > {self.sentences_per_doc_max}")
        if self.shares is not None:
            if any(not 0.0 < s <= 1.0 for s in self.shares):
                raise ValueError(f"corpus.shares must each lie in (0, 1], got {self.shares}")
            if abs(sum(self.shares) - 1.0) > 1e-6:
                raise ValueError(
                    f"corpus.shares must sum to 1 (within 1e-6), got sum={sum(self.shares)!r} "
                    f"for shares={self.shares}")
        return self


class PairsConfig(Section):
    """Translation pairs pivot -> each other language."""

    #: Training pairs per language: 5000 is ample for a few hundred alignment steps.
    train_per_language: int = Field(default=5000, ge=1, le=10_000_000)
    #: Held-out parallel sentences per language (retrieval / MEXA): 500 keep the noise low.
    heldout_per_language: int = Field(default=500, ge=1, le=1_000_000)


class InstructionsConfig(Section):
    """Instruction items (Bactrian-X shape), parallel by id across languages."""

    #: Items per language: 2000 is a small but varied set over the four instruction kinds.
    items: int = Field(default=2000, ge=1, le=10_000_000)


class TasksConfig(Section):
    """Evaluation tasks (PAWS-X, XCOPA and pivot-only facts), parallel across languages."""

    #: Dev items per language and task: for choosing checkpoints and demonstrations.
    dev_items: int = Field(default=100, ge=1, le=1_000_000)
    #: Test items per language and task: 500 gives a standard error of 2.2 points at p=0.5.
    test_items: int = Field(default=500, ge=1, le=1_000_000)
    #: Options per fact question: 4, like XCOPA-sized multiple choice at 25% chance.
    fact_choices: int = Field(default=4, ge=2, le=200)


class BaseModelConfig(Section):
    """The world's base model: a small Llama pre-trained on the corpus (LM loss only) by
    `xalign world build`. Defaults follow design.md's pilot (4 blocks, hidden 128, about
    1.1M parameters), which learned the pivot facts from about 2M tokens."""

    layers: int = Field(default=4, ge=1, le=64)
    hidden_size: int = Field(default=128, ge=8, le=8192)
    heads: int = Field(default=4, ge=1, le=128)
    intermediate_size: int = Field(default=512, ge=8, le=32768)
    #: Longest training row; longer documents are split, never cut.
    seq_len: int = Field(default=160, ge=16, le=8192)
    #: Optimizer steps x batch_size documents: about one pass over the default corpus.
    steps: int = Field(default=700, ge=1, le=10_000_000)
    batch_size: int = Field(default=32, ge=1, le=4096)
    #: A 1M-parameter model trains well at a large learning rate (cosine, 5% warm-up).
    lr: float = Field(default=3e-3, gt=0, le=1.0)

    @model_validator(mode="after")
    def _heads_divide(self) -> "BaseModelConfig":
        if self.hidden_size % self.heads:
            raise ValueError("base_model.hidden_size must be divisible by base_model.heads, got "
                             f"hidden_size={self.hidden_size}, heads={self.heads}")
        return self


class WorldConfig(Section):
    """Everything that determines a synthetic world; its hash names the world's directory."""

    #: Seed of every random choice; the same config builds byte-identical worlds.
    seed: int = Field(default=0, ge=0)
    #: Number of languages, the pivot included (codes qaa, qab, ...). 4 gives one language
    #: in another script and one verb-final, as in the pilot.
    languages: int = Field(default=4, ge=2, le=26)
    facts: FactsConfig = Field(default_factory=FactsConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    instructions: InstructionsConfig = Field(default_factory=InstructionsConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    base_model: BaseModelConfig = Field(default_factory=BaseModelConfig)

    @model_validator(mode="after")
    def _check_across_sections(self) -> "WorldConfig":
        shares = self.corpus.shares
        if shares is not None and len(shares) != self.languages:
            raise ValueError(
                "corpus.shares must have one entry per language, got "
                f"{len(shares)} entries for languages={self.languages}")
        if self.tasks.fact_choices > self.facts.values_per_relation:
            raise ValueError(
                "tasks.fact_choices must be <= facts.values_per_relation, got "
                f"fact_choices={self.tasks.fact_choices}, "
                f"values_per_relation={self.facts.values_per_relation}")
        return self

    def language_shares(self) -> list[float]:
        """Corpus share of each language in code order (the pivot first)."""
        if self.corpus.shares is not None:
            return list(self.corpus.shares)
        weights = [self.corpus.other_decay ** k for k in range(self.languages - 1)]
        rest = 1.0 - self.corpus.pivot_share
        return [self.corpus.pivot_share] + [rest * w / sum(weights) for w in weights]
