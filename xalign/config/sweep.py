"""A sweep file: a run config (usually through ``extends``) plus

    search:   dotted config keys -> Optuna-style distributions
    tune:     objectives, trials, concurrency, scheduler, seed, time budget
    confirm:  seeds and control variants re-run with the best trial's config

The search keys are the same dotted keys as CLI overrides and MLflow params. Every sampled
value must give a valid run config: the bounds and choices are checked up front by building
the run config at each of them, so a sweep never starts trials that would fail validation.
"""

from __future__ import annotations

import math
import typing
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field, ValidationError, model_validator

from xalign.config.base import Section
from xalign.config.loader import (
    ConfigError,
    Problem,
    apply_overrides,
    flatten,
    load_raw,
    problems_from_validation,
    with_dotted,
)
from xalign.config.schema import PositiveInt, RunConfig, evaluates_world
from xalign.suggest import did_you_mean


class FloatDist(Section):
    low: float
    high: float
    log: bool = False
    step: Optional[float] = None

    @model_validator(mode="after")
    def _bounds(self) -> "FloatDist":
        _check_bounds(self.low, self.high, self.log, self.step)
        return self


class IntDist(Section):
    low: int
    high: int
    log: bool = False
    step: Optional[int] = None

    @model_validator(mode="after")
    def _bounds(self) -> "IntDist":
        _check_bounds(self.low, self.high, self.log, self.step)
        return self


class CategoricalDist(Section):
    choices: list[Union[None, bool, int, float, str]] = Field(min_length=1)


def _check_bounds(low, high, log, step) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"`low` and `high` must be finite, got low={low}, high={high}")
    if low > high:
        raise ValueError(f"`low <= high` must hold, got low={low}, high={high}")
    if log and low <= 0:
        raise ValueError(f"`log: true` needs `low > 0`, got low={low}")
    if step is not None and log:
        raise ValueError("`step` and `log: true` cannot be combined (Optuna's rule)")
    if step is not None and step <= 0:
        raise ValueError(f"`step` must be > 0, got {step}")


