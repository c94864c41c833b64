"""PAWS-X: is sentence2 a paraphrase of sentence1? label 1 = yes (option 1), 0 = no.

Both families put sentence2 inside the option: the answer word comes before sentence2,
and only the likelihood of sentence2 after "Yes," / "No," says whether the model thinks the
two sentences mean the same.
"""

from __future__ import annotations

import re

from xalign.tasks.base import Hub, Task, Template, binary_label, strip_world_stop

#: The paper's shape "{sentence1}, right? {Yes|No}, {sentence2}", one row per language.
#: en/zh/ar are the released code's words and punctuation (zh uses full-width marks); the
#: others take lm-eval's words (LM_EVAL_WORDS) in the paper's shape. ``right`` carries the
#: punctuation around the tag, ``comma`` the separator after the answer.
AFP_WORDS = {
    "ar": {"right": ", أليس كذلك؟", "yes": "نعم", "no": "لا", "comma": ", "},
    "de": {"right": ", richtig?", "yes": "Ja", "no": "Nein", "comma": ", "},
    "en": {"right": ", right?", "yes": "Yes", "no": "No", "comma": ", "},
    "es": {"right": ", verdad?", "yes": "Sí", "no": "No", "comma": ", "},
    "fr": {"right": ", n'est-ce pas?", "yes": "Oui", "no": "Non", "comma": ", "},
    "ja": {"right": ", ですね?", "yes": "はい", "no": "いいえ", "comma": ", "},
    "ko": {"right": ", 맞죠?", "yes": "예", "no": "아니요", "comma": ", "},
    "zh": {"right": "，对吗？", "yes": "对", "no": "不对", "comma": "，"},
}

#: lm-eval 0.4.13 tasks/paws-x/paws_<lang>.yaml. The installed YAML files are authoritative:
#: their generator (paws-x/_generate_config.py) says "No" for French and lists Yes before No,
#: the YAML files say "Non" and put No first (label 0).
LM_EVAL_WORDS = {
    "de": {"right": "richtig", "yes": "Ja", "no": "Nein"},
    "en": {"right": "right", "yes": "Yes", "no": "No"},
    "es": {"right": "verdad", "yes": "Sí", "no": "No"},
    "fr": {"right": "n'est-ce pas", "yes": "Oui", "no": "Non"},
    "ja": {"right": "ですね", "yes": "はい", "no": "いいえ"},
    "ko": {"right": "맞죠", "yes": "예", "no": "아니요"},
    "zh": {"right": "对吧", "yes": "是", "no": "不是"},
}

#: lm-eval cleans the sentences of these languages only (``process_docs`` in their YAML);
#: ja, ko and zh are used as they are.
LM_EVAL_CLEANED = frozenset({"de", "en", "es", "fr"})


def detokenize(text: str) -> str:
    """Undo tokenizer spacing as lm-eval's PAWS-X ``general_detokenize`` does."""
    for spaced, joined in ((" n't", "n't"), (" )", ")"), ("( ", "("), ('" ', '"'), (' "', '"')):
        text = text.replace(spaced, joined)
    return re.sub(r" (['.,])", r"\1", text)


def _lm_eval_prepare(row: dict, w, lang: str) -> dict:
    if lang in LM_EVAL_CLEANED:
        first = detokenize(row["sentence1"]).strip()
        if first.endswith((".", ",", ";")):
            first = first[:-1]
        second = detokenize(row["sentence2"]).strip()
        row["sentence1"], row["sentence2"] = first, second[:1].lower() + second[1:]
    return row


def _afp_prepare(row: dict, w, lang: str) -> dict:
    # "{sentence1}, right?": the released code kept sentence1's full stop ("... end., right?").
    first = row["sentence1"].strip()
    row["sentence1"] = first[:-1] if first.endswith((".", "。", "．")) else first
    return row


def _world_prepare(row: dict, w, lang: str) -> dict:
    row["sentence1"] = strip_world_stop(row["sentence1"])
    return row


PAWSX = Task(
    name="pawsx",
    description="PAWS-X paraphrase identification (2 options: no, yes)",
    fields=("sentence1", "sentence2"),
    label="label",
    gold=binary_label,
    n_options=2,
    languages=tuple(sorted(LM_EVAL_WORDS)),
    templates={
        "afp": Template(context="{sentence1}{w[right]}", option=" {option}{w[comma]}{sentence2}",
                        choices=("{w[no]}", "{w[yes]}"), words=AFP_WORDS, prepare=_afp_prepare,
                        source="released AFP code, src/paws_x_prompt.py"),
        "lm_eval": Template(context="", option="{sentence1}, {w[right]}? {option}, {sentence2}",
                            choices=("{w[no]}", "{w[yes]}"), words=LM_EVAL_WORDS, prepare=_lm_eval_prepare,
                            source="lm-eval 0.4.13 tasks/paws-x (target_delimiter '', empty doc_to_text)"),
    },
    hub=Hub("google-research-datasets/paws-x"),
    # The world's corpus: "S1 , right ? yes , S2 ." (xalign.synthetic.generate.Speaker.paraphrase)
    world=Template(context="{sentence1} , {w[right]} ?", option=" {option} , {sentence2}",
                   choices=("{w[no]}", "{w[yes]}"), prepare=_world_prepare,
                   source="the synthetic world's paraphrase discourse"),
    world_ext="tsv",
    id_field="id",
    skip_empty=("sentence1", "sentence2"),
    example={"id": "0", "sentence1": "A met B .", "sentence2": "B was met by A .", "label": "1"},
)
