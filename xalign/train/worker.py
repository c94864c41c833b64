"""The Ray Train worker function: set up the run (``xalign.train.setup``), restore the last
checkpoint, open the metric logger, then a loop of "step; if due: report, evaluate or save".
The only module that calls ray.train on workers."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import tempfile
import time
from pathlib import Path
from typing import Optional

import ray
import ray.train
import ray.train.torch
import torch

from xalign import progress, storage
from xalign.config.schema import RunConfig
from xalign.errors import XalignError
from xalign.data import mix_metrics
from xalign.optim import Dist, NonFiniteLossError
from xalign.tracking import BackgroundMetricLogger, TrackingError, read_unsent, set_tags
from xalign.train.setup import Run, derived_quantities, setup_evaluation, setup_run, step_batches
from xalign.train.sharding import is_sharded

# Ray Train routes worker logging to the driver's console (a plain print would show twice).
log = logging.getLogger("xalign.train")

#: Metric names of the MLflow contract (design.md) for the loss parts of alignment_loss.
METRIC_NAMES = {"loss": "train/loss", "contrastive": "train/loss_contrastive", "lm": "train/loss_lm"}
NONFINITE_FILE = "nonfinite.json"   # in the run's storage folder: the step and loss parts of a NaN stop
USER_ERROR_FILE = "user_error.json"  # in the run's storage folder: an input a worker refused (never retried)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the previous one is untouched."""


def train_loop_per_worker(config: dict) -> None:
    cfg = RunConfig.model_validate(config["run"])
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))  # one thread per CPU the worker holds
    refused = None
    try:
        run = setup_run(cfg, config.get("world_dir"), Dist.current(), ray.train.torch.get_device())
        start, unsent = restore(run, config)
        logger = open_logger(run, config, start, unsent)
        evaluator = setup_evaluation(config, run)
    except XalignError as exc:
        refused = exc
    if any_rank(refused is not None):      # every rank stops together (none waits in a collective)
        if refused is not None:
            stop_on_user_error(refused, config)
        return
    window, last_saved, stop = Window(), start, cfg.optim.max_steps
    shown = training_progress(run, config, start, stop)
    for step, micro in zip(range(start, stop), step_batches(run, start, stop)):
        try:
            window.add(run.step(step, micro))
        except NonFiniteLossError as exc:
            stop_on_nonfinite(exc, run, config, logger)
            return
        shown.step(window.metrics[-1])
        done = step + 1
        save, dev_eval, log_now = due(cfg, done, evaluate=config.get("evaluate", False))
        if not (save or dev_eval or log_now):
            continue
        report = {**window.summary(run), "step": done, "resumed_from_step": start}
        if dev_eval and evaluator is not None:
            report.update(evaluator(run.model))   # on DEV (selection never looks at test)
        window.restart()   # the next window leaves out the evaluation and the checkpoint
        if logger is not None:
            logger.log(report, step=done)
        if save:
            with window.paused():
                write_checkpoint(run, report, step=done, last_saved=last_saved, logger=logger,
                                 where=config.get("storage_path", "storage"))
            last_saved = done
        elif dev_eval:
            # Ray hears of evaluations (Tune and ASHA read them) and checkpoints only: a report
            # waits until Ray Train's controller has taken the previous one, and it polls every
            # 2 s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), which stalled short steps 5x when every
            # logging window reported. The windows go to MLflow, from rank 0, above.
            ray.train.report(report)


