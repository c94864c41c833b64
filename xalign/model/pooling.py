"""Sentence vectors from hidden states: which layer, and how tokens become one vector.

Everything here works from the attention mask, so it is right for LEFT padding (BLOOM,
most generation setups) as well as RIGHT padding. The released AFP code took the last
token from sequence lengths, which silently pools a pad token under left padding.

Layer numbering follows HF ``output_hidden_states``: a model with ``num_layers`` blocks has
``num_layers + 1`` hidden states; 0 is the embedding output (the input of block 1) and i is
the output of block i. Note that in transformers (checked on 5.x) the LAST entry is the
output of the final norm, not the raw output of the last block.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch

from xalign.config import schema
from xalign.model.loading import num_blocks

Pooler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bool_mask(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """A (batch, seq) bool mask; every row must hold at least one token."""
    if attention_mask is None:
        return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    if attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, hidden states have "
            f"(batch, seq) = {tuple(hidden.shape[:2])}"
        )
    mask = attention_mask.to(device=hidden.device, dtype=torch.bool)
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"rows {empty} of attention_mask have no tokens; cannot pool them")
    return mask


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Hidden state of the last token whose mask is 1, per row (any padding side)."""
    mask = _bool_mask(hidden, attention_mask)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, -1).amax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over non-pad tokens (summed in float32, returned in the input dtype)."""
    mask = _bool_mask(hidden, attention_mask).unsqueeze(-1)
    # where(), not multiply: a pad position holding inf/nan must not leak into the sum
    total = torch.where(mask, hidden.float(), 0.0).sum(dim=1)
    return (total / mask.sum(dim=1)).to(hidden.dtype)


def masked_max(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Element-wise max over non-pad tokens."""
    mask = _bool_mask(hidden, attention_mask).unsqueeze(-1)
    return torch.where(mask, hidden, float("-inf")).amax(dim=1)


#: name -> function, from the one table in the config schema.
POOLERS: dict[str, Pooler] = {name: globals()[function] for name, function in schema.POOLERS.items()}


def get_pooler(name: str) -> Pooler:
    """The pooler registered as ``name``; a miss names the closest match."""
    return POOLERS[schema.check_pooler(name)]


def _layer_error(spec, num_layers: int, model_name: str) -> ValueError:
    return ValueError(
        f"layer {spec!r} requested; {model_name} has {num_layers} blocks, so valid values are "
        f"{-(num_layers + 1)}..{num_layers} or a fraction 0.0..1.0"
    )


def resolve_layer(spec: int | float, num_layers: int, *, model_name: str = "model") -> int:
    """The hidden-state index (0..num_layers) that ``spec`` names.

    - ``int``: an index into the ``num_layers + 1`` hidden states: 0 is the embedding
      output, i the output of block i; negatives count from the end like Python
      (-1 = last block, -(num_layers + 1) = embeddings).
    - ``float``: a fraction of depth in [0.0, 1.0], resolved to
      ``floor(fraction * num_layers + 0.5)`` (halves round up): 0.5 = the middle block,
      1.0 = the last block.

    Ints are indices and floats are fractions, always, so in YAML ``1`` is block 1 and
    ``1.0`` is the last block. Booleans and strings are rejected (TypeError).
    """
    if isinstance(spec, bool) or not isinstance(spec, numbers.Real):
        raise TypeError(
            f"layer must be an int index or a float fraction of depth, got {spec!r} "
            f"({type(spec).__name__})"
        )
    if isinstance(spec, numbers.Integral):
        index = int(spec)
        if not -(num_layers + 1) <= index <= num_layers:
            raise _layer_error(spec, num_layers, model_name)
        return index + num_layers + 1 if index < 0 else index
    fraction = float(spec)
    if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
        raise _layer_error(spec, num_layers, model_name)
    return math.floor(fraction * num_layers + 0.5)


def resolve_layers(
    spec: int | float | Sequence[int | float], num_layers: int, *, model_name: str = "model"
) -> list[int]:
    """Several layer specs (see ``resolve_layer``) as a sorted list of unique indices."""
    specs = [spec] if isinstance(spec, numbers.Number) else list(spec)
    if not specs:
        raise ValueError("at least one layer is required")
    return sorted({resolve_layer(s, num_layers, model_name=model_name) for s in specs})


def pool(
    hidden_states: Sequence[torch.Tensor] | torch.Tensor,
    attention_mask: torch.Tensor | None,
    layers: int | Sequence[int],
    pooler: str | Pooler,
) -> list[torch.Tensor]:
    """One (batch, hidden) tensor per entry of ``layers``, in the order given.

    ``hidden_states`` is the HF tuple (or a stacked (layers+1, batch, seq, hidden) tensor);
    ``layers`` are absolute indices into it (resolve specs with ``resolve_layers`` against
    the model's full depth first: after an early exit the tuple is shorter than the model).
    """
    pool_fn = get_pooler(pooler) if isinstance(pooler, str) else pooler
    indices = [layers] if isinstance(layers, numbers.Integral) else list(layers)
    available = len(hidden_states)
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < available:
            raise ValueError(
                f"pool() takes resolved layer indices 0..{available - 1} for these "
                f"{available} hidden states, got {index!r}"
            )
    return [pool_fn(hidden_states[index], attention_mask) for index in indices]


def model_layers(model, spec: int | float | Sequence[int | float]) -> list[int]:
    """``resolve_layers(spec)`` against this model's depth, the model named in errors."""
    name = getattr(model.config, "_name_or_path", "model") or "model"
    return resolve_layers(spec, num_blocks(model), model_name=name)
