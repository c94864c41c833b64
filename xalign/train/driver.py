"""The driver of one alignment run: prepare the synthetic world when the run uses it, open
the MLflow run, launch the Ray Train TorchTrainer (Train V2), and turn its outcome into a
result or a clear error."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from xalign.config import flatten
from xalign.config.schema import WORLD_MODEL, RunConfig


class TrainingError(RuntimeError):
    """A run that could not finish, with what to look at."""


@dataclass
class TrainResult:
    steps: int
    metrics: dict
    checkpoint_path: Optional[str]
    run_path: str
    mlflow_run_id: Optional[str]


def uses_world(cfg: RunConfig) -> bool:
    """The world is needed for its base model, or for data: its instructions when none are
    configured (pairs come from configured pairs, else from the instructions)."""
    return cfg.model.name_or_path == WORLD_MODEL or cfg.data.instructions is None


def prepare_world(cfg: RunConfig) -> Optional[Path]:
    """Build (or reuse from the cache) the synthetic world the run reads, with its base
    model when the run starts from it."""
    if not uses_world(cfg):
        return None
    from xalign.synthetic import build_world
    from xalign.train.pretrain import BASE_MODEL_STAGE

    stages = [BASE_MODEL_STAGE] if cfg.model.name_or_path == WORLD_MODEL else []
    return build_world(cfg.data.world, extra_stages=stages).path


def init_ray(cfg: RunConfig) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local Ray instance; on a local instance,
    refuse a run that asks for more CPUs than there are (it would wait forever)."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        # The dashboard (loopback only) serves the state API that Ray Train's monitor polls.
        ray.init(address=address or "local", dashboard_host="127.0.0.1")
    s = cfg.scaling
    need_cpu = s.num_workers * s.cpus_per_worker
    have_cpu = ray.cluster_resources().get("CPU", 0)
    if not os.environ.get("RAY_ADDRESS") and need_cpu > have_cpu:
        raise TrainingError(
            f"scaling asks for {s.num_workers} workers x {s.cpus_per_worker} CPUs = {need_cpu:g} CPUs but this "
            f"Ray instance has {have_cpu:g}; lower scaling.num_workers or scaling.cpus_per_worker")
    need_gpu = s.num_workers * s.gpus_per_worker
    have_gpu = ray.cluster_resources().get("GPU", 0)
    if not os.environ.get("RAY_ADDRESS") and need_gpu > have_gpu:
        raise TrainingError(f"scaling asks for {need_gpu:g} GPUs but this Ray instance has {have_gpu:g}")


def run_name(cfg: RunConfig) -> str:
    return cfg.tracking.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def raise_if_nonfinite(metrics: dict, checkpoint: Optional[str]) -> None:
    """The workers report a non-finite loss as metrics and stop (a retry would fail again);
    turn that into an error naming the step, the loss parts and the last good checkpoint."""
    if "train/nonfinite_step" not in metrics:
        return
    parts = {k.removeprefix("train/nonfinite_"): v for k, v in metrics.items()
             if k.startswith("train/nonfinite_") and k != "train/nonfinite_step"}
    shown = ", ".join(f"{k}={v:.6g}" for k, v in sorted(parts.items()))
    raise TrainingError(f"non-finite loss at step {int(metrics['train/nonfinite_step'])} ({shown}); "
                        f"last good checkpoint: {checkpoint or 'none'}. Lower optim.lr or check the data.")


def train(cfg: RunConfig, *, name: Optional[str] = None) -> TrainResult:
    """One alignment run on Ray Train; blocks until it ends."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from xalign import tracking
    from xalign.train.worker import train_loop_per_worker

    world_dir = prepare_world(cfg)
    init_ray(cfg)
    name = name or run_name(cfg)
    run_id = uri = None
    if cfg.tracking.enabled:
        uri = tracking.tracking_uri(cfg.tracking)
        run_id = tracking.start_run(cfg.tracking, run_name=name, params=flatten(cfg),
                                    config_yaml=yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
                                    tags={"xalign.kind": "train"})
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": cfg.model_dump(mode="json"), "world_dir": str(world_dir) if world_dir else None,
                           "mlflow_run_id": run_id, "mlflow_uri": uri},
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=cfg.checkpoint.storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            failure_config=ray.train.FailureConfig(max_failures=cfg.checkpoint.max_failures),
        ),
    )
    status = "FAILED"
    try:
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as exc:
            raise TrainingError(f"training failed after {cfg.checkpoint.max_failures} restart(s): {exc}") from exc
        metrics = dict(result.metrics or {})
        checkpoint = result.checkpoint.path if result.checkpoint else None
        raise_if_nonfinite(metrics, checkpoint)
        status = "FINISHED"
        return TrainResult(int(metrics.get("step", 0)), metrics, checkpoint, result.path, run_id)
    finally:
        if run_id is not None:
            tracking.end_run(cfg.tracking, run_id, status=status)