class training_progress:
    """Rank 0's progress (step of max_steps, losses, tokens/s, time left), relayed to the
    driver's console by xalign.progress; nothing on other ranks."""

    def __init__(self, run: Run, config: dict, start: int, stop: int):
        name = Path(str(config.get("storage_path") or "run")).name
        self.bar = progress.bar(f"train {name}", total=stop, unit="step", initial=start, relay=run.dist.rank == 0)
        self.began, self.tokens, self.smooth = time.perf_counter(), 0, {}

    def step(self, metrics: dict) -> None:
        self.tokens += metrics.get("tokens", 0)
        for key in ("loss", "lm", "contrastive"):
            if key in metrics:   # a running mean over ~20 steps: a single step's loss jumps
                old = self.smooth.get(key)
                self.smooth[key] = metrics[key] if old is None else 0.9 * old + 0.1 * metrics[key]
        shown = {{"loss": "loss", "lm": "lm", "contrastive": "ctr"}[k]: v for k, v in self.smooth.items()}
        self.bar.update(1, **shown, tok_s=self.tokens / max(time.perf_counter() - self.began, 1e-9))
        if self.bar.n >= (self.bar.total or 0):
            self.bar.close()


def due(cfg: RunConfig, done: int, *, evaluate: bool) -> tuple[bool, bool, bool]:
    """(save a checkpoint, run a dev evaluation, log the window) after step ``done``."""
    save = done == cfg.optim.max_steps or bool(cfg.checkpoint.every_n_steps and done % cfg.checkpoint.every_n_steps == 0)
    dev_eval = evaluate and (save or bool(cfg.eval.every_n_steps and done % cfg.eval.every_n_steps == 0))
    return save, dev_eval, done % cfg.tracking.log_every_n_steps == 0


