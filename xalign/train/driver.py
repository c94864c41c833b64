"""The driver of one alignment run: prepare the synthetic world when the run uses it, open
the MLflow run, launch the Ray Train TorchTrainer (Train V2), and turn its outcome into a
result or a clear error."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import yaml

from xalign.config import flatten
from xalign.config.schema import WORLD_MODEL, RunConfig
from xalign.errors import XalignError


class TrainingError(XalignError, RuntimeError):
    """A run that could not finish, with what to look at."""


@dataclass
class TrainResult:
    steps: int
    metrics: dict
    checkpoint_path: Optional[str]
    run_path: str
    mlflow_run_id: Optional[str]
    evaluation: Optional[object] = None   # xalign.eval.evaluator.EvalResult of the final test evaluation


def uses_world(cfg: RunConfig) -> bool:
    """The world is needed for its base model, or for data: its instructions when none are
    configured (pairs come from configured pairs, else from the instructions)."""
    return cfg.model.name_or_path == WORLD_MODEL or cfg.data.instructions is None


def prepare_world(cfg: RunConfig) -> Optional[Path]:
    """Build (or reuse from the cache) the synthetic world the run reads, with its base
    model when the run starts from it."""
    if not uses_world(cfg):
        return None
    from xalign.synthetic import ensure_world

    return ensure_world(cfg.data.world, with_model=cfg.model.name_or_path == WORLD_MODEL)


def prepare_data(cfg: RunConfig, world_dir: Optional[Path]) -> None:
    """Read, check and tokenise the run's data here, before any worker starts: a bad source
    (missing file or column, malformed lines, not UTF-8, a hub id offline, a language
    without a name) or model (no config, no weights, not a causal LM) fails now, not inside
    a Ray worker. The result goes to the data cache (``data.cache``), where workers on this
    machine (or sharing $XALIGN_HOME) find it instead of tokenising again."""
    from xalign.data import build_alignment_data
    from xalign.model import check_model, load_tokenizer

    check_model(cfg.model, world_dir)
    build_alignment_data(cfg, load_tokenizer(cfg.model, world_dir), world_dir)


def init_ray(cfg: RunConfig, *, headroom_cpus: int = 0) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local Ray instance; refuse a run that asks
    for more CPUs or GPUs than the cluster has (it would wait forever), unless
    ``scaling.autoscale`` says nodes will be added. ``headroom_cpus`` adds logical CPUs to a
    local instance for actors that hold a sliver of CPU but do no work (a sweep's trial
    functions)."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            check_ray_address(address)
        gcs_port = None if address else _free_port()
        try:
            # The dashboard (loopback only) serves the state API that Ray Train's monitor polls.
            with _env(RAY_GCS_SERVER_PORT=str(gcs_port) if gcs_port else None):
                ray.init(address=address or "local", dashboard_host="127.0.0.1",
                         num_cpus=None if address else (os.cpu_count() or 1) + headroom_cpus,
                         runtime_env=_cluster_address_env(address or f"127.0.0.1:{gcs_port}"))
        except ConnectionError as exc:
            raise TrainingError(f"RAY_ADDRESS={address}: cannot join the Ray cluster there: {exc}. Check that the "
                                "cluster is up (`ray status`) or unset RAY_ADDRESS to run on this machine") from exc
    s = cfg.scaling
    if s.autoscale:
        return
    have = ray.cluster_resources()
    where = f"the Ray cluster at {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS") else "this Ray instance"
    need_cpu = s.num_workers * s.cpus_per_worker
    if need_cpu > have.get("CPU", 0):
        raise TrainingError(
            f"scaling asks for {s.num_workers} workers x {s.cpus_per_worker:g} CPUs = {need_cpu:g} CPUs but {where} "
            f"has {have.get('CPU', 0):g}; lower scaling.num_workers or scaling.cpus_per_worker, or set "
            "scaling.autoscale=true if the cluster adds nodes on demand")
    need_gpu = s.num_workers * s.gpus_per_worker
    if need_gpu > have.get("GPU", 0):
        raise TrainingError(
            f"scaling asks for {s.num_workers} workers x {s.gpus_per_worker:g} GPUs = {need_gpu:g} GPUs but {where} "
            f"has {have.get('GPU', 0):g}; lower scaling.num_workers or scaling.gpus_per_worker, or set "
            "scaling.autoscale=true if the cluster adds GPU nodes on demand")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _env(**values: Optional[str]):
    """Environment variables set for the duration (None: left alone)."""
    old = {k: os.environ.get(k) for k, v in values.items() if v is not None}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cluster_address_env(address: str) -> Optional[dict]:
    """The job's runtime environment: RAY_ADDRESS = this cluster, in every worker. Ray
    Train's placement-group cleaner (which frees a trial's workers' CPUs and GPUs when ASHA
    or `ray job stop` ends the trial) finds its cluster through the state API; without
    RAY_ADDRESS it looks for Ray instances on the machine and gives up when there are
    several (another local instance, or `ray start` nodes next to a laptop run), and the
    leaked reservation then starves the next trials. None where the job's own runtime
    environment (ray job submit) already names RAY_ADDRESS, or the address is not host:port."""
    if address in ("auto", "local") or "://" in address:
        return None
    if "RAY_ADDRESS" in os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", ""):
        return None
    return {"env_vars": {"RAY_ADDRESS": address}}


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """A clear error, in seconds rather than after Ray's minute of retries, when nothing
    answers at RAY_ADDRESS (host:port of the cluster's GCS, as `ray start --head` prints)."""
    import socket

    if address in ("auto", "local") or address.startswith("ray://"):
        return
    if address.startswith(("http://", "https://")):
        raise TrainingError(f"RAY_ADDRESS={address} is a dashboard (job submission) address; the driver needs the "
                            "cluster's GCS address host:port (`ray start --head` prints it, default port 6379). "
                            "Use the http:// address with `ray job submit --address` instead")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TrainingError(f"RAY_ADDRESS={address} is not host:port (e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise TrainingError(f"RAY_ADDRESS={address}: no Ray cluster answers there ({exc.strerror or exc}). Start "
                            "one with `ray start --head`, fix the address, or unset RAY_ADDRESS to run on this "
                            "machine") from exc


def ray_is_initialized() -> bool:
    import ray

    return ray.is_initialized()


def storage_root(cfg: RunConfig, storage_path: Optional[str] = None) -> str:
    """Where this run's checkpoints go: the given path, checkpoint.storage_path, or
    ~/ray_results; local paths made absolute."""
    from xalign import storage

    return storage.resolve(storage_path or cfg.checkpoint.storage_path or "~/ray_results")


def run_name(cfg: RunConfig) -> str:
    return cfg.tracking.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def evaluation_plan(cfg: RunConfig, world_dir: Optional[Path]) -> dict:
    """What the workers and the final evaluation need to know: whether to evaluate, the
    pivot, and the world whose tasks are evaluated (None = real tasks)."""
    from xalign.eval.run import evaluates_world

    if not cfg.eval.tasks:
        return {"evaluate": False}
    eval_world = world_dir if world_dir is not None and evaluates_world(cfg) else None
    if eval_world is not None:
        from xalign.synthetic import load_manifest

        pivot = load_manifest(Path(eval_world) / "manifest.json")["pivot"]
    else:
        pivot = cfg.data.pivot or "en"
    return {"evaluate": True, "pivot": pivot, "eval_world_dir": str(eval_world) if eval_world else None}


def local_eval_dir(run_path: str) -> Path:
    """Records and plots go next to the checkpoints when storage is local; for s3:// or
    gs:// storage they go to a local temp folder (and to MLflow as artifacts)."""
    if "://" in run_path:
        import tempfile

        return Path(tempfile.mkdtemp(prefix="xalign-eval-"))
    return Path(run_path) / "eval"


def best_checkpoint(result):
    """The checkpoint with the highest dev accuracy (Ray keeps them ranked by it)."""
    scored = [(m.get("dev/acc"), c) for c, m in (result.best_checkpoints or []) if m.get("dev/acc") is not None]
    return max(scored, key=lambda pair: pair[0])[1] if scored else result.checkpoint


def final_evaluation(cfg: RunConfig, checkpoint_path: Optional[str], world_dir: Optional[Path], plan: dict, *,
                     run_id: Optional[str], step: int, out_dir: Path):
    """Evaluate the chosen checkpoint on ``eval.split`` (test by default) and, with
    ``eval.baseline``, the starting model too ("base/..." metrics: the gap before
    alignment); log both to the run. ``checkpoint_path`` None evaluates the starting model
    only. Runs as a Ray task with one worker's resources; with several workers
    (``scaling.num_workers``), as many tasks first score a share of the items each, and
    the last task computes the metrics, records and plots from their scores."""
    import ray

    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from xalign.eval.evaluator import merge_shards

    s = cfg.scaling
    # Outside any placement group: inside a sweep trial, tasks would otherwise be captured by
    # the trial's own (CPU-sliver) placement group and never fit.
    options = dict(num_cpus=s.cpus_per_worker, num_gpus=s.gpus_per_worker if s.use_gpu else 0,
                   scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
    args = (cfg.model_dump(mode="json"), checkpoint_path, str(world_dir) if world_dir else None, plan)
    shards, scores = s.num_workers, None
    if shards > 1:
        shard_task = ray.remote(_score_checkpoint_shard).options(**options)
        parts = ray.get([shard_task.remote(*args, (i, shards)) for i in range(shards)])
        scores = {prefix: merge_shards([part[prefix] for part in parts]) for prefix in parts[0]}
    task = ray.remote(_evaluate_checkpoint).options(**options)
    return ray.get(task.remote(*args, run_id, step, str(out_dir), scores))


@contextlib.contextmanager
def _models_to_evaluate(cfg: RunConfig, checkpoint_path: Optional[str], world: Optional[Path]):
    """[(metric prefix, model config, world)]: the trained checkpoint ("eval"), and the
    starting model ("base") with eval.baseline or when there is no checkpoint."""
    import ray.train

    with contextlib.ExitStack() as stack:
        entries = [("base", cfg.model, world)] if cfg.eval.baseline or checkpoint_path is None else []
        if checkpoint_path is not None:
            directory = stack.enter_context(ray.train.Checkpoint(checkpoint_path).as_directory())
            trained = cfg.model.model_copy(update={"name_or_path": str(Path(directory) / "model"), "tokenizer": None})
            entries.insert(0, ("eval", trained, None))
        yield entries


def _eval_setup(cfg: RunConfig, plan: dict, model_cfg, model_world):
    from xalign.eval.evaluator import Target, plan_items
    from xalign.model import load_model, load_tokenizer, num_blocks
    from xalign.pooling import resolve_layers

    eval_world = Path(plan["eval_world_dir"]) if plan.get("eval_world_dir") else None
    tokenizer, model = load_tokenizer(model_cfg, model_world), load_model(model_cfg, model_world)
    target = Target(pivot=plan["pivot"], languages=cfg.eval.languages, world_dir=eval_world,
                    layer=max(resolve_layers(cfg.objective.layer, num_blocks(model))), pooler=cfg.objective.pooler)
    eval_cfg = cfg.eval.model_copy(update={"max_items": None})
    return model, tokenizer, target, eval_cfg, plan_items(eval_cfg, target)


def _score_checkpoint_shard(cfg_data: dict, checkpoint_path: Optional[str], world_dir: Optional[str], plan: dict,
                            shard: tuple[int, int]) -> dict:
    """{metric prefix: scores of part ``shard`` of the items} for each model evaluated."""
    from xalign.eval.evaluator import score_shard

    cfg = RunConfig.model_validate(cfg_data)
    out = {}
    with _models_to_evaluate(cfg, checkpoint_path, Path(world_dir) if world_dir else None) as entries:
        for prefix, model_cfg, model_world in entries:
            model, tokenizer, _target, eval_cfg, items = _eval_setup(cfg, plan, model_cfg, model_world)
            out[prefix] = score_shard(model, tokenizer, items, batch_size=eval_cfg.batch_size, shard=shard)
    return out


def _evaluate_checkpoint(cfg_data: dict, checkpoint_path: Optional[str], world_dir: Optional[str], plan: dict,
                         run_id: Optional[str], step: int, out_dir: str, scores: Optional[dict] = None):
    """Metrics, records and plots of each model evaluated; ``scores`` ({prefix: scores}),
    when the items were scored in shards already."""
    from xalign import tracking
    from xalign.eval.evaluator import EvalResult, evaluate

    cfg = RunConfig.model_validate(cfg_data)
    merged: dict = {}
    files: list = []
    tables: list[str] = []
    with _models_to_evaluate(cfg, checkpoint_path, Path(world_dir) if world_dir else None) as entries:
        for prefix, model_cfg, model_world in entries:
            model, tokenizer, target, eval_cfg, items = _eval_setup(cfg, plan, model_cfg, model_world)
            result = evaluate(model, tokenizer, eval_cfg, target, prefix=prefix, out_dir=Path(out_dir), items=items,
                              scores=(scores or {}).get(prefix))
            merged.update(result.metrics)
            files += result.files
            tables.append(f"[{prefix}]\n{result.table}")
    if run_id is not None:
        tracking.log_results(cfg.tracking, run_id, merged, files, step=step)
    return EvalResult(merged, "\n".join(tables), files)


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
          data_checked: bool = False) -> TrainResult:
    """One alignment run on Ray Train; blocks until it ends. Inside a sweep trial, pass the
    Tune callback, the sweep's storage (checked once by the sweep), whether the sweep
    already built this trial's data (``data_checked``: no data, model or seed key was
    sampled), and the parent MLflow run (the child run is found again by its
    ``xalign.trial_id`` tag on resume, never duplicated)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from xalign import storage, tracking
    from xalign.storage import join
    from xalign.train.worker import NONFINITE_FILE, train_loop_per_worker

    cfg = cfg.model_copy(update={"tracking": tracking.resolved(cfg.tracking)})   # one store for every process
    if cfg.tracking.enabled:
        tracking.check_reachable(cfg.tracking)
    from xalign.storage import check_shared, check_storage

    storage_path = storage_root(cfg, storage_path)
    if not storage_checked:
        check_storage(storage_path)     # this machine can write there (before anything is built)
    if os.environ.get("RAY_ADDRESS") and not ray_is_initialized():
        check_ray_address(os.environ["RAY_ADDRESS"])
    world_dir = prepare_world(cfg)
    if not data_checked:
        prepare_data(cfg, world_dir)
    init_ray(cfg)
    if not storage_checked:
        check_shared(storage_path)      # and so can every node, seeing the same files
    name = name or run_name(cfg)
    run_id = uri = None
    if cfg.tracking.enabled:
        uri = tracking.tracking_uri(cfg.tracking)
        run_tags = {"xalign.kind": "train", **(tags or {})}
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        run_id = tracking.start_run(cfg.tracking, run_name=name, params=flatten(cfg),
                                    config_yaml=yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
                                    tags=run_tags, reuse_tag="xalign.trial_id" if "xalign.trial_id" in run_tags else None)
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
    try:
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as exc:
            reason = failure_reason(exc)
            if "Errno" in reason and "could not write the checkpoint" not in reason:
                reason += (f" (while writing to {join(storage_path, name)}; checkpoints already written there are "
                           "kept, and a new run with the same name resumes from the latest)")
            raise TrainingError(f"training failed ({cfg.checkpoint.max_failures} restart(s) allowed): {reason}") from exc
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
        if plan["evaluate"] and result.checkpoint is not None:
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
