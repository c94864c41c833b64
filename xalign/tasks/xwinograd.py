"""XWinograd: which of two names fills the blank ``_`` of the sentence? answer "1" = option1,
"2" = option2.

The blank splits the sentence (part 1 ``_`` part 2), so the answers differ in the middle.
The two template families score different text:

- ``afp`` (the paper's shape, as the released AFP code did): the whole filled sentence
  "part 1, the option, part 2" is the option and the context is empty; the score is the
  log-likelihood of the whole sentence (so it includes how likely part 1 and the name are).
- ``lm_eval`` (lm-evaluation-harness 0.4.13, ``tasks/xwinograd``, "multiple input" mode,
  "partial evaluation" as Winogrande): each option has its own context,
  ``sentence[:blank] + option`` (``doc_to_choice``), and the same continuation,
  ``" " + sentence[blank + 1:].strip()`` (target delimiter + ``doc_to_target``), is scored
  after each (``Template.fill``, ``EvalItem.contexts``). The shared context is
  ``sentence[:blank]``. A demonstration is the gold option's context + the continuation,
  as lm-eval's few-shot turns. Numbers are comparable with lm-eval's ``acc``.
"""

from __future__ import annotations

from xalign.tasks.base import Hub, Task, Template, one_based_label

#: Our language codes; the hub (and lm-eval) call Japanese "jp".
LANGUAGES = ("en", "fr", "ja", "pt", "ru", "zh")
HUB_NAMES = {"ja": "jp"}


def _split(row: dict) -> tuple[str, str]:
    sentence = row["sentence"]
    if "_" not in sentence:
        raise ValueError(f"sentence has no '_' blank: {sentence!r}")
    i = sentence.index("_")
    return sentence[:i], sentence[i + 1:]


def _afp_prepare(row: dict, w, lang: str) -> dict:
    row["part1"], row["part2"] = _split(row)
    return row


def _lm_eval_prepare(row: dict, w, lang: str) -> dict:
    # lm-eval: contexts sentence[:blank] + option; continuation " " + sentence[blank+1:].strip()
    first, second = _split(row)
    row["part1"], row["part2"] = first, " " + second.strip()
    return row


XWINOGRAD = Task(
    name="xwinograd",
    description="XWinograd coreference (2 options: option1, option2 fill the blank)",
    fields=("sentence", "option1", "option2"),
    label="answer",
    gold=one_based_label,
    n_options=2,
    languages=LANGUAGES,
    templates={
        "afp": Template(context="", option="{part1}{option}{part2}", choices=("{option1}", "{option2}"),
                        prepare=_afp_prepare, source="the paper's shape: part 1, the option, part 2"),
        "lm_eval": Template(context="{part1}", fill="{option}", option="{part2}", choices=("{option1}", "{option2}"),
                            prepare=_lm_eval_prepare,
                            source="lm-eval 0.4.13 tasks/xwinograd/utils.py (multiple input mode)"),
    },
    # The hub dataset has a test split only: k-shot needs local dev files (eval.sources).
    hub=Hub("Muennighoff/xwinograd", splits={"test": "test"}),
    hub_names=HUB_NAMES,
    aliases={"jp": "ja"},
    example={"sentence": "Ann thanked Bea because _ had helped her.", "option1": "Ann", "option2": "Bea",
             "answer": "2"},
)