def restore(run: Run, config: dict) -> tuple[int, list]:
    """(the step to start from, the metrics the tracking store had not taken when the
    checkpoint was saved) from Ray's latest checkpoint; (0, []) on a fresh start."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as directory:
        start = run.restore(Path(directory))
        unsent = read_unsent(Path(directory)) if run.dist.rank == 0 and config.get("mlflow_run_id") else []
    return start, unsent


def open_logger(run: Run, config: dict, start: int, unsent: list) -> Optional[BackgroundMetricLogger]:
    """On rank 0: print the run's derived quantities, and with tracking on open the MLflow
    metric logger (the unsent metrics queued first, the realised data mix logged, the run
    tagged with its node). None elsewhere."""
    if run.dist.rank != 0:
        return None
    for line in derived_quantities(run):
        log.info("[xalign] %s", line)
    if start:
        log.info("[xalign] resuming from the checkpoint at step %d", start)
    if not config.get("mlflow_run_id"):
        return None
    logger = BackgroundMetricLogger(config["mlflow_uri"], config["mlflow_run_id"])
    logger.pending[:0] = unsent
    logger.log(mix_metrics(run.data.stats), step=start)   # the realised data mix
    tag_node(run.cfg, config["mlflow_run_id"])   # which Ray node ran this (trial's) run
    return logger


def tag_node(cfg: RunConfig, run_id: str) -> None:
    """Tag the MLflow run with the Ray node rank 0 runs on (``xalign.node_id``,
    ``xalign.node_ip``). Informational: a store still down after the retry window is
    logged, not raised, as step metrics are (training goes on)."""
    tags = {"xalign.node_id": ray.get_runtime_context().get_node_id(), "xalign.node_ip": ray.util.get_node_ip_address()}
    try:
        set_tags(cfg.tracking, run_id, tags)
    except TrackingError as exc:
        log.warning("[xalign] could not tag the run with its node: %s", exc)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (a MAX all-reduce; just ``flag`` without a group)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return flag
    value = torch.tensor([int(flag)], device=ray.train.torch.get_device())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def stop_on_user_error(exc: XalignError, config: dict) -> None:
    """An input the worker cannot use (a model, a layer, a data file: an ``XalignError``)
    fails the same way on every restart, so it must not spend Ray's restarts (meant for
    faults): every rank meets it in setup, writes it to the run's storage and returns; the
    driver raises it as one line. The driver's own checks catch these before Ray starts;
    this is for what only a worker can see (e.g. a node missing a file)."""
    log.error("[xalign] %s", exc)
    if config.get("storage_path"):
        storage.write_text(storage.join(config["storage_path"], USER_ERROR_FILE),
                           json.dumps({"message": f"{exc}", "type": type(exc).__name__}))


def stop_on_nonfinite(exc: NonFiniteLossError, run: Run, config: dict,
                      logger: Optional[BackgroundMetricLogger]) -> None:
    """Every rank sees the same reduced loss, so all stop here together. Returning (not
    raising) keeps Ray from retrying a deterministic failure; the driver reports it from
    the file rank 0 leaves in the run's storage (Ray's result carries the metrics of the
    last checkpoint, not of the last report)."""
    report = {"train/nonfinite_step": exc.step, **{f"train/nonfinite_{k}": v for k, v in exc.parts.items()}}
    if run.dist.rank == 0 and config.get("storage_path"):
        storage.write_text(storage.join(config["storage_path"], NONFINITE_FILE), json.dumps(report))
    if logger is not None:
        logger.send_now()         # the windows before the stop, queued for the store
    ray.train.report(report)


def write_checkpoint(run: Run, report: dict, *, step: int, last_saved: int,
                     logger: Optional[BackgroundMetricLogger], where: str) -> None:
    """Report ``report`` to Ray with the checkpoint of ``step`` (written by rank 0, with the
    metrics the store has not taken yet). A write that fails (disk full, storage
    unwritable, credentials gone) is a CheckpointWriteError naming the intact previous one."""
    name = f"step_{step:07d}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run.save(Path(tmp), step=step)   # every rank: fsdp writes one shard per rank
            if run.dist.rank == 0 and logger is not None:
                logger.save_unsent(Path(tmp))   # sent later (resume, or the driver at the end)
            sharded = is_sharded(run.model)
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp)
                             if run.dist.rank == 0 or sharded else None, checkpoint_dir_name=name)
    except OSError as exc:
        previous = f"step {last_saved}" if last_saved else "none yet"
        raise CheckpointWriteError(
            f"could not write the checkpoint of step {step} ({name}) to {where}: {type(exc).__name__}: {exc}. The "
            f"previous checkpoint ({previous}) is intact; free space or fix checkpoint.storage_path, and a restart "
            "resumes from it") from exc


class Window:
    """The steps since the last report: their metrics, and the wall clock they took (which
    leaves out evaluations and checkpoints, timed on their own, but counts reporting and
    logging, which a plain loop would not do)."""

    def __init__(self):
        self.metrics: list[dict] = []
        self.start = time.perf_counter()

    def add(self, metrics: dict) -> None:
        self.metrics.append(metrics)

    def summary(self, run: Run) -> dict[str, float]:
        out = summarise(self.metrics, run.temperature)
        out["train/wall_tokens_per_s"] = (sum(m["tokens"] for m in self.metrics)
                                          / max(time.perf_counter() - self.start, 1e-9))
        out["train/peak_memory_mb"] = peak_memory_mb(run.device)
        return out

    def restart(self) -> None:
        self.metrics, self.start = [], time.perf_counter()

    @contextlib.contextmanager
    def paused(self):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - began


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this worker so far: the GPU's allocated tensors, or on CPU the
    process's peak resident set (model, optimizer, activations, and the Python runtime)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def summarise(window: list[dict], temperature: Optional[torch.nn.Module] = None) -> dict[str, float]:
    """Mean of the loss parts over the reporting window, tokens/s over its step time, and
    the learned temperature when there is one."""
    out: dict[str, float] = {}
    for key, name in METRIC_NAMES.items():
        values = [m[key] for m in window if key in m]
        if values:
            out[name] = sum(values) / len(values)
    seconds = sum(m["seconds"] for m in window)
    out["train/tokens_per_s"] = sum(m["tokens"] for m in window) / seconds if seconds > 0 else math.nan
    out["train/lr"] = window[-1]["lr"]
    out["train/grad_norm"] = window[-1]["grad_norm"]
    if temperature is not None:
        out["train/temperature"] = float(temperature())
    return out
