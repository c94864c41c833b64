"""`xalign train`: one alignment run. Prepare the synthetic world and the data when the run
uses them (a bad input fails here, before any worker starts), open the MLflow run, launch
the Ray Train TorchTrainer (Train V2) on ``train_loop_per_worker``, evaluate the chosen
checkpoint, and turn the outcome into a result or a clear error."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import ray.train
from ray.train.torch import TorchTrainer

from xalign import storage, tracking
from xalign.config.schema import RunConfig
from xalign.data import build_alignment_data
from xalign.model import check_model, load_tokenizer, resolve_model_path
from xalign.model.checks import check_run_model
from xalign.model.freeze import check_freeze
from xalign.storage import check_shared, check_storage, join
from xalign.synthetic import run_world
from xalign.train import console
from xalign.train.cluster import TrainingError, check_ray_before_work, init_ray
from xalign.train.plan import check_memory
from xalign.train.final_eval import evaluation_plan, final_evaluation, local_eval_dir
from xalign.train.worker import NONFINITE_FILE, USER_ERROR_FILE, train_loop_per_worker


@dataclass
class TrainResult:
    steps: int
    metrics: dict
    checkpoint_path: Optional[str]
    run_path: str
    mlflow_run_id: Optional[str]
    evaluation: Optional[object] = None   # xalign.eval.evaluator.EvalResult of the final test evaluation


def prepare_data(cfg: RunConfig, world_dir: Optional[Path]) -> None:
    """Read, check and tokenise the run's data here, before any worker starts: a bad source
    (missing file or column, malformed lines, not UTF-8, a hub id offline, a language
    without a name) or model (no config, no weights, not a causal LM) fails now, not inside
    a Ray worker. The result goes to the data cache (``data.cache``), where workers on this
    machine (or sharing $XALIGN_HOME) find it instead of tokenising again."""
    check_model(cfg.model, world_dir)
    tokenizer = load_tokenizer(cfg.model, world_dir)
    check_run_model(cfg, world_dir, tokenizer)     # layer, pooler, padding side, vocabulary, dtype: first
    check_freeze(cfg.model, resolve_model_path(cfg.model, world_dir))
    check_memory(cfg, world_dir)   # the memory plan (printed), LoRA's module names
    build_alignment_data(cfg, tokenizer, world_dir)


def storage_root(cfg: RunConfig, storage_path: Optional[str] = None) -> str:
    """Where this run's checkpoints go: the given path, checkpoint.storage_path, or
    ~/ray_results; local paths made absolute."""
    return storage.resolve(storage_path or cfg.checkpoint.storage_path or "~/ray_results")


def run_name(cfg: RunConfig) -> str:
    return cfg.tracking.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def best_checkpoint(result):
    """The checkpoint with the highest dev accuracy (Ray keeps them ranked by it)."""
    scored = [(m.get("dev/acc"), c) for c, m in (result.best_checkpoints or []) if m.get("dev/acc") is not None]
    return max(scored, key=lambda pair: pair[0])[1] if scored else result.checkpoint


def failure_reason(exc: BaseException) -> str:
    """What went wrong, out of Ray's wrapper (which adds a traceback per worker): xalign's
    own error line when a worker raised one, else Ray's first two lines (e.g. "Training
    failed due to controller error: [Errno 28] ... No space left on device")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("xalign.")]
    if ours:
        return ours[-1]
    return " ".join(lines[:2]) if lines else type(exc).__name__


def raise_if_nonfinite(metrics: dict, checkpoint: Optional[str]) -> None:
    """The workers report a non-finite loss as metrics and stop (a retry would fail again);
    turn that into an error naming the step, the loss parts and the last good checkpoint."""
    if "train/nonfinite_step" not in metrics:
        return
    parts = {k.removeprefix("train/nonfinite_"): v for k, v in metrics.items()
             if k.startswith("train/nonfinite_") and k != "train/nonfinite_step"}
    shown = ", ".join(f"{k}={v:.6g}" for k, v in sorted(parts.items()))
    raise TrainingError(f"non-finite loss or gradient at step {int(metrics['train/nonfinite_step'])} ({shown}); "
                        f"last good checkpoint: {checkpoint or 'none'}. Lower optim.lr or check the data.")


def train(cfg: RunConfig, *, name: Optional[str] = None, storage_path: Optional[str] = None,
          callbacks: Sequence = (), parent_run_id: Optional[str] = None,
          tags: Optional[dict[str, str]] = None, storage_checked: bool = False,
          data_checked: bool = False, mlflow_name: Optional[str] = None, final_eval: bool = True) -> TrainResult:
    """One alignment run (see ``_train``), with Ray's output in the run's folder
    (``ray_output.log``; live with --verbose) and its progress on the console.
    ``mlflow_name``: the MLflow run's name when it differs from the Ray run's ``name``;
    ``final_eval`` False: no evaluation on eval.split after training (a sweep's search trial)."""
    name = name or run_name(cfg)
    log = console.log_path_for(join(storage_root(cfg, storage_path), name), name)
    with console.ray_output(log):
        return _train(cfg, name=name, storage_path=storage_path, callbacks=callbacks, parent_run_id=parent_run_id,
                      tags=tags, storage_checked=storage_checked, data_checked=data_checked,
                      mlflow_name=mlflow_name, final_eval=final_eval)


