"""The final evaluation of a run (and a sweep's base-model evaluation): the chosen
checkpoint, and with ``eval.baseline`` the starting model, scored on ``eval.split`` as Ray
tasks with one worker's resources each, logged to the run."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Optional

import ray
import ray.train
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from xalign import tracking
from xalign.config.schema import RunConfig
from xalign.data.build import heldout_pairs
from xalign.eval.evaluator import EvalResult, Target, evaluate, merge_shards, plan_items, score_shard
from xalign.model import load_model, load_tokenizer
from xalign.model.pooling import model_layers
from xalign.synthetic import evaluation_world


def evaluation_plan(cfg: RunConfig, world_dir: Optional[Path]) -> dict:
    """What the workers and the final evaluation need to know: whether to evaluate, the
    pivot, and the world whose tasks are evaluated (None = real tasks)."""
    if not cfg.eval.tasks:
        return {"evaluate": False}
    eval_world, pivot = evaluation_world(cfg, world_dir)
    return {"evaluate": True, "pivot": pivot, "eval_world_dir": str(eval_world) if eval_world else None,
            # real tasks: the held-out pairs of data.pairs (if any) give retrieval and MEXA
            "heldout": heldout_pairs(cfg) if eval_world is None else {}}


def local_eval_dir(run_path: str) -> Path:
    """Records and plots go next to the checkpoints when storage is local; for s3:// or
    gs:// storage they go to a local temp folder (and to MLflow as artifacts)."""
    if "://" in run_path:
        return Path(tempfile.mkdtemp(prefix="xalign-eval-"))
    return Path(run_path) / "eval"


def final_evaluation(cfg: RunConfig, checkpoint_path: Optional[str], world_dir: Optional[Path], plan: dict, *,
                     run_id: Optional[str], step: int, out_dir: Path) -> EvalResult:
    """Evaluate the chosen checkpoint on ``eval.split`` (test by default) and, with
    ``eval.baseline``, the starting model too ("base/..." metrics: the gap before
    alignment); log both to the run. ``checkpoint_path`` None evaluates the starting model
    only. Runs as a Ray task with one worker's resources; with several workers
    (``scaling.num_workers``), as many tasks first score a share of the items each, and
    the last task computes the metrics, records and plots from their scores."""
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
    with contextlib.ExitStack() as stack:
        entries = [("base", cfg.model, world)] if cfg.eval.baseline or checkpoint_path is None else []
        if checkpoint_path is not None:
            directory = stack.enter_context(ray.train.Checkpoint(checkpoint_path).as_directory())
            trained = cfg.model.model_copy(update={"name_or_path": str(Path(directory) / "model"), "tokenizer": None})
            entries.insert(0, ("eval", trained, None))
        yield entries


def _eval_setup(cfg: RunConfig, plan: dict, model_cfg, model_world):
    eval_world = Path(plan["eval_world_dir"]) if plan.get("eval_world_dir") else None
    tokenizer, model = load_tokenizer(model_cfg, model_world), load_model(model_cfg, model_world)
    target = Target(pivot=plan["pivot"], languages=cfg.eval.languages, world_dir=eval_world,
                    layer=max(model_layers(model, cfg.objective.layer)), pooler=cfg.objective.pooler,
                    heldout=plan.get("heldout") or None)
    eval_cfg = cfg.eval.model_copy(update={"max_items": cfg.eval.test_max_items})
    return model, tokenizer, target, eval_cfg, plan_items(eval_cfg, target)


_WHAT = {"eval": "trained model", "base": "starting model"}   # metric prefix -> what the progress line says


def _score_checkpoint_shard(cfg_data: dict, checkpoint_path: Optional[str], world_dir: Optional[str], plan: dict,
                            shard: tuple[int, int]) -> dict:
    """{metric prefix: scores of part ``shard`` of the items} for each model evaluated."""
    cfg = RunConfig.model_validate(cfg_data)
    out = {}
    with _models_to_evaluate(cfg, checkpoint_path, Path(world_dir) if world_dir else None) as entries:
        for prefix, model_cfg, model_world in entries:
            model, tokenizer, _target, eval_cfg, items = _eval_setup(cfg, plan, model_cfg, model_world)
            out[prefix] = score_shard(model, tokenizer, items, batch_size=eval_cfg.batch_size, shard=shard,
                                      label=f"final eval, {_WHAT[prefix]}, part {shard[0] + 1}/{shard[1]}", relay=True)
    return out


def _evaluate_checkpoint(cfg_data: dict, checkpoint_path: Optional[str], world_dir: Optional[str], plan: dict,
                         run_id: Optional[str], step: int, out_dir: str, scores: Optional[dict] = None) -> EvalResult:
    """Metrics, records and plots of each model evaluated; ``scores`` ({prefix: scores}),
    when the items were scored in shards already."""
    cfg = RunConfig.model_validate(cfg_data)
    merged: dict = {}
    files: list = []
    tables: list[str] = []
    with _models_to_evaluate(cfg, checkpoint_path, Path(world_dir) if world_dir else None) as entries:
        for prefix, model_cfg, model_world in entries:
            model, tokenizer, target, eval_cfg, items = _eval_setup(cfg, plan, model_cfg, model_world)
            result = evaluate(model, tokenizer, eval_cfg, target, prefix=prefix, out_dir=Path(out_dir), items=items,
                              scores=(scores or {}).get(prefix), label=f"final eval, {_WHAT[prefix]}", relay=True)
            merged.update(result.metrics)
            files += result.files
            tables.append(f"[{prefix}]\n{result.table}")
    if run_id is not None:
        tracking.log_results(cfg.tracking, run_id, merged, files, step=step)
    return EvalResult(merged, "\n".join(tables), files)
