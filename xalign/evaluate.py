"""`xalign eval`: evaluate the model of a run config (or another one) on its tasks, print
the per-language table, write records and plots, and log to MLflow when tracking is on.
Builds the synthetic world first when the tasks or the model come from it."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

from xalign import tracking
from xalign.config.schema import RunConfig
from xalign.data.build import heldout_pairs
from xalign.eval.evaluator import EvalResult, Target, evaluate, plan_items
from xalign.model import load_model, load_tokenizer
from xalign.model.checks import check_run_model
from xalign.model.loading import prepare_model
from xalign.model.pooling import model_layers
from xalign.paths import claim_new_dir, eval_results_dir
from xalign.synthetic import evaluation_world, run_world


def run_evaluation(cfg: RunConfig, *, out_dir: Optional[Path] = None) -> EvalResult:
    prepare_model(cfg.model)                      # a GGUF file: checked, converted once (cached) with progress
    world_dir = run_world(cfg, evaluating=True)
    eval_world, pivot = evaluation_world(cfg, world_dir)
    target = Target(pivot=pivot, languages=cfg.eval.languages, world_dir=eval_world, pooler=cfg.objective.pooler,
                    heldout=heldout_pairs(cfg) if eval_world is None else None)
    items = plan_items(cfg.eval, target)          # data problems surface before the model loads
    tokenizer = load_tokenizer(cfg.model, world_dir)
    check_run_model(cfg, world_dir, tokenizer)    # the layer, the vocabulary, ... before the weights load
    model = load_model(cfg.model, world_dir)
    target = replace(target, layer=max(model_layers(model, cfg.objective.layer)))
    name = cfg.tracking.run_name or f"eval-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out_dir is None:                           # never into another evaluation's folder
        out_dir = claim_new_dir(eval_results_dir(name))
        name = out_dir.name
    result = evaluate(model, tokenizer, cfg.eval, target, out_dir=out_dir, items=items)
    if cfg.tracking.enabled:
        run_id = tracking.open_run(cfg.tracking, cfg, run_name=name, kind="eval")
        tracking.log_results(cfg.tracking, run_id, result.metrics, result.files)
        tracking.end_run(cfg.tracking, run_id, status="FINISHED")
    return result
