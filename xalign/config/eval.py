"""The ``eval`` section: which tasks, languages, template family, protocol and data.

Task names are checked against the task registry (``xalign.tasks.registry``), which is
plain Python tables: validating a config never imports torch, transformers or datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from xalign.config.base import RELATIVE_TO_FILE, NonNegInt, PositiveInt, Section
from xalign.tasks.registry import get_task  # plain tables: cheap, no torch
from xalign.suggest import did_you_mean
from xalign.tasks.base import PROTOCOLS


def _check_task(name: str) -> str:
    get_task(name)  # raises TaskError (a ValueError): "Unknown task 'xcpa'. Did you mean 'xcopa'? ..."
    return name


TaskName = Annotated[str, AfterValidator(_check_task)]


def _literal_path_exists(value: Optional[str]) -> Optional[str]:
    """A path without ``{lang}`` or glob characters must exist now (a typo fails at once);
    one with ``{lang}`` is checked per language when items are built, before any model."""
    if value is not None and "{lang}" not in value and not Path(value).expanduser().exists():
        raise ValueError(f"path does not exist: {value!r} (resolved from {Path.cwd()})")
    return value


LocalPath = Annotated[Optional[str], RELATIVE_TO_FILE, AfterValidator(_literal_path_exists)]


def _check_protocols(value: Any) -> Any:
    """One protocol name, or a non-empty list of distinct ones."""
    allowed = " or ".join(repr(p) for p in sorted(PROTOCOLS))
    names = value if isinstance(value, list) else [value]
    bad = [v for v in names if v not in PROTOCOLS]
    if bad or not names or (isinstance(value, list) and len(set(names)) != len(names)):
        why = ("an empty list" if not names else f"{bad[0]!r} is not a protocol" if bad
               else "a protocol is listed twice")
        hint = did_you_mean(bad[0], list(PROTOCOLS)) if bad and isinstance(bad[0], str) else ""
        raise ValueError(f"must be {allowed}, or a list of them to evaluate each (e.g. [cross, same]); "
                         f"got {value!r} ({why}).{hint}".rstrip("."))
    return value


Protocols = Annotated[Union[Literal["cross", "same"], list[Literal["cross", "same"]]], BeforeValidator(_check_protocols)]


class LanguageSourceConfig(Section):
    """Files of ONE language that do not follow the task's ``{lang}`` pattern (e.g. English
    COPA next to XCOPA: ``xcopa/en/{train,test}.jsonl``)."""

    #: Dev split file (demonstrations, checkpoint selection); None = not available.
    dev: LocalPath = None
    #: Test split file (reported numbers); None = not available.
    test: LocalPath = None


class TaskSourceConfig(Section):
    """Where one real task's data comes from, overriding the task's default hub dataset.

    Local files per split (``dev``/``test``, ``{lang}`` replaced by the language code;
    TSV/CSV/JSONL/JSON/Parquet, or a ``save_to_disk`` directory), per-language files in
    ``languages`` for irregular layouts, or another hub dataset. Example (the real samples)::

        eval:
          sources:
            pawsx: {dev: /data/pawsx/{lang}/dev_2k.tsv, test: /data/pawsx/{lang}/test_2k.tsv}
            xcopa:
              dev: /data/xcopa/data/{lang}/val.{lang}.jsonl
              test: /data/xcopa/data/{lang}/test.{lang}.jsonl
              languages:
                en: {dev: /data/xcopa/en/train.jsonl, test: /data/xcopa/en/test.jsonl}
    """

    #: Hub dataset id instead of the task's default; None = the default (when no local files).
    hub: Optional[str] = None
    #: Hub config name, ``{lang}`` replaced; None = the task's own per-language name.
    name: Optional[str] = None
    #: Hub split names for our splits, e.g. {dev: validation, test: test}; a split not named
    #: keeps the task's default mapping.
    splits: dict[Literal["dev", "test"], str] = Field(default_factory=dict)
    #: Dev split file pattern with ``{lang}``; None = no local dev files.
    dev: LocalPath = None
    #: Test split file pattern with ``{lang}``; None = no local test files.
    test: LocalPath = None
    #: File format; auto = from the extension (a directory = save_to_disk). TSV is read with
    #: no quote handling (PAWS-X sentences contain unbalanced quotes).
    format: Literal["auto", "json", "jsonl", "csv", "tsv", "parquet", "disk"] = "auto"
    #: Renames: the task's column name -> the source's column name.
    columns: dict[str, str] = Field(default_factory=dict)
    #: Per-language files that override ``dev``/``test``; a language named here is added to
    #: the task's languages.
    languages: dict[str, LanguageSourceConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_origin(self) -> "TaskSourceConfig":
        if self.hub is not None and (self.dev is not None or self.test is not None):
            raise ValueError("set either `hub` or local files (`dev`/`test`), not both, got "
                             f"hub={self.hub!r}, dev={self.dev!r}, test={self.test!r}")
        if (self.name is not None or self.splits) and (self.dev is not None or self.test is not None):
            raise ValueError("`name` and `splits` describe a hub dataset; they do not apply to local files "
                             f"(dev={self.dev!r}, test={self.test!r})")
        return self


class EvalConfig(Section):
    #: Task names from the evaluation registry; the synthetic world's by default.
    tasks: list[TaskName] = Field(default_factory=lambda: ["facts", "pawsx", "xcopa"])
    #: Languages evaluated; None = every language the task has.
    languages: Optional[list[str]] = None
    #: Periodic evaluation every N optimizer steps; 0 = only at the end.
    every_n_steps: NonNegInt = 0
    #: Periodic (dev) evaluations score the tasks; false = they compute only the
    #: representation metrics (retrieval, MEXA: one forward per held-out sentence, no task
    #: scoring), a cheap proxy for ASHA; checkpoints are then not ranked by dev accuracy.
    dev_tasks: bool = True
    #: Demonstrations per query, drawn from the dev split only.
    shots: NonNegInt = 0
    #: cross: template and demonstrations in the pivot, query in the target language (the
    #: AFP setting); same: everything in the query's language. A list ([cross, same])
    #: evaluates each: the first is the primary one (plain metric names, checkpoint
    #: selection, the periodic dev evaluations); another's final metrics are named
    #: ``<prefix>_<protocol>/...`` (``eval_same/xcopa/zh/acc``, ``base_same/acc_non_pivot``).
    protocol: Protocols = "cross"
    #: Demonstration-sampling seeds; results are averaged with their spread.
    seeds: list[int] = Field(default_factory=lambda: [0])
    #: Cap on items per task and language for the periodic dev evaluations during training
    #: and for `xalign eval` (None = all); the final test evaluation of a run uses all items.
    max_items: Optional[PositiveInt] = None
    #: Cap on items per task and language of a run's final test evaluation (and of a sweep's
    #: base-model evaluation): the first N of each file, the same items for every run
    #: (None = all items).
    test_max_items: Optional[PositiveInt] = None
    batch_size: PositiveInt = 16
    #: Template family: "afp" = the paper's shapes (with the defects of method.md fixed);
    #: "lm_eval" = the exact strings of lm-evaluation-harness 0.4.13, comparable with
    #: published leaderboards. The paper's family is the default: this is an AFP codebase.
    template: Literal["afp", "lm_eval"] = "afp"
    #: Split reported by a stand-alone or final evaluation; periodic evaluations and
    #: checkpoint selection always use dev (never select on test, method.md defect 6).
    split: Literal["test", "dev"] = "test"
    #: Where real tasks' data comes from, per task name (default: each task's hub dataset).
    sources: dict[TaskName, TaskSourceConfig] = Field(default_factory=dict)
    #: Task data: "world" = the synthetic world's tasks, "real" = real data (hub or
    #: `sources`), "auto" = the world when the run trains on world data.
    source: Literal["auto", "world", "real"] = "auto"
    #: Score normalisation of the primary `acc`: none = summed log-likelihood (the released
    #: code, and lm-eval's `acc`); token / char = per option token / character.
    normalization: Literal["none", "token", "char"] = "none"
    #: Also evaluate the starting model at the end ("base/..." metrics), so a run shows the
    #: gap before and after alignment.
    baseline: bool = True
    #: Keep and finally evaluate the checkpoint with the best DEV accuracy (not the last).
    select_best: bool = True

    @property
    def protocols(self) -> list[str]:
        """``protocol`` as a list, the primary one first."""
        return list(self.protocol) if isinstance(self.protocol, list) else [self.protocol]

    @model_validator(mode="after")
    def _sources_for_real_tasks(self) -> "EvalConfig":
        world_only = sorted(name for name in self.sources if not get_task(name).languages)
        if world_only:
            raise ValueError(f"`sources` cannot be set for {world_only}: they exist only in the synthetic world")
        return self
