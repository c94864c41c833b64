"""XStoryCloze: which of two endings ends the four-sentence story?
answer_right_ending 1 = sentence_quiz1, 2 = sentence_quiz2."""

from __future__ import annotations

from xalign.tasks.base import Hub, Task, Template, one_based_label

#: Languages of juletxara/xstory_cloze (and lm-eval 0.4.13 tasks/xstorycloze).
LANGUAGES = ("ar", "en", "es", "eu", "hi", "id", "my", "ru", "sw", "te", "zh")

#: The four sentences joined WITH spaces (the released code joined them without: method.md
#: defect 3), then the ending. lm-eval builds the same string: doc_to_text joins with ' ',
#: target_delimiter ' '. No fixed words, so every language has the template.
STORY = "{input_sentence_1} {input_sentence_2} {input_sentence_3} {input_sentence_4}"

XSTORYCLOZE = Task(
    name="xstorycloze",
    description="XStoryCloze story completion (2 options: sentence_quiz1, sentence_quiz2)",
    fields=("input_sentence_1", "input_sentence_2", "input_sentence_3", "input_sentence_4",
            "sentence_quiz1", "sentence_quiz2"),
    label="answer_right_ending",
    gold=one_based_label,
    n_options=2,
    languages=LANGUAGES,
    templates={
        "afp": Template(context=STORY, option=" {option}", choices=("{sentence_quiz1}", "{sentence_quiz2}"),
                        source="the paper's shape, sentences joined with spaces"),
        "lm_eval": Template(context=STORY, option=" {option}", choices=("{sentence_quiz1}", "{sentence_quiz2}"),
                            source="lm-eval 0.4.13 tasks/xstorycloze/default_ar.yaml"),
    },
    # lm-eval: training_split train, validation_split eval (no test split: it reports `eval`).
    hub=Hub("juletxara/xstory_cloze", splits={"dev": "train", "test": "eval"}),
    id_field="story_id",
    example={"story_id": "s0", "input_sentence_1": "Ann was hungry.", "input_sentence_2": "She went out.",
             "input_sentence_3": "She found a cafe.", "input_sentence_4": "She ordered soup.",
             "sentence_quiz1": "She enjoyed the soup.", "sentence_quiz2": "She flew to the moon.",
             "answer_right_ending": 1},
)
