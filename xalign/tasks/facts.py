"""Facts (synthetic world only): a question about a pivot-only fact of the world, asked in
every language, with 4 value words as options. Answering it outside the pivot needs
cross-lingual transfer, which is what alignment should improve."""

from __future__ import annotations

from xalign.tasks.base import Task, Template


def _world_prepare(row: dict, w, lang: str) -> dict:
    # The world writes the question as "QUESTION : NAME REL WHAT ?" in the row's language;
    # the leading "QUESTION :" is template (the pivot's word under the cross protocol).
    tokens = row["question"].split()
    if len(tokens) < 3 or tokens[1] != ":":
        raise ValueError(f"question must look like 'QUESTION : ... ?', got {row['question']!r}")
    row["body"] = " ".join(tokens[2:])
    return row


def _choices_label(value) -> int:
    return int(str(value).strip())


FACTS = Task(
    name="facts",
    description="synthetic-world fact questions (options: the world's value words)",
    fields=("question", "choices"),
    label="label",
    gold=_choices_label,
    n_options=None,
    # The world's corpus: "question : NAME REL WHAT ? answer : VALUE ."
    world=Template(context="{w[question]} : {body} {w[answer]} :", option=" {option} .", choices="choices",
                   prepare=_world_prepare, source="the synthetic world's fact Q&A"),
    world_ext="jsonl",
    id_field="idx",
    example={"idx": 0, "question": "q : Ann eats what ?", "choices": ["rice", "fish", "soup", "figs"], "label": 2},
)
