"""Evaluation task definitions as plain tables: a registry of multiple-choice tasks
(PAWS-X, XCOPA, XNLI, XStoryCloze, XWinograd on real data; PAWS-X, XCOPA and facts in the
synthetic world) and their templates in two families ("afp": the paper's shapes;
"lm_eval": lm-evaluation-harness 0.4.13's strings).

Nothing here imports torch, transformers or datasets: the config validates task names
against these tables. Reading a task's rows and building its items is evaluation's work
(``xalign.eval.task_rows``, ``xalign.eval.task_items``).
"""

from xalign.tasks.base import FAMILIES, PROTOCOLS, SPLITS, Hub, Task, TaskError, Template
from xalign.tasks.registry import TASKS, get_task, task_names

__all__ = ["FAMILIES", "PROTOCOLS", "SPLITS", "TASKS", "Hub", "Task", "TaskError", "Template", "get_task",
           "task_names"]
