"""Evaluation tasks: a registry of multiple-choice tasks (PAWS-X, XCOPA, XNLI, XStoryCloze,
XWinograd on real data; PAWS-X, XCOPA and facts in the synthetic world), their templates in
two families ("afp": the paper's shapes; "lm_eval": lm-evaluation-harness 0.4.13's strings),
and the builder that turns rows into EvalItems (xalign.eval.items) for the scorer.

    items = build_items("xcopa", "vi", split="test", template="afp", shots=5, protocol="cross",
                        seed=0, pivot="en", sources=cfg.eval.sources)

Nothing here imports torch or transformers; ``datasets`` is imported only to read hub ids,
Parquet files or save_to_disk directories.
"""

from xalign.eval.tasks.base import (
           FAMILIES,
           PROTOCOLS,
           SPLITS,
           Hub,
           Task,
           TaskError,
           Template,
)
from xalign.eval.tasks.build import build_eval_items, build_items
from xalign.eval.tasks.data import load_rows, origin, task_languages
from xalign.eval.tasks.registry import TASKS, get_task, task_names

__all__ = ["FAMILIES", "PROTOCOLS", "SPLITS", "TASKS", "Hub", "Task", "TaskError", "Template", "build_eval_items",
           "build_items", "get_task", "load_rows", "origin", "task_languages", "task_names"]