def _train(cfg: RunConfig, *, name: str, storage_path: Optional[str], callbacks: Sequence,
           parent_run_id: Optional[str], tags: Optional[dict[str, str]], storage_checked: bool,
           data_checked: bool, mlflow_name: Optional[str], final_eval: bool = True) -> TrainResult:
    """One alignment run on Ray Train; blocks until it ends. Inside a sweep trial, pass the
    Tune callback, the sweep's storage (checked once by the sweep), whether the sweep
    already built this trial's data (``data_checked``: no data, model or seed key was
    sampled), and the parent MLflow run (the child run is found again by its
    ``xalign.trial_id`` tag on resume, never duplicated)."""
    cfg = cfg.model_copy(update={"tracking": tracking.resolved(cfg.tracking)})   # one store for every process
    if cfg.tracking.enabled:
        tracking.check_reachable(cfg.tracking)
    storage_path = storage_root(cfg, storage_path)
    if not storage_checked:
        check_storage(storage_path)     # this machine can write there (before anything is built)
    check_ray_before_work()
    world_dir = run_world(cfg)
    if not data_checked:
        prepare_data(cfg, world_dir)
    init_ray(cfg)
    console.attach()                    # worker output to the log file, their progress to the console
    if not storage_checked:
        check_shared(storage_path)      # and so can every node, seeing the same files
    name = name or run_name(cfg)
    run_id = uri = None
    if cfg.tracking.enabled:
        uri = tracking.tracking_uri(cfg.tracking)
        run_id = tracking.open_run(cfg.tracking, cfg, run_name=mlflow_name or name, kind="train", tags=tags, parent_run_id=parent_run_id,
                                   reuse_tag="xalign.trial_id" if "xalign.trial_id" in (tags or {}) else None)
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    plan = evaluation_plan(cfg, world_dir)
    select = plan["evaluate"] and cfg.eval.select_best and cfg.eval.dev_tasks
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": cfg.model_dump(mode="json"), "world_dir": str(world_dir) if world_dir else None,
                           "mlflow_run_id": run_id, "mlflow_uri": uri, "storage_path": join(storage_path, name), **plan},
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=list(callbacks),
            # With evaluation on, checkpoints are ranked by dev accuracy (never test), so the
            # best one survives `keep`.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.checkpoint.keep, checkpoint_score_attribute="dev/acc" if select else None,
                checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.checkpoint.max_failures),
        ),
    )
    status = "FAILED"
    storage.delete(storage.join(storage_path, name, NONFINITE_FILE))   # from an earlier run of this name
    storage.delete(storage.join(storage_path, name, USER_ERROR_FILE))
    try:
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as exc:
            reason = failure_reason(exc)
            if "Errno" in reason and "could not write the checkpoint" not in reason:
                reason += (f" (while writing to {join(storage_path, name)}; checkpoints already written there are "
                           "kept, and a new run with the same name resumes from the latest)")
            raise TrainingError(f"training failed ({cfg.checkpoint.max_failures} restart(s) allowed): {reason}") from exc
        user_error = storage.join(storage_path, name, USER_ERROR_FILE)
        if storage.exists(user_error):   # a worker refused the input: Ray was not asked to retry it
            raise TrainingError(json.loads(storage.read_text(user_error))["message"])
        metrics = dict(result.metrics or {})
        checkpoint = result.checkpoint.path if result.checkpoint else None
        if run_id is not None and result.checkpoint is not None:
            # Step metrics the store did not take while it was down (kept in the last checkpoint).
            with result.checkpoint.as_directory() as directory:
                tracking.send_unsent(cfg.tracking, run_id, Path(directory), where=checkpoint)
        stopped = storage.join(storage_path, name, NONFINITE_FILE)
        if storage.exists(stopped):
            metrics.update(json.loads(storage.read_text(stopped)))
        raise_if_nonfinite(metrics, checkpoint)
        evaluation = None
        if plan["evaluate"] and final_eval and result.checkpoint is not None:
            chosen = best_checkpoint(result) if select else result.checkpoint
            evaluation = final_evaluation(cfg, chosen.path, world_dir, plan, run_id=run_id,
                                          step=int(metrics.get("step", 0)), out_dir=local_eval_dir(result.path))
            metrics.update(evaluation.metrics)
        status = "FINISHED"
        return TrainResult(int(metrics.get("step", 0)), metrics, checkpoint, result.path, run_id, evaluation)
    except BaseException as exc:
        if run_id is not None:  # the run says why it failed, in MLflow too
            tracking.set_tags(cfg.tracking, run_id, {"xalign.error": f"{type(exc).__name__}: {exc}"[:5000]})
        raise
    finally:
        if run_id is not None:
            tracking.end_run(cfg.tracking, run_id, status=status)
