"""`xalign sweep`: Ray Tune + Optuna over a sweep file. Each trial is a Tune function that
launches one Ray Train run (the Train V2 pattern: TorchTrainer + TuneReportCallback) and
reports the final test evaluation; the sweep is one MLflow parent run, each trial a child.

Phases: the search (OptunaSearch, TPE by default, multi-objective allowed; optional ASHA
on the periodic dev metric), then the confirmation (the best config re-run with each of
``confirm.seeds`` and with each control variant), so the reported gain has a spread and a
baseline. ``--resume`` restores a killed sweep (Tuner.restore) with the same parent run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import optuna
import ray.tune
import yaml
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search.optuna import OptunaSearch

from xalign import progress, storage, tracking
from xalign.config import flatten
from xalign.config.loader import with_dotted
from xalign.config.schema import RunConfig
from xalign.config.sweep import SweepConfig
from xalign.sweep.space import pareto_front, tune_space
from xalign.synthetic import run_world
from xalign.train import console
from xalign.train.cluster import TrainingError, check_ray_before_work, init_ray, runs_that_fit
from xalign.train.driver import prepare_data, storage_root, train
from xalign.train.final_eval import evaluation_plan, final_evaluation, local_eval_dir

STATE_FILE = "xalign_sweep.json"   # parent MLflow run id and phase, in the sweep's storage dir
#: CPU held by each trial's Tune function, which only waits on its TorchTrainer (Tune
#: refuses 0); the Train controller holds none, the workers hold scaling.cpus_per_worker.
TRIAL_CPU = 0.01


@dataclass
class Trial:
    trial_id: str
    phase: str                      # "search" | "confirm"
    params: dict[str, Any]          # the sampled (or variant) overrides
    metrics: dict[str, float]
    status: str                     # TERMINATED | ERROR | STOPPED
    seconds: float = 0.0


@dataclass
class SweepResult:
    name: str
    trials: list[Trial]
    best: Optional[Trial]
    pareto: list[Trial]
    parent_run_id: Optional[str]
    path: str
    base_metrics: dict[str, float] = field(default_factory=dict)
    report_html: Optional[str] = None     # the HTML report written at the end, when tracking is on
    #: The per-language table with standard errors from the runs' per-item records (`xalign
    #: report`'s), once the report is written; the summary shows it instead of its metrics-only form.
    comparison: Optional[str] = None


def trial_config(base: dict, params: dict[str, Any]) -> RunConfig:
    data = base
    for key, value in params.items():
        data = with_dotted(data, key, value)
    return RunConfig.model_validate(data)


def make_trainable(base: dict, *, storage: str, parent_run_id: Optional[str], sweep_name: str, phase: str,
                   final_eval: bool = True):
    """The Tune function trainable of one phase (``final_eval`` False: no evaluation on
    eval.split after training, see tune.final_eval)."""

    def run_trial(params: dict) -> None:
        context = ray.tune.get_context()
        trial_id = context.get_trial_id()
        variant = params.get("__variant__", params)
        overrides = {k: v for k, v in variant.items() if not k.startswith("__")}
        cfg = trial_config(base, overrides)
        tags = {"xalign.trial_id": trial_id, "xalign.sweep": sweep_name, "xalign.phase": phase}
        if "__control__" in variant or phase == "confirm":
            tags["xalign.variant"] = variant.get("__control__", "best")
        start = time.perf_counter()
        # The sweep built (and cached) the base config's data; a trial whose sampled keys
        # leave data, model and seed alone reads the same data and need not check it again.
        same_data = not any(k == "seed" or k.startswith(("data.", "model.")) for k in overrides)
        result = train(cfg, name=context.get_trial_name(), storage_path=storage, callbacks=[TuneReportCallback()],
                       parent_run_id=parent_run_id, tags=tags, storage_checked=True, data_checked=same_data,
                       final_eval=final_eval,
                       mlflow_name=trial_label(phase, experiment_tag(context.get_trial_dir(), context.get_trial_name()),
                                               variant))
        final = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and "/layer" not in k}
        ray.tune.report({**final, "trial_seconds": time.perf_counter() - start, "done_final": 1})

    return run_trial


def trial_number(experiment_tag: str, phase: str) -> int:
    """The trial's number in its phase, from Tune's experiment tag (``3_objective.temperature=...``:
    counted from 1 by the searcher of the search phase, from 0 by the confirmation's grid)."""
    head = str(experiment_tag).split("_", 1)[0]
    number = int(head) if head.isdigit() else 0
    return number + 1 if phase == "confirm" else number


def experiment_tag(trial_dir: str, trial_name: str) -> str:
    """Tune's experiment tag of a running trial, from its folder ``<name>_<tag>_<date>``."""
    folder = Path(trial_dir).name
    return folder[len(trial_name) + 1:] if folder.startswith(trial_name + "_") else ""


def short_keys(keys) -> dict[str, str]:
    """Dotted keys shortened to their last part where that stays unambiguous
    (``objective.temperature`` -> ``temperature``)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (tail if last.count(tail) == 1 else k) for k, tail in zip(keys, last)}


def show_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_label(phase: str, tag: str, variant: dict) -> str:
    """A trial's readable name (the MLflow run name, the progress notes): its number and
    the values it was given, e.g. ``3: temperature=0.0712 layer=-1`` or, confirming,
    ``confirm 2: no_contrastive seed=1``."""
    number = trial_number(tag, phase)
    values = {k: v for k, v in variant.items() if not k.startswith("__")}
    if phase == "confirm":
        return f"confirm {number}: {variant.get('__control__', 'best')} seed={values.get('seed', '-')}"
    names = short_keys(list(values))
    return f"{number}: " + " ".join(f"{names[k]}={show_value(v)}" for k, v in values.items())


class SweepProgress:
    """The sweep's progress on the console: trials done of all planned (search, then the
    confirmation runs), running and pending, failures, the best objective so far, elapsed
    and time left (from the pace of finished trials); and one line per finished trial.
    Tune calls it through ``ProgressCallback`` (Tune pickles its callbacks with the
    experiment's state; this one holds a terminal)."""

    def __init__(self, name: str, metrics: dict[str, str], total: int, log_path: Optional[Path]):
        self.metrics, self.first = metrics, next(iter(metrics))
        # smoothing 0: the average pace since the start. Trials finish in bursts (two at a time
        # here), and a moving average of the gaps between them gave "3.56 trial/s, 3 s left".
        self.bar = progress.bar(f"sweep {name}: starting", total=total, unit="trial", smoothing=0)
        self.log_path = log_path
        self.phase, self.phase_total, self.best, self.failed, self.finished = "search", total, None, 0, set()
        self.started: set[str] = set()

    def begin(self, phase: str, trials: int, total: int) -> None:
        self.phase, self.phase_total = phase, trials
        self.bar.set_description(self.bar.desc.rsplit(":", 1)[0] + f": {phase}")
        self.bar.set(total=total)

    def _show(self, trials) -> None:
        running = sum(t.status in ("RUNNING", "PENDING") and t.trial_id in self.started for t in trials)
        done_here = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        fields = {"running": running, "pending": max(0, self.phase_total - done_here - running)}
        if self.failed:
            fields["failed"] = self.failed
        if self.best is not None:
            fields[f"best {self.first}"] = round(self.best, 4)   # of the search (controls are not candidates)
        self.bar.set(len(self.finished), **fields)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.add(trial.trial_id)
        self._show(trials)

    def on_step_end(self, iteration, trials, **info):   # often: the plain lines keep their pace
        self._show(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.phase == "search" and result.get("done_final") and isinstance(result.get(self.first), (int, float)):
            value, sign = result[self.first], 1 if self.metrics[self.first] == "max" else -1
            if self.best is None or sign * value > sign * self.best:
                self.best = value
        self._show(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, trials, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, trials, failed=True)

    def _finish(self, trial, trials, *, failed: bool) -> None:
        key = (self.phase, trial.trial_id)
        if key in self.finished:
            return
        self.finished.add(key)
        self.failed += failed
        label = trial_label(self.phase, trial.experiment_tag, (trial.config or {}).get("__variant__", trial.config or {}))
        result = trial.last_result or {}
        if failed:
            where = f"{trial.path}/error.txt" if trial.path else "Tune's trial folder"
            text = f"trial {label}: FAILED (the error: {where}; Ray's output: {self.log_path})"
        elif not result.get("done_final"):
            text = f"trial {label}: stopped early at step {int(result.get('step', 0))} by the scheduler"
        else:
            shown = ", ".join(f"{m} {result[m]:.4f}" for m in self.metrics if isinstance(result.get(m), (int, float)))
            text = f"trial {label}: {shown} ({progress.fmt_seconds(result.get('trial_seconds', 0))})"
        self.bar.note(text)
        self._show(trials)

    def close(self) -> None:
        if self.bar.total and len(self.finished) < self.bar.total:   # no confirmation ran, or a stop
            self.bar.set(total=len(self.finished))
        self.bar.fields.update(running=0, pending=0)
        self.bar.close()


_shown: Optional[SweepProgress] = None   # the sweep this driver shows


class ProgressCallback(ray.tune.Callback):
    """Tune's events to the sweep's progress display; stateless, so Tune can pickle it."""

    def on_trial_start(self, iteration, trials, trial, **info):
        if _shown is not None:
            _shown.on_trial_start(iteration, trials, trial)

    def on_step_end(self, iteration, trials, **info):
        if _shown is not None:
            _shown.on_step_end(iteration, trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if _shown is not None:
            _shown.on_trial_result(iteration, trials, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if _shown is not None:
            _shown.on_trial_complete(iteration, trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        if _shown is not None:
            _shown.on_trial_error(iteration, trials, trial)


def optuna_search():
    """Ray's OptunaSearch, told the objectives only by each trial's final report: the
    periodic reports carry dev/ metrics, not the eval/ objectives, and OptunaSearch reads
    its metric from every intermediate result (a KeyError for a single objective)."""
    class FinalResultOptunaSearch(OptunaSearch):
        def on_trial_result(self, trial_id: str, result: dict) -> None:
            metrics = [self.metric] if isinstance(self.metric, str) else list(self.metric or [])
            if all(m in result for m in metrics):
                super().on_trial_result(trial_id, result)

    return FinalResultOptunaSearch


def concurrency(cfg: RunConfig, requested: Optional[int]) -> int:
    """Trials at once: what the cluster's CPUs and GPUs fit, each trial holding its workers'
    CPUs plus TRIAL_CPU for its Tune function (the Train controller holds none)."""
    fit = runs_that_fit(cfg, extra_cpu=TRIAL_CPU)
    if cfg.scaling.autoscale:   # nodes come on demand: what is up now says nothing
        return requested or fit
    return min(fit, requested) if requested else fit


def _open_parent(sweep: SweepConfig, name: str, sweep_file: Path, state_path: str) -> Optional[str]:
    if not sweep.tracking.enabled:
        return None
    if storage.exists(state_path):   # --resume: the same parent run, open again
        run_id = json.loads(storage.read_text(state_path))["parent_run_id"]
        if run_id is not None:
            tracking.reopen_run(sweep.tracking, run_id)
        return run_id
    space = {f"search.{k}": json.dumps(v.model_dump(exclude_none=True)) for k, v in sweep.search.items()}
    run_id = tracking.open_run(sweep.tracking, sweep, run_name=name, kind="sweep",
                               params={**space, **flatten(sweep.tune, "tune")}, tags={"xalign.sweep": name})
    tracking.log_text(sweep.tracking, run_id, sweep_file.read_text(encoding="utf-8"), f"sweep/{sweep_file.name}")
    return run_id


#: The headline metrics: the parent run carries them (the best config's, averaged over its
#: confirmation seeds), and the sweep's saved view in MLflow shows them as columns.
HEADLINE = ("eval/acc_non_pivot", "eval/acc_pivot", "eval/gap", "eval/acc", "align/retrieval/top1", "align/mexa")


def publish_view(sweep: SweepConfig, name: str) -> None:
    """The sweep's saved view in MLflow's runs table (its runs, the objectives, the headline
    metrics and the searched keys as columns) and the command that opens it, printed."""
    metrics = list(dict.fromkeys([*sweep.tune.metrics, *HEADLINE]))
    key = tracking.view_key(name)
    try:
        tracking.save_view(sweep.tracking, key, title=f"sweep {name}", search_filter=f"tags.`xalign.sweep` = '{name}'",
                           metrics=metrics, params=list(sweep.search))
        command, url = tracking.ui_link(sweep.tracking, view=key)
    except tracking.TrackingError as exc:   # the runs are logged all the same; only the view is missing
        progress.note(f"MLflow: the sweep's saved view could not be stored ({exc})")
        command, url = tracking.ui_link(sweep.tracking)
    progress.note(f"MLflow: {command + ', then open ' if command else ''}{url}")


def headline_metrics(result: SweepResult) -> dict[str, float]:
    """The best config's headline metrics: the mean over its confirmation runs (seeds), or
    the best search trial's when nothing was confirmed."""
    confirmed = [t for t in result.trials if t.phase == "confirm" and t.status == "TERMINATED"
                 and "__control__" not in t.params]
    runs = confirmed or ([result.best] if result.best is not None else [])
    out = {}
    for key in HEADLINE:
        values = [t.metrics[key] for t in runs if isinstance(t.metrics.get(key), (int, float))]
        if values:
            out[key] = sum(values) / len(values)
    return out


def _tuner(sweep: SweepConfig, trainable, *, phase: str, path: str, space: dict, searcher, num_samples: int,
           max_concurrent: int, resume: bool):
    cfg = sweep.run_config()
    trainable = ray.tune.with_resources(trainable, {"CPU": TRIAL_CPU})
    experiment = storage.join(path, phase)
    if resume and ray.tune.Tuner.can_restore(experiment):
        return ray.tune.Tuner.restore(experiment, trainable=trainable, resume_errored=False,
                                      restart_errored=False)
    scheduler = None
    if phase == "search" and sweep.tune.scheduler == "asha":
        metric, mode = sweep.tune.asha()
        # max_t one past the last step: ASHA stops every trial that reaches max_t, which at
        # max_steps would kill the survivors before their final test evaluation.
        scheduler = ray.tune.schedulers.ASHAScheduler(
            time_attr="step", metric=metric, mode=mode, max_t=cfg.optim.max_steps + 1,
            grace_period=min(sweep.tune.grace_period, cfg.optim.max_steps), reduction_factor=sweep.tune.reduction_factor)
    return ray.tune.Tuner(
        trainable, param_space=space,
        tune_config=ray.tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
                                        max_concurrent_trials=max_concurrent,
                                        time_budget_s=sweep.tune.time_budget_s if phase == "search" else None),
        run_config=ray.tune.RunConfig(name=phase, storage_path=path, failure_config=ray.tune.FailureConfig(0),
                                      callbacks=[ProgressCallback()]))


def _collect(results, phase: str) -> list[Trial]:
    trials = []
    for r in results:
        metrics = {k: v for k, v in (r.metrics or {}).items() if isinstance(v, (int, float))}
        params = (r.config or {}).get("__variant__", r.config or {})
        status = "ERROR" if r.error else ("TERMINATED" if metrics.get("done_final") else "STOPPED")
        trials.append(Trial(str((r.metrics or {}).get("trial_id", r.path.rsplit("/", 1)[-1])), phase, dict(params),
                            metrics, status, float(metrics.get("trial_seconds", 0.0))))
    return trials


def run_sweep(sweep: SweepConfig, *, sweep_file: Path, name: Optional[str] = None, resume: bool = False) -> SweepResult:
    """Search, then confirm; blocks until both phases end. Ray's output goes to
    ``ray_output.log`` in the sweep's folder (live with --verbose); the console shows the
    sweep's progress and one line per finished trial."""
    name = name or sweep.name
    log = console.log_path_for(storage.join(storage_root(sweep.run_config()), name), name)
    with console.ray_output(log, relayed=False) as output:
        return _run_sweep(sweep, sweep_file=sweep_file, name=name, resume=resume,
                          log_path=output.path if output is not None else None)


def _run_sweep(sweep: SweepConfig, *, sweep_file: Path, name: str, resume: bool, log_path: Optional[Path]) -> SweepResult:
    sweep = sweep.model_copy(update={"tracking": tracking.resolved(sweep.tracking)})  # one store for every process
    base_cfg = sweep.run_config()
    tracking.check_reachable(sweep.tracking)
    root = storage_root(base_cfg)
    storage.check_storage(root)             # writable from here, before anything is built
    check_ray_before_work()
    path = storage.join(root, name)   # a local folder or a URI (s3://, gs://)
    state_path = storage.join(path, STATE_FILE)
    if not resume and storage.exists(state_path):
        raise TrainingError(f"a sweep named {name!r} already exists at {path}; pass --resume to continue it, "
                            "or set name=<new name> to start another")
    world_dir = run_world(base_cfg)     # built once here, shared by every trial
    prepare_data(base_cfg, world_dir)       # a bad data source fails here, before any trial
    init_ray(base_cfg, headroom_cpus=1)   # room for the trial functions' CPU slivers
    console.attach()
    # Periodic reports carry dev/ metrics; the objectives (eval/...) come with each trial's
    # final report. The sweep file's metrics were checked against what trials report before
    # this point (xalign.config.sweep), so Tune's per-result check is not needed.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Tune saves its state (which trials exist) every >= 10 s by default; a driver killed in
    # that window loses the newest trials from it, and --resume samples new ones in their
    # place. On local or NFS storage the save is cheap: every second narrows the window.
    if not storage.is_uri(root):
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    max_concurrent = concurrency(base_cfg, sweep.tune.max_concurrent_trials)   # before anything is written
    storage.check_shared(root)        # every node can write it, and sees the same files
    parent = _open_parent(sweep, name, sweep_file, state_path)
    if parent is not None:
        publish_view(sweep, name)
    storage.write_text(state_path, json.dumps({"parent_run_id": parent, "name": name}) + "\n")
    try:
        return _run_phases(sweep, base_cfg, world_dir, name=name, path=path, parent=parent,
                           max_concurrent=max_concurrent, resume=resume, log_path=log_path)
    except BaseException as exc:    # SIGTERM (ray job stop), Ctrl-C, an error: no run left RUNNING
        if parent is not None and not isinstance(exc, Exception):
            _mark_stopped(sweep, parent, exc)
        raise


def _mark_stopped(sweep: SweepConfig, parent: str, exc: BaseException) -> None:
    """The sweep's runs still RUNNING end KILLED, tagged with how to go on. Best effort: the
    process is going (Ray sends SIGKILL seconds after SIGTERM)."""
    why = {"xalign.stopped": f"the sweep driver stopped ({type(exc).__name__}); "
                             "`xalign sweep FILE --name NAME --resume` continues it"}
    try:
        for phase in ("search", "confirm"):
            for run_id, _trial, status in tracking.child_runs(sweep.tracking, parent, phase):
                if status == "RUNNING":
                    tracking.set_tags(sweep.tracking, run_id, why)
                    tracking.end_run(sweep.tracking, run_id, status="KILLED")
        tracking.set_tags(sweep.tracking, parent, why)
        tracking.end_run(sweep.tracking, parent, status="KILLED")
    except Exception:  # noqa: BLE001  (the store may be what failed; the runs stay as they are)
        pass


def _run_phases(sweep: SweepConfig, base_cfg: RunConfig, world_dir, *, name: str, path: str, parent: Optional[str],
                max_concurrent: int, resume: bool, log_path: Optional[Path] = None) -> SweepResult:
    """The search phase, then the confirmation phase (with their progress shown); the
    parent run closed at the end."""
    global _shown
    confirming = sweep.confirm.runs()
    _shown = SweepProgress(name, dict(sweep.tune.metrics), sweep.tune.num_samples + confirming, log_path)
    try:
        return _phases(sweep, base_cfg, world_dir, name=name, path=path, parent=parent,
                       max_concurrent=max_concurrent, resume=resume)
    finally:
        _shown.close()
        _shown = None


def _phases(sweep: SweepConfig, base_cfg: RunConfig, world_dir, *, name: str, path: str, parent: Optional[str],
            max_concurrent: int, resume: bool) -> SweepResult:
    _shown.bar.set_description(f"sweep {name}: evaluating the starting model")
    optuna.logging.set_verbosity(optuna.logging.WARNING)   # "A new study created": Optuna's, not the user's news
    base_metrics = evaluate_base_model(base_cfg, world_dir, path, parent)
    # The starting model is the same for every trial: evaluated once above, not per trial.
    base = base_cfg.model_copy(update={"eval": base_cfg.eval.model_copy(update={"baseline": False})}).model_dump(
        mode="json")
    trials_path = storage.join(path, "trials")
    metrics = list(sweep.tune.metrics)
    modes = [sweep.tune.metrics[m] for m in metrics]
    sampler = (optuna.samplers.TPESampler(seed=sweep.tune.seed) if sweep.tune.searcher == "tpe"
               else optuna.samplers.RandomSampler(seed=sweep.tune.seed))
    searcher = optuna_search()(metric=metrics if len(metrics) > 1 else metrics[0],
                            mode=modes if len(modes) > 1 else modes[0], sampler=sampler)
    trainable = make_trainable(base, storage=trials_path, parent_run_id=parent, sweep_name=name, phase="search",
                               final_eval=sweep.tune.final_eval)
    tuner = _tuner(sweep, trainable, phase="search", path=path, space=tune_space(sweep.search), searcher=searcher,
                   num_samples=sweep.tune.num_samples, max_concurrent=max_concurrent, resume=resume)
    _shown.begin("search", sweep.tune.num_samples, _shown.bar.total)
    trials = _collect(tuner.fit(), "search")
    if parent is not None:
        _close_stopped(sweep, parent, trials)
        if resume:
            _close_orphans(sweep, parent, "search", trials)
    finished = [t for t in trials if all(m in t.metrics for m in metrics)]
    front = pareto_front(finished, sweep.tune.metrics)
    best = max(front, key=lambda t: tuple(t.metrics[m] * (1 if sweep.tune.metrics[m] == "max" else -1)
                                          for m in metrics)) if front else None
    if best is not None and sweep.confirm.seeds:
        variants = [{**best.params, "seed": seed} for seed in sweep.confirm.seeds]
        variants += [{**best.params, **over, "seed": seed, "__control__": cname}
                     for cname, over in sweep.confirm.controls.items() for seed in sweep.confirm.seeds_of_controls()]
        confirm = make_trainable(base, storage=trials_path, parent_run_id=parent, sweep_name=name, phase="confirm")
        tuner = _tuner(sweep, confirm, phase="confirm", path=path, space={"__variant__": ray.tune.grid_search(variants)},
                       searcher=None, num_samples=1, max_concurrent=max_concurrent, resume=resume)
        _shown.begin("confirm", len(variants), len(_shown.finished) + len(variants))
        confirmed = _collect(tuner.fit(), "confirm")
        if parent is not None and resume:
            _close_orphans(sweep, parent, "confirm", confirmed)
        for trial, variant in zip(confirmed, variants):
            trial.params = variant
        trials += confirmed
    result = SweepResult(name, trials, best, front, parent, str(path), base_metrics)
    if parent is not None:
        _close_parent(sweep, parent, result)
    return result


def _close_stopped(sweep: SweepConfig, parent: str, trials: list[Trial]) -> None:
    """A trial ASHA stopped had its Tune function killed mid-run, so its MLflow child run
    was never ended: end it KILLED, tagged with the step it reached."""
    for trial in trials:
        if trial.status != "STOPPED":
            continue
        run_id = tracking.find_run(sweep.tracking, {"xalign.trial_id": trial.trial_id, "mlflow.parentRunId": parent})
        if run_id is None:
            continue
        tracking.set_tags(sweep.tracking, run_id, {"xalign.stopped_by": sweep.tune.scheduler,
                                                   "xalign.stopped_at_step": str(int(trial.metrics.get("step", 0)))})
        tracking.end_run(sweep.tracking, run_id, status="KILLED")


def _close_orphans(sweep: SweepConfig, parent: str, phase: str, trials: list[Trial]) -> None:
    """Child runs of a resumed phase whose trial Tune does not know: the driver died after
    the trial started but before Tune saved its state, so --resume sampled another trial
    in its place. End them KILLED with the ``xalign.orphaned`` tag (kept, not deleted;
    `xalign report` leaves them out)."""
    known = {t.trial_id for t in trials}
    for run_id, trial_id, status in tracking.child_runs(sweep.tracking, parent, phase):
        if trial_id in known:
            continue
        tracking.set_tags(sweep.tracking, run_id, {
            "xalign.orphaned": "the sweep driver died before Ray Tune saved this trial; --resume ran another in "
                               "its place"})
        if status == "RUNNING":
            tracking.end_run(sweep.tracking, run_id, status="KILLED")


def compute_use(trials: list[Trial], max_steps: int) -> dict[str, float]:
    """What the search phase ran against running every trial to the end: optimizer steps
    (``steps_run`` of ``steps_full``), the share saved, and the trials stopped early (whose
    final test evaluation was skipped too)."""
    search = [t for t in trials if t.phase == "search" and t.status != "ERROR"]
    steps = [max_steps if t.status == "TERMINATED" else min(max_steps, int(t.metrics.get("step", 0))) for t in search]
    full = max_steps * len(search)
    return {"steps_run": float(sum(steps)), "steps_full": float(full),
            "compute_saved": 1.0 - sum(steps) / full if full else 0.0,
            "trials_stopped": float(sum(t.status == "STOPPED" for t in search))}


def evaluate_base_model(cfg: RunConfig, world_dir, path: str, parent: Optional[str]) -> dict[str, float]:
    """The starting model's test metrics (base/...), once per sweep, logged to the parent
    run; cached in the sweep's folder so a resumed sweep does not evaluate it again."""
    cache = storage.join(path, "base_metrics.json")
    if storage.exists(cache):
        return json.loads(storage.read_text(cache))
    plan = evaluation_plan(cfg, world_dir)
    if not plan["evaluate"]:
        return {}
    result = final_evaluation(cfg, None, world_dir, plan, run_id=parent, step=0,
                              out_dir=local_eval_dir(storage.join(path, "base")))
    storage.write_text(cache, json.dumps(result.metrics, sort_keys=True) + "\n")
    return result.metrics


def _close_parent(sweep: SweepConfig, parent: str, result: SweepResult) -> None:
    best = result.best
    if best is not None:
        best_config = trial_config(sweep.run_config().model_dump(mode="json"), best.params)
        tracking.set_tags(sweep.tracking, parent, {"xalign.best_trial_id": best.trial_id})
        # the best trial's numbers: its objectives (dev/, the only accuracies a search trial has
        # under tune.final_eval false), test evaluation and representation metrics
        tracking.log_results(sweep.tracking, parent, {f"best/{k}": v for k, v in best.metrics.items()
                                                      if k.startswith(("eval/", "base/", "align/", "eval_", "base_",
                                                                       "dev/"))}, ())
        tracking.log_text(sweep.tracking, parent, yaml.safe_dump(best_config.model_dump(mode="json"), sort_keys=False),
                          "best_config.yaml")
    use = compute_use(result.trials, sweep.run_config().optim.max_steps)
    tracking.log_results(sweep.tracking, parent, {**{f"sweep/{k}": v for k, v in use.items()},
                                                  **headline_metrics(result)}, ())
    tracking.log_text(sweep.tracking, parent, json.dumps([t.__dict__ for t in result.trials], indent=2, default=str),
                      "trials.json")
    attach_report(sweep, parent, result)
    tracking.end_run(sweep.tracking, parent, status="FINISHED")


def attach_report(sweep: SweepConfig, parent: str, result: SweepResult) -> None:
    """The sweep's summary table, its report (HTML page and plots) as artifacts of the
    parent run (``summary.txt``, ``report/``). A plot that cannot be drawn leaves a note,
    not a failed sweep: the runs and metrics are all logged already."""
    from xalign.paths import reports_dir
    from xalign.sweep.report import report, summary

    out_dir = Path(result.path) / "report" if not storage.is_uri(result.path) else reports_dir(result.name)
    try:
        report(sweep.tracking, result.name, out_dir=out_dir)
        table = out_dir / "comparison.txt"     # the per-language table with standard errors, for the summary
        result.comparison = table.read_text(encoding="utf-8").rstrip("\n") if table.is_file() else None
        files = sorted(p for p in out_dir.iterdir() if p.is_file() and p.suffix in (".html", ".png", ".yaml", ".txt"))
        tracking.log_results(sweep.tracking, parent, {}, files, artifact_dir="report")
        result.report_html = str(out_dir / "report.html")
    except Exception as exc:  # noqa: BLE001  (matplotlib, the store, a full disk: the sweep itself is done)
        progress.note(f"sweep {result.name}: the report could not be written to {out_dir}: {type(exc).__name__}: {exc}")
    try:
        tracking.log_text(sweep.tracking, parent, summary(result, sweep), "summary.txt")
    except Exception as exc:  # noqa: BLE001
        progress.note(f"sweep {result.name}: summary.txt could not be logged: {type(exc).__name__}: {exc}")
