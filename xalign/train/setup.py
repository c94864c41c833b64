"""What one Ray Train worker builds before its loop: the model, the objective's learnable
parts, the data shard, the optimizer, and the periodic dev evaluation (``Run``: all of it,
with ``step(i)`` = one optimizer step). Knows nothing of Ray."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from xalign.config.schema import RunConfig
from xalign.data import AlignmentData, build_alignment_data
from xalign.eval.evaluator import Target, evaluate, merge_shards, plan_items, score_shard
from xalign.model import load_model, load_tokenizer, num_blocks
from xalign.model.forward import decoder_blocks
from xalign.model.freeze import apply_freeze, freeze_summary
from xalign.model.pooling import model_layers
from xalign.objectives import LearnableTemperature, alignment_loss
from xalign.optim import Dist, make_scheduler, train_step
from xalign.model.lora import apply_lora
from xalign.train.checkpoint import load_checkpoint, save_checkpoint
from xalign.train.sharding import is_sharded, load_scaled, save_scaled, unsharded_model, wrap_fsdp


def setup_run(cfg: RunConfig, world_dir: Optional[str], dist: Dist, device: torch.device) -> "Run":
    # Every rank builds the same model: LoRA's adapters are drawn at random, and under ddp
    # nothing else would make the replicas equal. Then each rank its own stream (dropout).
    torch.manual_seed(cfg.seed)
    model, tokenizer, peft_model = setup_model(cfg, world_dir, device)
    if dist.rank:
        torch.manual_seed(cfg.seed + dist.rank)
    layers = tuple(model_layers(model, cfg.objective.layer))   # a layer the model lacks fails before the data
    learned = LearnableTemperature(cfg.objective.temperature).to(device) if cfg.objective.learn_temperature \
        else torch.nn.Module()
    data = setup_data(cfg, tokenizer, world_dir, dist)
    optimizer, scheduler, params = setup_optimizer(cfg, model, learned)
    return Run(cfg, model, tokenizer, data, optimizer, scheduler, params, dist, device, layers, learned, peft_model)


def setup_model(cfg: RunConfig, world_dir: Optional[str], device: torch.device):
    """(model to train, tokenizer, peft model or None): loaded, LoRA adapters injected
    (``model.lora``), frozen parts frozen, blocks compiled, and sharded under
    ``scaling.strategy: fsdp`` (xalign.train.sharding); under ddp every worker holds it whole."""
    tokenizer = load_tokenizer(cfg.model, Path(world_dir) if world_dir else None)
    model = load_model(cfg.model, Path(world_dir) if world_dir else None, for_training=True).to(device)
    model.train()
    peft_model = None
    if cfg.model.lora is not None:
        peft_model, model = apply_lora(model, cfg.model.lora)   # trains the HF model with adapters inside
    apply_freeze(model, cfg.model.freeze)  # before the optimizer: frozen weights never reach it
    if cfg.model.compile:
        for block in decoder_blocks(model)[2]:
            block.compile()
    if cfg.scaling.strategy == "fsdp":
        wrap_fsdp(model, cfg.scaling, cfg.model.dtype, device)
    return model, tokenizer, peft_model


def setup_data(cfg: RunConfig, tokenizer, world_dir: Optional[str], dist: Dist) -> AlignmentData:
    data = build_alignment_data(cfg, tokenizer, Path(world_dir) if world_dir else None)
    return data.shard(seed=cfg.seed, local_batch=cfg.optim.batch_size, world_size=dist.world_size, rank=dist.rank,
                      group_window=cfg.data.group_window if cfg.data.group_by_length else 0)


def setup_optimizer(cfg: RunConfig, model, learned: torch.nn.Module):
    params = [p for p in model.parameters() if p.requires_grad] + list(learned.parameters())
    fused = cfg.optim.fused if cfg.optim.fused is not None else params[0].device.type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay, fused=fused)
    warmup = int(cfg.optim.warmup_ratio * cfg.optim.max_steps)
    scheduler = make_scheduler(optimizer, schedule=cfg.optim.schedule, warmup_steps=warmup,
                               max_steps=cfg.optim.max_steps)
    return optimizer, scheduler, params


@dataclass
class Run:
    """Everything one worker holds during a run; ``step(i)`` is one optimizer step."""

    cfg: RunConfig
    model: Any
    tokenizer: Any
    data: AlignmentData
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list
    dist: Dist
    device: torch.device
    #: The hidden states the contrastive branch pools (``objective.layer`` resolved against the model).
    layers: tuple[int, ...]
    #: The objective's learnable parameters (the temperature, with ``objective.learn_temperature``;
    #: else empty), trained and checkpointed with the model.
    learned: torch.nn.Module
    #: The peft model around ``model`` under ``model.lora`` (saves the adapters), else None.
    peft: Any = None

    @property
    def temperature(self) -> Optional[LearnableTemperature]:
        return self.learned if isinstance(self.learned, LearnableTemperature) else None

    def batches(self) -> "StepBatches":
        o = self.cfg.objective
        return StepBatches(self.data, self.cfg.optim.grad_accum_steps, contrastive=o.contrastive_weight > 0,
                           lm=o.lm_weight > 0)

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
                          lambda m, b: alignment_loss(m, b, self.cfg.objective, temperature=self.temperature), step=step + 1,
                          max_grad_norm=self.cfg.optim.max_grad_norm, dist=self.dist, params=self.params,
                          count_tokens=self.data.count_tokens, autocast=autocast)

    def save(self, directory: Path, *, step: int) -> None:
        """Called on every rank; under ddp without LoRA only rank 0 writes."""
        if is_sharded(self.model) or self.peft is not None:
            save_scaled(directory, model=self.model, peft_model=self.peft, tokenizer=self.tokenizer,
                        optimizer=self.optimizer, scheduler=self.scheduler, objective=self.learned, step=step,
                        rank=self.dist.rank)
            return
        if self.dist.rank == 0:
            save_checkpoint(directory, model=self.model, tokenizer=self.tokenizer, optimizer=self.optimizer,
                            scheduler=self.scheduler, objective=self.learned, step=step)

    def restore(self, directory: Path) -> int:
        if is_sharded(self.model) or self.peft is not None:
            return load_scaled(directory, model=self.model, peft_model=self.peft, optimizer=self.optimizer,
                               scheduler=self.scheduler, objective=self.learned)
        return load_checkpoint(directory, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                               objective=self.learned)


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


def derived_quantities(run: Run) -> list[str]:
    """The numbers worth seeing before a run starts (nanoGPT style)."""
    cfg, objective, model, dist, data = run.cfg, run.cfg.objective, run.model, run.dist, run.data
    per_step = cfg.optim.batch_size * cfg.optim.grad_accum_steps * dist.world_size
    global_batch = cfg.optim.batch_size * dist.world_size
    lines = [f"workers: {dist.world_size}, global batch: {global_batch} pairs + {global_batch} LM samples "
             f"per micro-batch, {per_step} of each per optimizer step"]
    if objective.contrastive_weight > 0:
        negatives = global_batch - 1
        lines.append(f"contrastive: {negatives} in-batch negatives per anchor, pooler {objective.pooler!r} at "
                     f"hidden_states{list(run.layers)} of {num_blocks(model)} blocks (0 = embeddings), "
                     f"temperature {objective.temperature}{' (learned)' if objective.learn_temperature else ''}, "
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
    lines.append(f"model: {sum(p.numel() for p in model.parameters()):,} parameters"
                 + (f" ({freeze_summary(model)})" if not all(p.requires_grad for p in model.parameters()) else "")
                 + "; "
                 f"{cfg.optim.max_steps} steps, lr {cfg.optim.lr} ({cfg.optim.schedule}, warm-up "
                 f"{int(cfg.optim.warmup_ratio * cfg.optim.max_steps)} steps)")
    return lines


def setup_evaluation(config: dict, run: Run) -> Optional[Callable[[Any], dict[str, float]]]:
    """A function model -> dev metrics (``dev/...``) for the periodic evaluations, called on
    every rank: each scores its share of the items (xalign.eval.evaluator.score_shard), rank
    0 gathers them and computes the metrics (the representation metrics on it alone); the
    other ranks get {}. The items are built once, here."""
    if not config.get("evaluate"):
        return None
    cfg = run.cfg
    world_dir = config.get("eval_world_dir")
    target = Target(pivot=config["pivot"], languages=cfg.eval.languages, world_dir=Path(world_dir) if world_dir else None,
                    layer=max(run.layers), pooler=cfg.objective.pooler, heldout=config.get("heldout") or None)

    # the primary protocol only: it ranks checkpoints and feeds ASHA; the others are scored at the end
    items = plan_items(cfg.eval, target, split="dev", protocols=cfg.eval.protocols[:1]) if cfg.eval.dev_tasks else {}
    dist = run.dist

    def dev_metrics(model) -> dict[str, float]:
        if is_sharded(model):
            # A sharded forward is a collective, and ranks score different numbers of items:
            # rank 0 evaluates an unsharded copy alone (the others only help gather it).
            copy = unsharded_model(model, run.peft)
            if copy is None:
                return {}
            result = evaluate(copy, run.tokenizer, cfg.eval, target, split="dev", prefix="dev", items=items,
                              label="dev eval", relay=True)
            return {k: v for k, v in result.metrics.items() if "/layer" not in k}
        # rank 0's share shows progress on the driver's console (a periodic evaluation of a real
        # model takes minutes, during which the training bar does not move)
        part = score_shard(model, run.tokenizer, items, batch_size=cfg.eval.batch_size,
                           shard=(dist.rank, dist.world_size), label="dev eval", relay=dist.rank == 0)
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
