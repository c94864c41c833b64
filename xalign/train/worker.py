"""The Ray Train worker function: config -> setup_model -> setup_data -> setup_optimizer ->
restore -> loop(alignment step) -> report. The only module that calls ray.train on workers."""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from xalign.config.schema import RunConfig
from xalign.data import AlignmentData, build_alignment_data
from xalign.model import load_model, load_tokenizer, num_blocks
from xalign.objectives import LearnableTemperature, alignment_loss
from xalign.pooling import resolve_layers
from xalign.train.checkpoint import load_checkpoint, save_checkpoint
from xalign.train.loop import Dist, NonFiniteLossError, make_scheduler, train_step

# Ray Train routes worker logging to the driver's console (a plain print would show twice).
log = logging.getLogger("xalign.train")

#: Metric names of the MLflow contract (design.md) for the loss parts of alignment_loss.
METRIC_NAMES = {"loss": "train/loss", "contrastive": "train/loss_contrastive", "lm": "train/loss_lm"}


@dataclass
class Objective:
    """What alignment_loss needs, resolved against the model: absolute layer indices, and
    the temperature (a float, or a LearnableTemperature module that is trained too)."""

    contrastive_weight: float
    lm_weight: float
    temperature: Any
    layers: tuple[int, ...]
    pooler: str
    symmetric: bool
    early_exit: bool
    module: torch.nn.Module  # holds the learnable parameters (empty when none)
    fused_sides: bool = True


def setup_model(cfg: RunConfig, world_dir: Optional[str], device: torch.device):
    tokenizer = load_tokenizer(cfg.model, Path(world_dir) if world_dir else None)
    model = load_model(cfg.model, Path(world_dir) if world_dir else None, for_training=True).to(device)
    model.train()
    if cfg.model.compile:
        from xalign.objectives.step import decoder_blocks

        for block in decoder_blocks(model)[2]:
            block.compile()
    return model, tokenizer


def setup_objective(cfg: RunConfig, model, device: torch.device) -> Objective:
    o = cfg.objective
    name = getattr(model.config, "_name_or_path", "model") or "model"
    layers = tuple(resolve_layers(o.layer, num_blocks(model), model_name=name))
    module = torch.nn.Module()
    temperature: Any = o.temperature
    if o.learn_temperature:
        module = LearnableTemperature(o.temperature).to(device)
        temperature = module
    return Objective(o.contrastive_weight, o.lm_weight, temperature, layers, o.pooler, o.symmetric,
                     o.early_exit, module, o.fused_sides)


def setup_data(cfg: RunConfig, tokenizer, world_dir: Optional[str], dist: Dist) -> AlignmentData:
    data = build_alignment_data(cfg, tokenizer, Path(world_dir) if world_dir else None)
    return data.shard(seed=cfg.seed, local_batch=cfg.optim.batch_size, world_size=dist.world_size, rank=dist.rank,
                      group_window=cfg.data.group_window if cfg.data.group_by_length else 0)


def setup_optimizer(cfg: RunConfig, model, objective: Objective):
    params = [p for p in model.parameters() if p.requires_grad] + list(objective.module.parameters())
    fused = cfg.optim.fused if cfg.optim.fused is not None else params[0].device.type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay, fused=fused)
    warmup = int(cfg.optim.warmup_ratio * cfg.optim.max_steps)
    scheduler = make_scheduler(optimizer, schedule=cfg.optim.schedule, warmup_steps=warmup,
                               max_steps=cfg.optim.max_steps)
    return optimizer, scheduler, params


