"""The task registry: name -> Task. Plain tables (no torch, transformers or datasets), so the
config can validate task names in milliseconds."""

from __future__ import annotations

from types import MappingProxyType

from xalign.tasks.base import Task, unknown
from xalign.tasks.facts import FACTS
from xalign.tasks.pawsx import PAWSX
from xalign.tasks.xcopa import XCOPA
from xalign.tasks.xnli import XNLI
from xalign.tasks.xstorycloze import XSTORYCLOZE
from xalign.tasks.xwinograd import XWINOGRAD

TASKS = MappingProxyType({t.name: t for t in (FACTS, PAWSX, XCOPA, XNLI, XSTORYCLOZE, XWINOGRAD)})
#: Names people reach for, offered as suggestions only.
TASK_SYNONYMS = {"paws-x": "pawsx", "paws_x": "pawsx", "paws": "pawsx", "copa": "xcopa",
                 "xstory_cloze": "xstorycloze", "storycloze": "xstorycloze", "winograd": "xwinograd",
                 "nli": "xnli", "fact": "facts"}


def task_names() -> tuple[str, ...]:
    return tuple(sorted(TASKS))


def get_task(name: str) -> Task:
    """The task called ``name``; a miss says the nearest name and lists them all."""
    if name not in TASKS:
        raise unknown("task", name, task_names(), aliases=TASK_SYNONYMS)
    return TASKS[name]
