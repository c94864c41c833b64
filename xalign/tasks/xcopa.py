"""XCOPA: which choice is the cause (question "cause") or the effect ("effect") of the premise?
label 0 = choice1, 1 = choice2."""

from __future__ import annotations

from xalign.tasks.base import Hub, Task, Template, binary_label, strip_world_stop

#: The paper's shape "{cause|effect}: {premise} {because|so} {choice}" (released code,
#: src/xcopa_prompt.py, which translated the fixed words for zh and ar only).
AFP_WORDS = {
    "ar": {"cause": "السبب", "effect": "تأثير", "because": "لأن", "so": "لذا"},
    "en": {"cause": "cause", "effect": "effect", "because": "because", "so": "so"},
    "zh": {"cause": "起因", "effect": "影响", "because": "因为", "so": "所以"},
}

#: lm-eval 0.4.13 tasks/xcopa/utils.py connectors ("because", "therefore") per language;
#: English is not an XCOPA language there: its words are those of lm-eval's COPA
#: (tasks/super_glue/copa/utils.py).
LM_EVAL_WORDS = {
    "en": {"because": "because", "so": "therefore"},
    "et": {"because": "sest", "so": "seetõttu"},
    "ht": {"because": "poukisa", "so": "donk sa"},
    "id": {"because": "karena", "so": "maka"},
    "it": {"because": "perché", "so": "quindi"},
    "qu": {"because": "imataq", "so": "chaymi"},
    "sw": {"because": "kwa sababu", "so": "kwa hiyo"},
    "ta": {"because": "காரணமாக", "so": "எனவே"},
    "th": {"because": "เพราะ", "so": "ดังนั้น"},
    "tr": {"because": "çünkü", "so": "bu yüzden"},
    "vi": {"because": "bởi vì", "so": "vì vậy"},
    "zh": {"because": "因为", "so": "所以"},
}

#: question -> the word that joins premise and choice: the choice is the premise's cause
#: ("premise because choice") or its effect ("premise so choice").
CONNECTIVE = {"cause": "because", "effect": "so"}


def _connective(row: dict, w) -> str:
    question = row["question"]
    if question not in CONNECTIVE:
        raise ValueError(f"question must be one of {sorted(CONNECTIVE)}, got {question!r}")
    return w[CONNECTIVE[question]]


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _afp_prepare(row: dict, w, lang: str) -> dict:
    premise = row["premise"].strip()
    row["premise"] = premise[:-1] if premise.endswith((".", "。", "．")) else premise
    row["connective"] = _connective(row, w)
    row["relation"] = w[row["question"]]
    row["choice1"], row["choice2"] = _lower_first(row["choice1"]), _lower_first(row["choice2"])
    return row


def _lm_eval_prepare(row: dict, w, lang: str) -> dict:
    # lm-eval drops the premise's last character whatever it is, and lower-cases the choices.
    row["premise"] = row["premise"].strip()[:-1]
    row["connective"] = _connective(row, w)
    row["choice1"], row["choice2"] = _lower_first(row["choice1"]), _lower_first(row["choice2"])
    return row


def _world_prepare(row: dict, w, lang: str) -> dict:
    row["premise"] = strip_world_stop(row["premise"])
    row["connective"] = _connective(row, w)
    return row


XCOPA = Task(
    name="xcopa",
    description="XCOPA causal commonsense reasoning (2 options: choice1, choice2)",
    fields=("premise", "choice1", "choice2", "question"),
    label="label",
    gold=binary_label,
    n_options=2,
    languages=tuple(sorted(LM_EVAL_WORDS)),
    templates={
        # {relation} is the cause/effect word; it is chosen by the row's question.
        "afp": Template(context="{relation}: {premise} {connective}", option=" {option}",
                        choices=("{choice1}", "{choice2}"), words=AFP_WORDS, prepare=_afp_prepare,
                        uses=("cause", "effect", "because", "so"),
                        source="released AFP code, src/xcopa_prompt.py"),
        "lm_eval": Template(context="{premise} {connective}", option=" {option}",
                            choices=("{choice1}", "{choice2}"), words=LM_EVAL_WORDS, prepare=_lm_eval_prepare,
                            uses=("because", "so"),
                            source="lm-eval 0.4.13 tasks/xcopa/utils.py (target_delimiter ' ')"),
    },
    hub=Hub("cambridgeltl/xcopa"),
    # XCOPA has no English; English COPA is SuperGLUE's (its test labels are hidden, so the
    # labelled validation split is the test here and train is the dev pool).
    hub_by_lang={"en": Hub("aps/super_glue", name="copa", splits={"dev": "train", "test": "validation"})},
    # The world's corpus: "EFFECT because CAUSE ." and "CAUSE so EFFECT ." (no "cause:" label:
    # the world's base model never saw one).
    world=Template(context="{premise} {connective}", option=" {option}", choices=("{choice1}", "{choice2}"),
                   prepare=_world_prepare, uses=("because", "so"), source="the synthetic world's causal sentences"),
    world_ext="jsonl",
    id_field="idx",
    example={"idx": 0, "premise": "The glass fell .", "choice1": "It broke .", "choice2": "It sang .",
             "question": "effect", "label": 0},
)