def derived_quantities(cfg: RunConfig, objective: Objective, model, dist: Dist, data: AlignmentData) -> list[str]:
    """The numbers worth seeing before a run starts (nanoGPT style)."""
    per_step = cfg.optim.batch_size * cfg.optim.grad_accum_steps * dist.world_size
    global_batch = cfg.optim.batch_size * dist.world_size
    lines = [f"workers: {dist.world_size}, global batch: {global_batch} pairs + {global_batch} LM samples "
             f"per micro-batch, {per_step} of each per optimizer step"]
    if objective.contrastive_weight > 0:
        negatives = global_batch - 1
        lines.append(f"contrastive: {negatives} in-batch negatives per anchor, pooler {objective.pooler!r} at "
                     f"hidden_states{list(objective.layers)} of {num_blocks(model)} blocks (0 = embeddings), "
                     f"temperature {cfg.objective.temperature}{' (learned)' if cfg.objective.learn_temperature else ''}, "
                     f"{'symmetric' if objective.symmetric else 'pivot -> other'}, early exit "
                     f"{'on' if objective.early_exit else 'off'}")
    lines.append(f"losses: {objective.contrastive_weight} x contrastive + {objective.lm_weight} x instruction LM")
    lm = data.stats.get("lm", {})
    lines.append(f"data: {len(data.pairs.src)} pairs {data.stats['pairs']}, {len(data.lm_examples)} LM samples "
                 f"({lm.get('instruction', 0)} instruction, {lm.get('translation', 0)} translation, "
                 f"{lm.get('replay', 0)} pivot replay)"
                 + (f", {'loaded from' if data.cache['hit'] else 'stored in'} the data cache {data.cache['path']}"
                    if data.cache else "")
                 + (f"; {sum(data.stats['bad_lines'].values())} malformed source lines skipped"
                    if sum(data.stats.get("bad_lines", {}).values()) else ""))
    lines.append(f"model: {sum(p.numel() for p in model.parameters()):,} parameters; "
                 f"{cfg.optim.max_steps} steps, lr {cfg.optim.lr} ({cfg.optim.schedule}, warm-up "
                 f"{int(cfg.optim.warmup_ratio * cfg.optim.max_steps)} steps)")
    return lines


