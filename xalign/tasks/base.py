"""What a task is: its fields, its answer options and gold label, its templates per family
and language, where its data comes from, its splits and its languages.

Plain Python only (no torch, transformers or datasets): the config validates task names
against these tables.

A template is two ``str.format`` strings over the row's fields, the template words ``w``
of one language (``{w[right]}``) and, in the option string, ``{option}``: the answer being
scored. The scored text of option j is ``prefix + context + option_j`` (xalign.eval.items),
so everything that distinguishes the answers must be in the option: a template whose
option string has no ``{option}`` slot, or whose options render alike, is refused when it
is defined (method.md defect 3: the released XNLI template scored every option the same).

Partial scoring (lm-eval's "multiple input" mode, Winogrande/XWinograd): a template with a
``fill`` string puts the answer in the context instead. Option j's context is
``context + fill_j`` (``fill`` with ``{option}`` = answer j), and the option string, which
then has no ``{option}`` slot, is the continuation scored after every one of them (the same
text for all answers). The same rules hold with the slot moved: ``fill`` must have the
``{option}`` slot, and the answers' full texts (context_j + option_j) must differ.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

from xalign import suggest
from xalign.errors import XalignError

#: Template families: the paper's shapes, and lm-evaluation-harness 0.4.13's strings.
FAMILIES = ("afp", "lm_eval")
#: dev: demonstrations and checkpoint selection; test: reported numbers.
SPLITS = ("dev", "test")
#: same: template words and demonstrations in the query's language; cross: in the pivot.
PROTOCOLS = ("same", "cross")
#: Between demonstrations and before the query (lm-eval's ``fewshot_delimiter``).
FEWSHOT_DELIMITER = "\n\n"


class TaskError(XalignError, ValueError):
    """A task, language, split, file, column or template that cannot be evaluated as asked.
    Raised while items are built, before any model is loaded."""


def unknown(kind: str, name: Any, choices: Sequence[str], *, aliases: Optional[Mapping[str, str]] = None,
            where: str = "") -> TaskError:
    """The error of a registry miss: "Unknown task 'xcpa'. Did you mean 'xcopa'? Available: ..."."""
    return TaskError(suggest.unknown(kind, name, choices, aliases=aliases, where=where))


def _slots(fmt: str) -> tuple[set[str], set[str]]:
    """(row fields, word slots) a format string uses: ``{premise}`` and ``{w[right]}``."""
    fields, words = set(), set()
    for _, name, _, _ in string.Formatter().parse(fmt):
        if not name:
            continue
        root = name.split("[", 1)[0].split(".", 1)[0]
        if root == "w":
            words.add(name[2:].split("]", 1)[0])
        else:
            fields.add(root)
    return fields, words


def _identity(row: dict, w: Mapping[str, str], lang: str) -> dict:
    return row


class Rendering(NamedTuple):
    """One rendered row: the shared ``context``, the ``options`` (the scored strings) and,
    for partial-scoring templates, the per-option ``contexts`` (``()``: every option's
    context is ``context``). Fields as in ``xalign.eval.items.EvalItem``."""

    context: str
    options: tuple[str, ...]
    contexts: tuple[str, ...] = ()

    def context_of(self, j: int) -> str:
        return self.contexts[j] if self.contexts else self.context

    def texts(self) -> tuple[str, ...]:
        """The full text of each answer: its context followed by its option."""
        return tuple(self.context_of(j) + o for j, o in enumerate(self.options))


@dataclass(frozen=True)
class Template:
    """How one task's item is rendered in one template family.

    ``choices`` are format strings for the values of ``{option}`` in label order (option j
    is the answer of gold label j), or the name of a list field of the row (the facts task).
    ``prepare(row, w, data_lang)`` returns the fields the strings see (cleaned sentences,
    derived words); ``data_lang`` is the language of the row's text, which under the cross
    protocol differs from the language of ``w``.
    ``words`` is the ONE per-language table of the template's fixed words (for world
    templates it is empty: the words come from the world's lexicon, by slot name).
    """

    context: str
    option: str
    choices: Union[tuple[str, ...], str]
    words: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    prepare: Callable[[dict, Mapping[str, str], str], dict] = _identity
    #: Words ``prepare`` reads from ``w`` (chosen per row, e.g. XCOPA's because/so).
    uses: tuple[str, ...] = ()
    #: What the template reproduces, for the docs and error messages.
    source: str = ""
    #: Partial scoring (lm-eval's "multiple input" mode): option j's context is
    #: ``context + fill`` with ``{option}`` = answer j, and ``option`` (no ``{option}`` slot)
    #: is the continuation scored after each. "" = the usual mode (the answer is in ``option``).
    fill: str = ""

    def __post_init__(self) -> None:
        if self.fill:
            if "{option}" not in self.fill:
                raise TaskError(f"template fill string {self.fill!r} has no {{option}} slot: every answer would "
                                "be scored on the same text (method.md defect 3)")
            if "{option}" in self.option:
                raise TaskError(f"template option string {self.option!r} contains the {{option}} slot, but with a "
                                f"fill string ({self.fill!r}) the answer goes in the context and the option string "
                                "is the continuation shared by all answers (partial scoring)")
        elif "{option}" not in self.option:
            raise TaskError(f"template option string {self.option!r} has no {{option}} slot: every answer would "
                            "be scored on the same text (method.md defect 3)")
        if "{option}" in self.context:
            raise TaskError(f"template context {self.context!r} contains the {{option}} slot; the answer belongs "
                            "in the option string (the context is shared by all options)")
        if isinstance(self.choices, tuple) and len(self.choices) < 2:
            raise TaskError(f"a template needs at least 2 choices, got {self.choices!r}")
        object.__setattr__(self, "words", MappingProxyType({k: MappingProxyType(dict(v))
                                                           for k, v in self.words.items()}))
        needed = self.word_slots
        for lang, table in self.words.items():
            missing = sorted(needed - set(table))
            if missing:
                raise TaskError(f"template words for {lang!r} lack {missing} (the template uses {sorted(needed)})")

    @property
    def word_slots(self) -> set[str]:
        """The template words it uses (``{w[...]}`` in context, fill, option and choices)."""
        texts = [self.context, self.fill, self.option] + (list(self.choices) if isinstance(self.choices, tuple)
                                                          else [])
        return set(self.uses).union(*(_slots(t)[1] for t in texts))

    def option_values(self, row: Mapping[str, Any], w: Mapping[str, str]) -> list[str]:
        if isinstance(self.choices, str):
            return [str(v) for v in row[self.choices]]
        return [c.format(w=w, **row) for c in self.choices]

    def render(self, row: Mapping[str, Any], w: Mapping[str, str], data_lang: str) -> Rendering:
        """(context, options, contexts) of one row with the words ``w``; ``contexts`` is
        ``()`` unless the template has a ``fill`` (partial scoring)."""
        fields = self.prepare(dict(row), w, data_lang)
        values = self.option_values(fields, w)
        context = self.context.format(w=w, **fields)
        if self.fill:
            contexts = tuple(context + self.fill.format(w=w, option=v, **fields) for v in values)
            return Rendering(context, tuple(self.option.format(w=w, **fields) for _ in values), contexts)
        return Rendering(context, tuple(self.option.format(w=w, option=v, **fields) for v in values))


@dataclass(frozen=True)
class Hub:
    """A task's default hub dataset: id, config name (``{lang}`` replaced) and the hub split
    behind each of our splits (a split missing here does not exist on the hub)."""

    path: str
    name: Optional[str] = "{lang}"
    splits: Mapping[str, str] = field(default_factory=lambda: {"dev": "validation", "test": "test"})


@dataclass(frozen=True)
class Task:
    """One multiple-choice task. Real tasks list their ``languages`` and ``templates`` (one per
    family); tasks in the synthetic world have a ``world`` template (both families render the
    world's own text shapes, which its base model was trained on)."""

    name: str
    #: Columns a row must have (our names), besides ``label``.
    fields: tuple[str, ...]
    #: The gold-label column and how a raw value becomes an option index.
    label: str
    gold: Callable[[Any], int]
    #: Options per item; None = the length of the row's choices list (facts).
    n_options: Optional[int]
    description: str = ""
    languages: tuple[str, ...] = ()
    templates: Mapping[str, Template] = field(default_factory=dict)
    hub: Optional[Hub] = None
    #: Per-language hub datasets that differ from ``hub`` (English COPA next to XCOPA).
    hub_by_lang: Mapping[str, Hub] = field(default_factory=dict)
    #: Our language code -> the hub's config name where they differ (XWinograd's "jp").
    hub_names: Mapping[str, str] = field(default_factory=dict)
    world: Optional[Template] = None
    #: File extension of the world's task files (tasks/<name>/<lang>/<split>.<ext>).
    world_ext: str = "jsonl"
    #: Column that identifies an item across languages (parallel data); None = row position.
    id_field: Optional[str] = None
    #: Rows with an empty value in these fields are dropped (lm-eval does so for PAWS-X).
    skip_empty: tuple[str, ...] = ()
    #: Other spellings of language codes, for suggestions ("jp" -> "ja").
    aliases: Mapping[str, str] = field(default_factory=dict)
    #: A well-formed row: every template is rendered on it when the task is defined.
    example: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.languages and set(self.templates) != set(FAMILIES):
            raise TaskError(f"task {self.name!r}: a real task needs one template per family {FAMILIES}, "
                            f"got {sorted(self.templates)}")
        if not self.languages and self.world is None:
            raise TaskError(f"task {self.name!r} has neither real languages nor a world template")
        for family, template in self.templates.items():
            for lang, words in template.words.items():
                self._check_renders(template, words, lang, f"template {family!r} ({lang})")
        if self.world is not None:
            placeholder = {slot: f"<{slot}>" for slot in self.world.word_slots}
            self._check_renders(self.world, placeholder, "world", "world template")

    def _check_renders(self, template: Template, words: Mapping[str, str], lang: str, what: str) -> None:
        row = dict(self.example)
        missing = sorted((set(self.fields) | {self.label}) - set(row))
        if missing:
            raise TaskError(f"task {self.name!r}: the example row lacks {missing}")
        try:
            rendering = template.render(row, words, lang)
        except (KeyError, IndexError, ValueError) as exc:
            raise TaskError(f"task {self.name!r}, {what}: cannot render the example row: {exc!r}") from exc
        texts = rendering.texts()  # what tells the answers apart: the option, or (fill) its context
        if len(set(texts)) != len(texts):
            shown = rendering.contexts if template.fill else rendering.options
            raise TaskError(f"task {self.name!r}, {what}: options render alike {shown!r}: every answer "
                            "would get the same score (method.md defect 3)")
        if self.n_options is not None and len(texts) != self.n_options:
            raise TaskError(f"task {self.name!r}, {what}: {len(texts)} options, the task has {self.n_options}")


def binary_label(value: Any) -> int:
    """0/1 labels (PAWS-X, XCOPA), also as strings from a TSV."""
    return int(str(value).strip())


def one_based_label(value: Any) -> int:
    """"1"/"2" (XWinograd's answer, XStoryCloze's answer_right_ending) -> 0/1."""
    return int(str(value).strip()) - 1


def strip_world_stop(text: str) -> str:
    """World sentences end in " ."; drop it where the template continues the sentence."""
    return text[:-2] if text.endswith(" .") else text