class Distribution(Section):
    """Exactly one of ``float``, ``int``, ``categorical`` (Optuna's vocabulary)."""

    float: Optional[FloatDist] = None
    int: Optional[IntDist] = None
    categorical: Optional[CategoricalDist] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Distribution":
        given = [k for k in ("float", "int", "categorical") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a distribution is exactly one of float, int, categorical; got {given or 'none'}")
        return self

    def edge_values(self) -> list[Any]:
        """Values whose validity implies every sampled value's (bounds, or every choice)."""
        if self.categorical is not None:
            return list(self.categorical.choices)
        dist = self.float or self.int
        return [dist.low, dist.high]


class TuneConfig(Section):
    #: Objectives and their directions; several = multi-objective (a Pareto front). The
    #: default never counts pivot forgetting as gap closure: non-pivot AND pivot accuracy.
    metrics: dict[str, Literal["max", "min"]] = Field(
        default_factory=lambda: {"eval/acc_non_pivot": "max", "eval/acc_pivot": "max"})
    #: Trials sampled by the searcher.
    num_samples: PositiveInt = 8
    #: Trials at once; None = as many as the cluster's CPUs/GPUs fit.
    max_concurrent_trials: Optional[PositiveInt] = None
    #: tpe (Optuna's default) | random.
    searcher: Literal["tpe", "random"] = "tpe"
    #: fifo (every trial runs to the end) | asha (stops weak trials early on the periodic
    #: dev metric matching the first objective, e.g. dev/acc_non_pivot).
    scheduler: Literal["fifo", "asha"] = "fifo"
    #: ASHA: steps before a trial can be stopped, and the halving factor.
    grace_period: PositiveInt = 100
    reduction_factor: float = Field(default=2.0, gt=1.0)
    #: ASHA: the periodic metric it compares; None = the dev counterpart of the first
    #: objective (eval/acc_non_pivot -> dev/acc_non_pivot). `align/mexa` or
    #: `align/retrieval/top1` are the cheap representation proxy (no task scoring with
    #: eval.dev_tasks false; the world's held-out parallel sentences); `train/loss` works too.
    asha_metric: Optional[str] = None
    #: ASHA: max or min for asha_metric; None = the first objective's direction for its dev
    #: counterpart, min for train/ losses, max otherwise.
    asha_mode: Optional[Literal["max", "min"]] = None

    def asha(self) -> tuple[str, str]:
        """(metric, mode) that ASHA compares."""
        first, first_mode = next(iter(self.metrics.items()))
        dev = "dev/" + first.split("/", 1)[1] if first.startswith(("eval/", "base/")) else first
        metric = self.asha_metric or dev
        if self.asha_mode is not None:
            return metric, self.asha_mode
        if metric == dev:
            return metric, first_mode
        return metric, "min" if metric.startswith("train/loss") else "max"
    #: Seed of the searcher (the trials' own seed is the run config's `seed`).
    seed: int = 0
    #: Stop sampling new trials after this many seconds (None = no limit).
    time_budget_s: Optional[PositiveInt] = None
    #: false: search trials skip the final evaluation on eval.split (test), which never
    #: chooses anything when the objectives are dev/ or align/ metrics; the confirmation runs
    #: always do it. On a real model this evaluation costs more than a short trial's training.
    final_eval: bool = True


class ConfirmConfig(Section):
    """After the search: the best trial's config re-run with each seed, and control
    variants of it (e.g. without the contrastive term), so that the reported gain has a
    spread and a baseline. Empty seeds = no confirmation phase."""

    seeds: list[int] = Field(default_factory=list)
    #: The controls' seeds; None = ``seeds`` (e.g. [0]: the best config over two seeds, each
    #: control once, when runs are expensive).
    control_seeds: Optional[list[int]] = None
    #: name -> overrides applied to the best config, e.g. {no_contrastive:
    #: {objective.contrastive_weight: 0}}.
    controls: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def seeds_of_controls(self) -> list[int]:
        """The seeds each control variant runs with."""
        return self.seeds if self.control_seeds is None else self.control_seeds

    def runs(self) -> int:
        """How many runs the confirmation phase has (0 without seeds)."""
        return len(self.seeds) + len(self.seeds_of_controls()) * len(self.controls) if self.seeds else 0


class SweepConfig(RunConfig):
    """A run config plus what to search and how."""

    search: dict[str, Distribution] = Field(default_factory=dict)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    confirm: ConfirmConfig = Field(default_factory=ConfirmConfig)

    def run_config(self) -> RunConfig:
        """The base run config (without the sweep sections)."""
        return RunConfig.model_validate(self.model_dump(exclude={"search", "tune", "confirm"}))


SWEEP_KEYS = ("search", "tune", "confirm")


# --- checks that need the whole file ------------------------------------------------------

def searchable_keys(run: RunConfig) -> set[str]:
    """Leaf keys of the run config, plus ``<dict field>.<anything>`` for mapping fields."""
    return set(flatten(run))


def is_search_key(key: str, keys: set[str]) -> bool:
    """A leaf key of the run config, or an entry of a mapping field (data.mix.pair_weights.qab)."""
    if key in keys:
        return True
    parent, _, _ = key.rpartition(".")
    model: Any = RunConfig
    annotation: Any = None
    for part in parent.split("."):
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return False
        annotation = fields[part].annotation
        model = next((a for a in (annotation, *typing.get_args(annotation))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return typing.get_origin(annotation) is dict


def reportable_metrics(run: RunConfig) -> set[str]:
    """The metric names a trial reports: the contract's, for the configured tasks."""
    names = {"train/loss", "train/loss_contrastive", "train/loss_lm", "train/tokens_per_s"}
    if run.eval.tasks:
        # another protocol than the first (eval.protocol: [cross, same]): its final metrics, eval_same/...
        others = [f"{prefix}_{p}" for p in run.eval.protocols[1:] for prefix in ("eval", "base")]
        for prefix in ("eval", "dev", "base", *others):
            names |= {f"{prefix}/{m}" for m in ("acc", "acc_pivot", "acc_non_pivot", "gap")}
            names |= {f"{prefix}/{task}/gap" for task in run.eval.tasks}
        names |= {"align/retrieval/top1", "align/mexa"}
    return names


def key_problems(data: dict, where: dict[str, str]) -> list:
    """Search keys and control keys (read from the raw file) that are not config keys."""
    keys = searchable_keys(RunConfig())
    problems = []
    raw_search = data.get("search") if isinstance(data.get("search"), dict) else {}
    raw_controls = (data.get("confirm") or {}).get("controls") if isinstance(data.get("confirm"), dict) else {}
    named = [(f"search.{k}", k) for k in raw_search]
    named += [(f"confirm.controls.{n}.{k}", k) for n, over in (raw_controls or {}).items()
              if isinstance(over, dict) for k in over]
    for loc, key in named:
        if not is_search_key(str(key), keys):
            hint = did_you_mean(str(key), sorted(keys))
            problems.append(Problem(loc, f"{key!r} is not a config key.{hint}", where.get(loc)))
    return problems


def value_problems(sweep: SweepConfig, where: dict[str, str]) -> list:
    """Bounds or choices that give an invalid run config, metrics no trial reports,
    controls that are not valid (keys were checked by ``key_problems``)."""
    problems = []
    try:      # the sweep validated, but a value made absolute then (a GGUF path) can fail again here
        base = sweep.run_config()
    except ValidationError as exc:
        data = sweep.model_dump(exclude={"search", "tune", "confirm"})
        return problems_from_validation(exc, data, where, RunConfig, None)
    base_data = base.model_dump(mode="json")
    keys = searchable_keys(base)

    def check_value(loc: str, key: str, value: Any, what: str) -> None:
        if not is_search_key(key, keys):
            return
        data = with_dotted(base_data, key, value)
        try:
            RunConfig.model_validate(data)
        except ValidationError as exc:
            inner = "; ".join(f"`{p.key}`: {p.message}" if p.key else p.message
                              for p in problems_from_validation(exc, data, {}, RunConfig, None))
            problems.append(Problem(loc, f"{what} {value!r} gives an invalid run config: {inner}", where.get(loc)))

    for key, dist in sweep.search.items():
        for value in dist.edge_values():
            check_value(f"search.{key}", key, value, "value")
    reportable = reportable_metrics(base)
    for metric in sweep.tune.metrics:
        parts = metric.split("/")
        prefixes = ("eval", "dev", "base", *(f"{x}_{p}" for p in base.eval.protocols[1:] for x in ("eval", "base")))
        per_lang = len(parts) == 4 and parts[0] in prefixes and parts[3] == "acc" and parts[1] in base.eval.tasks
        if metric not in reportable and not per_lang:
            hint = did_you_mean(metric, sorted(reportable))
            problems.append(Problem(f"tune.metrics.{metric}", f"no trial reports {metric!r}.{hint} Trials report "
                                    f"{', '.join(sorted(reportable))} and <prefix>/<task>/<lang>/acc for eval.tasks "
                                    f"{base.eval.tasks}", where.get(f"tune.metrics.{metric}", where.get("tune.metrics"))))
    if not sweep.tune.final_eval:
        final_only = [m for m in sweep.tune.metrics if not m.startswith(("dev/", "align/"))]
        if final_only:
            problems.append(Problem("tune.final_eval", f"is false, so search trials report no final evaluation, but "
                                    f"tune.metrics asks for {', '.join(map(repr, final_only))}; use dev/ or align/ "
                                    "objectives (e.g. dev/acc_non_pivot) or set final_eval: true",
                                    where.get("tune.final_eval")))
    for name, overrides in sweep.confirm.controls.items():
        for key, value in overrides.items():
            check_value(f"confirm.controls.{name}.{key}", key, value, f"control {name!r}:")
    problems += asha_problems(sweep, base, where)
    return problems


def periodic_metrics(run: RunConfig) -> set[str]:
    """What every periodic report of a trial carries, for ASHA to compare."""
    # Trials report to Ray (and so to Tune) at evaluations and checkpoints only.
    if not (run.eval.every_n_steps or run.checkpoint.every_n_steps):
        return set()
    names = {"train/loss", "train/loss_contrastive", "train/loss_lm"}
    if run.eval.tasks:   # a dev evaluation at both
        if run.eval.dev_tasks:
            names |= {f"dev/{m}" for m in ("acc", "acc_pivot", "acc_non_pivot", "gap")}
            names |= {f"dev/{task}/gap" for task in run.eval.tasks}
        # held-out parallel sentences: the world's, or data.pairs.heldout (xalign.data.build.heldout_pairs)
        if evaluates_world(run) or (run.data.pairs is not None and run.data.pairs.heldout):
            names |= {"align/retrieval/top1", "align/mexa"}
    return names


def asha_problems(sweep: SweepConfig, base: RunConfig, where: dict[str, str]) -> list:
    tune = sweep.tune
    if tune.scheduler != "asha":
        if tune.asha_metric is not None:
            return [Problem("tune.asha_metric", f"is set ({tune.asha_metric!r}) but tune.scheduler is "
                            f"{tune.scheduler!r}; set tune.scheduler: asha or drop asha_metric",
                            where.get("tune.asha_metric"))]
        return []
    metric, _ = tune.asha()
    periodic = periodic_metrics(base)
    parts = metric.split("/")
    per_lang = len(parts) == 4 and parts[0] == "dev" and parts[3] == "acc" and parts[1] in base.eval.tasks         and base.eval.dev_tasks and base.eval.every_n_steps > 0
    if metric in periodic or per_lang:
        return []
    if not (base.eval.every_n_steps or base.checkpoint.every_n_steps):
        why = ("eval.every_n_steps and checkpoint.every_n_steps are 0, so trials report nothing before the end; "
               "set eval.every_n_steps (e.g. 50)")
    elif metric.startswith(("dev/", "align/")) and not base.eval.tasks:
        why = "eval.tasks is empty, so trials run no evaluation"
    elif metric.startswith("dev/") and not base.eval.dev_tasks:
        why = "eval.dev_tasks is false, so periodic evaluations score no task"
    elif metric.startswith("align/"):
        why = ("representation metrics need held-out parallel sentences: the synthetic world's (eval.source: world) "
               "or data.pairs.heldout (e.g. 500 pairs per language)")
    else:
        why = f"trials report {', '.join(sorted(periodic))} periodically"
    loc = "tune.asha_metric" if tune.asha_metric else "tune.metrics"
    return [Problem(loc, f"ASHA compares {metric!r} at every periodic report, but {why}", where.get(loc))]


def load_sweep(path, overrides=()) -> SweepConfig:
    """A sweep file (following ``extends``) with overrides, validated as a whole: every
    problem of the file in one ConfigError."""
    loaded = load_raw(path, SweepConfig)
    problems = list(loaded.problems) + apply_overrides(loaded.data, overrides, loaded.where)
    problems += key_problems(loaded.data, loaded.where)
    sweep = None
    try:
        sweep = SweepConfig.model_validate(loaded.data)
    except ValidationError as exc:
        problems += problems_from_validation(exc, loaded.data, loaded.where, SweepConfig, str(path))
    if sweep is not None:
        problems += value_problems(sweep, loaded.where)
    if problems:
        raise ConfigError(problems, source=str(path))
    return sweep
