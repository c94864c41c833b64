"""InfoNCE over translation pairs, with negatives from every data-parallel rank.

Gradient convention under data parallelism (``scaling``, what the distributed tests check):

- ``"global"`` (default): each rank's loss is the mean over its LOCAL anchors, scored against
  the candidates of the GLOBAL batch. The all-gather keeps this rank's own slot as the local
  tensor, and its backward sends every other rank's gradient for our slot back to us (a sum
  all-reduce), so no cross-rank term is lost. Averaging parameter gradients over ranks (DDP,
  or FSDP's reduce-scatter) then gives exactly the gradient of the mean of the rank losses;
  with equal local batch sizes that is the single-process loss on the concatenated batch.
- ``"released"``: what the paper's released code computes. Every rank gathers the anchors and
  the positives of all ranks (a plain all-gather: only its own slot carries gradient) and
  computes the WHOLE global loss (the mean over all anchors); DDP averages. Every term is
  there, but each rank only differentiates through its own slot, so the averaged gradient is
  the global-loss gradient divided by the number of ranks W (the reported loss is the same).
  At W = 1 the two agree.

Unequal local sizes are supported: sizes are gathered first, tensors padded to the largest and
trimmed after; under ``"global"`` each rank averages over its own anchors. Every rank must call
backward, as with DDP itself, and pass the same ``symmetric``, ``scaling`` and the same
presence of ``hard_negatives`` (they decide which collectives run; a rank may hold zero hard
negatives).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class LearnableTemperature(nn.Module):
    """A temperature learned as log(1/t), as CLIP learns its logit scale.

    Calling the module returns the temperature as a 0-d tensor, clamped to
    [min_temperature, max_temperature] (CLIP's cap of 100 on the scale is t >= 0.01), so a
    runaway scale cannot blow up the logits.
    """

    def __init__(
        self, temperature: float = 0.05, *, min_temperature: float = 0.01, max_temperature: float = 1.0
    ) -> None:
        super().__init__()
        if not 0 < min_temperature <= temperature <= max_temperature:
            raise ValueError(
                "`0 < min_temperature <= temperature <= max_temperature` must hold, got "
                f"min_temperature={min_temperature}, temperature={temperature}, "
                f"max_temperature={max_temperature}"
            )
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature

    def forward(self) -> torch.Tensor:
        log_scale = self.log_scale.clamp(math.log(1.0 / self.max_temperature), math.log(1.0 / self.min_temperature))
        return torch.exp(-log_scale)

    def extra_repr(self) -> str:
        return f"temperature={self().item():.4g}, range=[{self.min_temperature}, {self.max_temperature}]"


def _world() -> tuple[int, int]:
    return dist.get_rank(), dist.get_world_size()


def _use_gather(gather: bool | None) -> bool:
    initialised = dist.is_available() and dist.is_initialized()
    if gather is None:
        return initialised and dist.get_world_size() > 1
    if gather and not initialised:
        raise RuntimeError("info_nce(gather=True) needs an initialised torch.distributed process group")
    return bool(gather)


def _gather_sizes(local: torch.Tensor) -> list[int]:
    size = torch.tensor([local.shape[0]], device=local.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


class _AllGather(torch.autograd.Function):
    """all_gather of (padded) equal-shape tensors whose backward returns to each rank the
    sum over ranks of the gradient for its own slot."""

    @staticmethod
    def forward(ctx, padded: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
        dist.all_gather(out, padded.contiguous())
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[dist.get_rank()]


class _PlainGather(_AllGather):
    """The same all_gather, whose backward returns to each rank only its own slot's local
    gradient (no exchange): the released code's gather."""

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad[dist.get_rank()].contiguous()


SCALINGS = ("global", "released")


def gather_with_grad(local: torch.Tensor, *, exchange: bool = True) -> tuple[torch.Tensor, int]:
    """(concatenation of ``local`` over all ranks, offset of this rank's rows in it).

    This rank's rows ARE ``local`` (the tensor that carries its own gradient); the other
    rows come from the gather, whose backward routes their gradients to their owners
    (``exchange=False``: drops them, as the released code's gather does).
    """
    rank, _ = _world()
    sizes = _gather_sizes(local)
    largest = max(sizes)
    padded = F.pad(local, (0, 0, 0, largest - local.shape[0]))
    gathered = (_AllGather if exchange else _PlainGather).apply(padded)
    parts = [local if r == rank else gathered[r, :n] for r, n in enumerate(sizes)]
    return torch.cat(parts), sum(sizes[:rank])


def _check(name: str, tensor: torch.Tensor, dim: int) -> None:
    if tensor.ndim != 2 or tensor.shape[1] != dim:
        raise ValueError(f"{name} must have shape (batch, {dim}), got {tuple(tensor.shape)}")


def info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    *,
    temperature: float | torch.Tensor,
    symmetric: bool = False,
    hard_negatives: torch.Tensor | None = None,
    gather: bool | None = None,
    scaling: str = "global",
) -> torch.Tensor:
    """InfoNCE: cross-entropy of cosine(anchor_i, candidate_j) / temperature, target j = i.

    Candidates are the positives of the global batch (all ranks when gathering), followed
    by the hard negatives of all ranks if given (a (m, hidden) tensor per rank: extra
    columns for every anchor). ``symmetric=False`` is the released direction, anchors (the
    pivot) -> positives; ``symmetric=True`` averages it with positives -> anchors, whose
    candidates are the global anchors (hard negatives belong to the first direction only).
    ``gather=None`` gathers when a process group with more than one rank is initialised.
    Similarities are computed in float32. Returns the mean over this rank's anchors
    (``scaling="global"``) or over all ranks' anchors (``"released"``; see the module docstring).
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    if anchors.ndim != 2:
        raise ValueError(f"anchors must have shape (batch, hidden), got {tuple(anchors.shape)}")
    _check("positives", positives, anchors.shape[1])
    if positives.shape[0] != anchors.shape[0]:
        raise ValueError(
            f"anchors and positives must pair up row by row, got {anchors.shape[0]} anchors "
            f"and {positives.shape[0]} positives"
        )
    if hard_negatives is not None:
        _check("hard_negatives", hard_negatives, anchors.shape[1])

    # float32 even inside a bf16 autocast region: at temperature 0.05 a bf16 cosine
    # (8 bits of mantissa) moves the logits by up to ~0.08
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        return _info_nce_fp32(anchors, positives, temperature, symmetric, hard_negatives, gather, scaling)


def _info_nce_fp32(anchors, positives, temperature, symmetric, hard_negatives, gather, scaling) -> torch.Tensor:
    anchors = F.normalize(anchors.float(), dim=-1)
    positives = F.normalize(positives.float(), dim=-1)
    if hard_negatives is not None:
        hard_negatives = F.normalize(hard_negatives.float(), dim=-1)

    if _use_gather(gather) and scaling == "released":
        all_positives, _ = gather_with_grad(positives, exchange=False)
        all_anchors, _ = gather_with_grad(anchors, exchange=False)
        all_hard = gather_with_grad(hard_negatives, exchange=False)[0] if hard_negatives is not None else None
        anchors, positives, offset = all_anchors, all_positives, 0   # the whole global loss on every rank
    elif _use_gather(gather):
        all_positives, offset = gather_with_grad(positives)
        all_anchors = gather_with_grad(anchors)[0] if symmetric else anchors
        all_hard = gather_with_grad(hard_negatives)[0] if hard_negatives is not None else None
    else:
        all_positives, offset, all_anchors, all_hard = positives, 0, anchors, hard_negatives

    global_batch = all_positives.shape[0]
    if global_batch < 2:
        raise ValueError(
            f"info_nce needs at least 2 pairs in the global batch (one pair has no in-batch "
            f"negative), got batch size {global_batch}"
        )
    targets = torch.arange(anchors.shape[0], device=anchors.device) + offset

    candidates = all_positives if all_hard is None else torch.cat([all_positives, all_hard])
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.float()
    loss = F.cross_entropy(anchors @ candidates.T / temperature, targets)
    if symmetric:
        reverse = F.cross_entropy(positives @ all_anchors.T / temperature, targets)
        loss = (loss + reverse) / 2
    return loss
