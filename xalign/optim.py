"""The optimisation loop shared by alignment (on Ray Train workers) and by the synthetic
world's base-model pre-training (in-process): one optimizer step = grad-accumulated
micro-batches, gradients averaged across ranks, clipping, a finite-loss check, and metrics
reduced across ranks. Knows nothing of Ray."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
from torch.distributed.tensor import DTensor

LossFn = Callable[[torch.nn.Module, Mapping[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN or infinite: the step and the loss parts (and the
    gradient norm), for the error message."""

    def __init__(self, step: int, parts: Mapping[str, float]):
        self.step, self.parts = step, dict(parts)
        shown = ", ".join(f"{k}={v:.6g}" for k, v in sorted(parts.items()))
        super().__init__(f"non-finite loss or gradient at step {step}: {shown}")


@dataclass(frozen=True)
class Dist:
    """This process's place in the data-parallel group (world_size 1 = no group)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> "Dist":
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return cls(torch.distributed.get_rank(), torch.distributed.get_world_size())
        return cls()

    def sum(self, values: Mapping[str, float], device: torch.device) -> dict[str, float]:
        keys = sorted(values)
        if self.world_size == 1 or not keys:
            return {k: float(values[k]) for k in keys}
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """All-reduce-mean the gradients in one flat buffer per dtype. Plain all-reduce instead
        of DDP because the contrastive branch may run only the lower blocks (early exit) and
        several forwards happen per step; a missing gradient counts as zero."""
        if self.world_size == 1:
            return
        # FSDP's sharded (DTensor) parameters were reduce-scattered during the backward
        params = [p for p in params if p.requires_grad and not isinstance(p, DTensor)]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for p in params:
            by_dtype.setdefault(p.grad.dtype, []).append(p)
        for group in by_dtype.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            torch.distributed.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for p in group:
                n = p.grad.numel()
                p.grad.copy_(flat[offset: offset + n].view_as(p.grad))
                offset += n


def make_scheduler(optimizer: torch.optim.Optimizer, *, schedule: str, warmup_steps: int,
                   max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine / linear decay to 0 or constant."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "linear":
            return 1.0 - progress
        raise ValueError(f"unknown schedule {schedule!r}; available: constant, cosine, linear")

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip to ``max_norm`` (0 = no clipping) by the GLOBAL gradient norm; returns that norm.
    FSDP's sharded parameters' norm is reduced over the shards (DTensor), the others' (the
    learned temperature, already averaged) is added in."""
    limit = max_norm if max_norm > 0 else float("inf")
    sharded = [p.grad for p in params if p.grad is not None and isinstance(p, DTensor)]
    if not sharded:
        return float(torch.nn.utils.clip_grad_norm_(params, limit))
    plain = [p.grad for p in params if p.grad is not None and not isinstance(p, DTensor)]
    squares = float(torch.nn.utils.get_total_norm(sharded).full_tensor()) ** 2
    if plain:
        squares += float(torch.nn.utils.get_total_norm(plain)) ** 2
    norm = math.sqrt(squares)
    if math.isfinite(norm) and norm > limit:
        for grad in sharded + plain:
            grad.mul_(limit / (norm + 1e-6))
    return norm


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, micro_batches: list[Mapping[str, torch.Tensor]],
               loss_fn: LossFn, *, step: int, max_grad_norm: float, dist: Dist,
               params: list[torch.nn.Parameter], count_tokens: Callable[[Mapping], int],
               autocast: torch.autocast | None = None) -> dict[str, float]:
    """One optimizer step over ``micro_batches`` (gradient accumulation). Returns metrics
    reduced across ranks: ``loss`` and its parts (means), ``tokens`` (sum), ``lr``,
    ``grad_norm``, ``seconds``. Raises NonFiniteLossError before the optimizer moves."""
    start = time.perf_counter()
    device = params[0].device
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    tokens = 0
    for batch in micro_batches:
        if autocast is not None:
            with autocast:
                loss, parts = loss_fn(model, batch)
        else:
            loss, parts = loss_fn(model, batch)
        (loss / len(micro_batches)).backward()
        for key, value in {"loss": float(loss.detach()), **parts}.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        tokens += count_tokens(batch)
    totals = dist.sum({**sums, "tokens": tokens}, device)
    denominator = len(micro_batches) * dist.world_size
    metrics = {k: v / denominator for k, v in totals.items() if k != "tokens"}
    if not all(math.isfinite(v) for v in metrics.values()):
        raise NonFiniteLossError(step, metrics)
    dist.average_gradients(params)
    grad_norm = clip_gradients(params, max_grad_norm)
    if not math.isfinite(float(grad_norm)):   # a finite loss can still have a NaN gradient
        raise NonFiniteLossError(step, {**metrics, "grad_norm": float(grad_norm)})
    optimizer.step()
    scheduler.step()
    metrics.update(tokens=totals["tokens"], lr=scheduler.get_last_lr()[0], grad_norm=float(grad_norm),
                   seconds=time.perf_counter() - start)
    return metrics
