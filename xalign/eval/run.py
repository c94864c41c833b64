"""`xalign eval`: evaluate the model of a run config (or another one) on its tasks, print
the per-language table, write records and plots, and log to MLflow when tracking is on."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

from xalign.config import flatten
from xalign.config.schema import WORLD_MODEL, RunConfig
from xalign.eval.evaluator import EvalResult, Target, evaluate


def evaluates_world(cfg: RunConfig) -> bool:
    """Tasks come from the synthetic world unless the config says otherwise: ``eval.source``
    world/real, or auto = the world when the run's data is the world's."""
    if cfg.eval.source != "auto":
        return cfg.eval.source == "world"
    return cfg.data.instructions is None and cfg.data.pairs is None


def target_of(cfg: RunConfig, world_dir: Optional[Path]) -> Target:
    """Pivot, languages, task source and pooler of the run (the layer is set once the
    model's depth is known)."""
    if world_dir is not None:
        from xalign.synthetic import load_manifest

        pivot = load_manifest(Path(world_dir) / "manifest.json")["pivot"]
    else:
        pivot = cfg.data.pivot or "en"
    return Target(pivot=pivot, languages=cfg.eval.languages, world_dir=world_dir, pooler=cfg.objective.pooler)


def run_evaluation(cfg: RunConfig, *, out_dir: Optional[Path] = None) -> EvalResult:
    from xalign.eval.evaluator import plan_items
    from xalign.model import load_model, load_tokenizer, num_blocks
    from xalign.pooling import resolve_layers
    from xalign.synthetic import ensure_world

    on_world = evaluates_world(cfg)
    world_dir = None
    if on_world or cfg.model.name_or_path == WORLD_MODEL:
        world_dir = ensure_world(cfg.data.world, with_model=cfg.model.name_or_path == WORLD_MODEL)
    target = target_of(cfg, world_dir if on_world else None)
    items = plan_items(cfg.eval, target)          # data problems surface before the model loads
    tokenizer = load_tokenizer(cfg.model, world_dir)
    model = load_model(cfg.model, world_dir)
    name_or_path = getattr(model.config, "_name_or_path", "model") or "model"
    target = replace(target, layer=max(resolve_layers(cfg.objective.layer, num_blocks(model), model_name=name_or_path)))
    name = cfg.tracking.run_name or f"eval-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = out_dir or Path("eval_results") / name
    result = evaluate(model, tokenizer, cfg.eval, target, out_dir=out_dir, items=items)
    if cfg.tracking.enabled:
        import yaml

        from xalign import tracking

        run_id = tracking.start_run(cfg.tracking, run_name=name, params=flatten(cfg),
                                    config_yaml=yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
                                    tags={"xalign.kind": "eval"})
        tracking.log_results(cfg.tracking, run_id, result.metrics, result.files)
        tracking.end_run(cfg.tracking, run_id, status="FINISHED")
    return result