@dataclass
class Run:
    """Everything one worker holds during a run; ``step(i)`` is one optimizer step."""

    cfg: RunConfig
    model: Any
    tokenizer: Any
    objective: Objective
    data: AlignmentData
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list
    dist: Dist
    device: torch.device

    def batches(self) -> "StepBatches":
        return StepBatches(self.data, self.cfg.optim.grad_accum_steps, contrastive=self.objective.contrastive_weight > 0,
                           lm=self.objective.lm_weight > 0)

    def step(self, step: int, micro: Optional[list[dict]] = None) -> dict[str, float]:
        """Optimizer step ``step`` (0-based): its micro-batches are a pure function of it
        (``micro``: already collated, e.g. by a DataLoader worker)."""
        if micro is None:
            micro = self.batches()[step]
        non_blocking = self.device.type == "cuda"
        micro = [{k: v.to(self.device, non_blocking=non_blocking) for k, v in batch.items()} for batch in micro]
        autocast = (torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
                    if self.cfg.model.dtype == "bf16" else None)
        return train_step(self.model, self.optimizer, self.scheduler, micro,
                          lambda m, b: alignment_loss(m, b, self.objective), step=step + 1,
                          max_grad_norm=self.cfg.optim.max_grad_norm, dist=self.dist, params=self.params,
                          count_tokens=self.data.count_tokens, autocast=autocast)

    def save(self, directory: Path, *, step: int) -> None:
        save_checkpoint(directory, model=self.model, tokenizer=self.tokenizer, optimizer=self.optimizer,
                        scheduler=self.scheduler, objective=self.objective.module, step=step)

    def restore(self, directory: Path) -> int:
        return load_checkpoint(directory, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                               objective=self.objective.module)


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` = the micro-batches of optimizer step ``step`` (grad accumulation), a
    pure function of it, so a DataLoader's worker processes can collate them ahead."""

    def __init__(self, data: AlignmentData, accum: int, *, contrastive: bool, lm: bool):
        self.data, self.accum, self.contrastive, self.lm = data, accum, contrastive, lm

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> list[dict]:
        return [self.data.micro_batch(step * self.accum + i, contrastive=self.contrastive, lm=self.lm)
                for i in range(self.accum)]


def step_batches(run: "Run", start: int, stop: int):
    """The micro-batches of steps start..stop-1, in order: collated in this process
    (``data.num_workers`` 0) or by DataLoader worker processes, two steps ahead each
    (spawned, not forked: a Ray worker process holds threads that fork does not copy)."""
    batches = run.batches()
    workers = run.cfg.data.num_workers
    if workers == 0:
        return (batches[step] for step in range(start, stop))
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, stop), num_workers=workers,
                                         multiprocessing_context="spawn", prefetch_factor=2,
                                         pin_memory=run.device.type == "cuda")
    return iter(loader)


def setup_run(cfg: RunConfig, world_dir: Optional[str], dist: Dist, device: torch.device) -> Run:
    torch.manual_seed(cfg.seed + dist.rank)
    model, tokenizer = setup_model(cfg, world_dir, device)
    objective = setup_objective(cfg, model, device)
    data = setup_data(cfg, tokenizer, world_dir, dist)
    optimizer, scheduler, params = setup_optimizer(cfg, model, objective)
    return Run(cfg, model, tokenizer, objective, data, optimizer, scheduler, params, dist, device)


NONFINITE_FILE = "nonfinite.json"   # in the run's storage folder: the step and loss parts of a NaN stop


def tag_node(cfg: RunConfig, run_id: str) -> None:
    """Tag the MLflow run with the Ray node rank 0 runs on (``xalign.node_id``,
    ``xalign.node_ip``). Informational: a store still down after the retry window is
    logged, not raised, as step metrics are (training goes on)."""
    import ray

    from xalign.tracking import TrackingError, set_tags

    tags = {"xalign.node_id": ray.get_runtime_context().get_node_id(), "xalign.node_ip": ray.util.get_node_ip_address()}
    try:
        set_tags(cfg.tracking, run_id, tags)
    except TrackingError as exc:
        log.warning("[xalign] could not tag the run with its node: %s", exc)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the previous one is untouched."""


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg = RunConfig.model_validate(config["run"])
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))  # one thread per CPU the worker holds
    dist = Dist.current()
    run = setup_run(cfg, config.get("world_dir"), dist, ray.train.torch.get_device())
    start_step = 0
    unsent: list = []   # metrics the tracking store had not taken when the checkpoint was saved
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start_step = run.restore(Path(directory))
            if dist.rank == 0 and config.get("mlflow_run_id"):
                from xalign.tracking import read_unsent

                unsent = read_unsent(Path(directory))
    logger = None
    if dist.rank == 0:
        for line in derived_quantities(cfg, run.objective, run.model, dist, run.data):
            log.info("[xalign] %s", line)
        if start_step:
            log.info("[xalign] resuming from the checkpoint at step %d", start_step)
        if config.get("mlflow_run_id"):
            from xalign.tracking import BackgroundMetricLogger

            from xalign.data import mix_metrics

            logger = BackgroundMetricLogger(config["mlflow_uri"], config["mlflow_run_id"])
            logger.pending[:0] = unsent
            logger.log(mix_metrics(run.data.stats), step=start_step)   # the realised data mix
            tag_node(cfg, config["mlflow_run_id"])   # which Ray node ran this (trial's) run

    evaluator = setup_evaluation(config, run)
    last_saved = start_step
    window: list[dict] = []
    window_start = time.perf_counter()   # wall clock of the reporting window (train/wall_tokens_per_s)
    for step, micro in zip(range(start_step, cfg.optim.max_steps), step_batches(run, start_step, cfg.optim.max_steps)):
        try:
            metrics = run.step(step, micro)
        except NonFiniteLossError as exc:
            # Every rank sees the same reduced loss, so all stop here together. Returning (not
            # raising) keeps Ray from retrying a deterministic failure; the driver reports it
            # from the file rank 0 leaves in the run's storage (Ray's result carries the
            # metrics of the last checkpoint, not of the last report).
            report = {"train/nonfinite_step": exc.step, **{f"train/nonfinite_{k}": v for k, v in exc.parts.items()}}
            if dist.rank == 0 and config.get("storage_path"):
                from xalign import storage

                storage.write_text(storage.join(config["storage_path"], NONFINITE_FILE), json.dumps(report))
            if logger is not None:
                logger.send_now()         # the windows before the stop, queued for the store
            ray.train.report(report)
            return
        window.append(metrics)
        done = step + 1
        save = done == cfg.optim.max_steps or (cfg.checkpoint.every_n_steps and done % cfg.checkpoint.every_n_steps == 0)
        dev_eval = config.get("evaluate", False) and (
            save or (cfg.eval.every_n_steps and done % cfg.eval.every_n_steps == 0))
        if not (save or dev_eval or done % cfg.tracking.log_every_n_steps == 0):
            continue
        report = {**summarise(window, run.objective), "step": done, "resumed_from_step": start_step}
        paused = time.perf_counter()
        report["train/wall_tokens_per_s"] = sum(m["tokens"] for m in window) / max(paused - window_start, 1e-9)
        report["train/peak_memory_mb"] = peak_memory_mb(run.device)
        if dev_eval:
            # On DEV (selection never looks at test), the items shared by all ranks.
            dev = evaluator(run.model) if evaluator is not None else {}
            report.update(dev)
        # The next window's wall clock leaves out the evaluation and the checkpoint (timed
        # on their own) but counts reporting and logging, which a plain loop would not do.
        window, window_start = [], time.perf_counter()
        if logger is not None:
            logger.log(report, step=done)
        if not save:
            # Ray hears of evaluations (Tune and ASHA read them) and checkpoints only: a report
            # waits until Ray Train's controller has taken the previous one, and it polls every
            # 2 s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), which stalled short steps 5x when every
            # logging window reported. The windows go to MLflow, from rank 0, above.
            if dev_eval:
                ray.train.report(report)
            continue
        name = f"step_{done:07d}"
        saving = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                if dist.rank == 0:
                    run.save(Path(tmp), step=done)
                    if logger is not None:
                        logger.save_unsent(Path(tmp))   # sent later (resume, or the driver at the end)
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp) if dist.rank == 0 else None,
                                 checkpoint_dir_name=name)
        except OSError as exc:   # disk full, storage unwritable, credentials gone
            previous = f"step {last_saved}" if last_saved else "none yet"
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {done} ({name}) to {config.get('storage_path', 'storage')}: "
                f"{type(exc).__name__}: {exc}. The previous checkpoint ({previous}) is intact; free space or fix "
                "checkpoint.storage_path, and a restart resumes from it") from exc
        last_saved = done
        window_start += time.perf_counter() - saving


def setup_evaluation(config: dict, run: Run):
    """A function model -> dev metrics (``dev/...``) for the periodic evaluations, called on
    every rank: each scores its share of the items (xalign.eval.evaluator.score_shard), rank
    0 gathers them and computes the metrics (the representation metrics on it alone); the
    other ranks get {}. The items are built once, here."""
    if not config.get("evaluate"):
        return None
    from xalign.eval.evaluator import Target, evaluate, merge_shards, plan_items, score_shard

    cfg = run.cfg
    world_dir = config.get("eval_world_dir")
    target = Target(pivot=config["pivot"], languages=cfg.eval.languages, world_dir=Path(world_dir) if world_dir else None,
                    layer=max(run.objective.layers), pooler=run.objective.pooler)

    items = plan_items(cfg.eval, target, split="dev") if cfg.eval.dev_tasks else {}
    dist = run.dist

    def dev_metrics(model) -> dict[str, float]:
        part = score_shard(model, run.tokenizer, items, batch_size=cfg.eval.batch_size,
                           shard=(dist.rank, dist.world_size))
        parts = [part]
        if dist.world_size > 1:
            parts = [None] * dist.world_size
            torch.distributed.all_gather_object(parts, part)
        if dist.rank != 0:
            return {}
        result = evaluate(model, run.tokenizer, cfg.eval, target, split="dev", prefix="dev", items=items,
                          scores=merge_shards(parts))
        return {k: v for k, v in result.metrics.items() if "/layer" not in k}

    return dev_metrics


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this worker so far: the GPU's allocated tensors, or on CPU the
    process's peak resident set (model, optimizer, activations, and the Python runtime)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def summarise(window: list[dict], objective: Objective) -> dict[str, float]:
    """Mean of the loss parts over the reporting window, tokens/s over its wall time."""
    out: dict[str, float] = {}
    for key, name in METRIC_NAMES.items():
        values = [m[key] for m in window if key in m]
        if values:
            out[name] = sum(values) / len(values)
    seconds = sum(m["seconds"] for m in window)
    out["train/tokens_per_s"] = sum(m["tokens"] for m in window) / seconds if seconds > 0 else math.nan
    out["train/lr"] = window[-1]["lr"]
    out["train/grad_norm"] = window[-1]["grad_norm"]
    if isinstance(objective.temperature, torch.nn.Module):
        out["train/temperature"] = float(objective.temperature())
    return out
