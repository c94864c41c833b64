"""Forwards through any HF decoder-only model without per-architecture code: the
transformer blocks (found as the base model's ``nn.ModuleList``), all hidden states, an
early-exit forward that runs only the blocks the contrastive branch pools, pooled sentence
vectors, and the LM logits of the instruction branch.

The LM head of a large vocabulary (Gemma 3: 262,144 x 640, more multiply-adds per token than
all 18 blocks) runs only where logits are read: ``logits_at`` selects the positions inside
the model's own forward, so the head and what the model does to its output (Gemma 2/3's
final logit softcapping, any scaling) stay the model's; the instruction loss reads the
response tokens only (``lm_response_logits``) and the scorer the option tokens only.

transformers 5.x facts this relies on (tests/test_objectives.py checks them):
- ``output_hidden_states`` returns num_layers + 1 states and replaces the LAST one by the
  output of the final norm (``last_hidden_state``); states 0..num_layers-1 are the
  embedding output and the raw block outputs. ``early_exit_forward`` reproduces exactly
  ``hidden_states[:max_layer + 1]`` of the full forward, final-norm convention included.
- Without ``position_ids`` the model numbers positions 0..seq-1 even under left padding,
  so positions are derived from the attention mask here (``position_ids_from_mask``).
- A 4D ``attention_mask`` is used as given, so packed batches bring their own.

Under DDP pass the unwrapped module (``model.module``): the contrastive branch calls the
base model directly to skip the LM head.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

from xalign.data.collate import IGNORE_INDEX, position_ids_from_mask
from xalign.model.pooling import pool


def base_model(model: nn.Module) -> nn.Module:
    """The transformer under the LM head (``model.base_model`` for HF models)."""
    return getattr(model, "base_model", model)


def decoder_blocks(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(owner, attribute name, ModuleList) of the model's transformer blocks.

    The blocks are the shallowest ``nn.ModuleList`` of the base model whose length is the
    config's number of hidden layers (``layers`` in Llama/XGLM/Qwen, ``h`` in GPT-2/BLOOM,
    ``decoder.layers`` in OPT).
    """
    base = base_model(model)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    depth = getattr(config, "num_hidden_layers", None)
    lists = [(name, module) for name, module in base.named_modules() if isinstance(module, nn.ModuleList)]
    matches = [(name, module) for name, module in lists if depth is None or len(module) == depth]
    if not matches:
        found = ", ".join(f"{name or '<root>'} ({len(module)})" for name, module in lists) or "none"
        raise ValueError(
            f"cannot find the transformer blocks of {type(model).__name__}: no nn.ModuleList of "
            f"length num_hidden_layers={depth}; ModuleLists found: {found}"
        )
    name, blocks = min(matches, key=lambda item: item[0].count("."))
    owner_name, _, attribute = name.rpartition(".")
    return base.get_submodule(owner_name), attribute, blocks


def _model_inputs(module: nn.Module, input_ids, attention_mask, position_ids) -> dict[str, Any]:
    """Forward kwargs; position_ids only for models whose forward takes them (not BLOOM)."""
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if position_ids is not None and "position_ids" in inspect.signature(module.forward).parameters:
        inputs["position_ids"] = position_ids
    return inputs


def _default_positions(attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None):
    if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
        return position_ids_from_mask(attention_mask)
    return position_ids


def _one_fsdp_unit(model: nn.Module, blocks: Sequence[nn.Module] | None = None) -> bool:
    """FSDP2 with the whole model as one unit (``scaling.fsdp_unit: model``): only the root's
    hooks gather the weights and, after the backward, reduce the gradients. ``blocks``: the
    decoder blocks when the caller has them (found only for a sharded model otherwise)."""
    if not isinstance(model, FSDPModule):   # the common case, on every forward: nothing else looked up
        return False
    blocks = decoder_blocks(model)[2] if blocks is None else blocks
    return not isinstance(base_model(model), FSDPModule) and not any(isinstance(b, FSDPModule) for b in blocks)


def _run_base(model: nn.Module, base: nn.Module, blocks: Sequence[nn.Module] | None, inputs: dict[str, Any], *,
              output_hidden_states: bool, captured: list | None = None):
    """The base transformer's forward; through the root (LM head at one position only) when
    FSDP shards the model as one unit, whose hooks sit on the root. There the states that
    ``captured`` collects join the root's output as FSDP sees it, so that their gradients
    fire its pre-backward hook (gather the weights again, then reduce the gradients): the
    loss uses them, not the root's logits."""
    if not _one_fsdp_unit(model, blocks):
        return base(**inputs, output_hidden_states=output_hidden_states)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    handle = None
    if captured is not None:   # runs before FSDP's post-forward hook, which registers the pre-backward one
        handle = model.register_forward_hook(lambda module, args, output: (output, tuple(captured)), prepend=True)
    try:
        output = model(**inputs, output_hidden_states=output_hidden_states, **extra)
    finally:
        if handle is not None:
            handle.remove()
    return output[0] if captured is not None else output


def hidden_states_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """All num_layers + 1 hidden states of the base model (no LM head), HF convention."""
    base = base_model(model)
    position_ids = _default_positions(attention_mask, position_ids)
    inputs = _model_inputs(base, input_ids, attention_mask, position_ids)
    return tuple(_run_base(model, base, None, inputs, output_hidden_states=True).hidden_states)


def early_exit_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    max_layer: int,
    *,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Hidden states 0..max_layer, running only the embedding and blocks 1..max_layer.

    Equal to ``hidden_states_forward(...)[:max_layer + 1]``. The block list is truncated for
    the call and restored in a ``finally``; the states are taken by forward hooks on the
    blocks (the model's own last hidden state is post-final-norm, which a truncated run
    would wrongly apply to block ``max_layer``). ``max_layer`` 0 still runs block 1 (its
    input is the embedding output); ``max_layer == num_layers`` is a plain full forward.
    """
    owner, attribute, blocks = decoder_blocks(model)
    num_layers = len(blocks)
    if not 0 <= max_layer <= num_layers:
        raise ValueError(f"max_layer must be in 0..{num_layers} for this {num_layers}-block model, got {max_layer}")
    if max_layer == num_layers:
        return hidden_states_forward(model, input_ids, attention_mask, position_ids=position_ids)

    keep = max(max_layer, 1)
    captured: list[torch.Tensor] = []

    def grab_input(module, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])

    def grab_output(module, args, output):
        captured.append(output[0] if isinstance(output, (tuple, list)) else output)

    handles = [blocks[0].register_forward_pre_hook(grab_input, with_kwargs=True)]
    handles += [block.register_forward_hook(grab_output) for block in blocks[:keep]]
    base = base_model(model)
    inputs = _model_inputs(base, input_ids, attention_mask, _default_positions(attention_mask, position_ids))
    setattr(owner, attribute, nn.ModuleList(blocks[:keep]))
    try:
        _run_base(model, base, blocks, inputs, output_hidden_states=False, captured=captured)
    finally:
        setattr(owner, attribute, blocks)
        for handle in handles:
            handle.remove()
    if len(captured) != keep + 1:
        raise RuntimeError(
            f"early exit captured {len(captured)} hidden states, expected {keep + 1}: "
            f"{type(model).__name__} does not call its blocks once each"
        )
    return tuple(captured[: max_layer + 1])


def sentence_vectors(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    layers: list[int] | tuple[int, ...],
    pooler: str,
    early_exit: bool = True,
    position_ids: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Pooled (batch, hidden) vectors, one per layer in ``layers`` (absolute indices)."""
    layers = list(layers)
    if not layers:
        raise ValueError("sentence_vectors needs at least one layer")
    if early_exit:
        hidden = early_exit_forward(model, input_ids, attention_mask, max(layers), position_ids=position_ids)
    else:
        hidden = hidden_states_forward(model, input_ids, attention_mask, position_ids=position_ids)
    return pool(hidden, attention_mask, layers, pooler)


def stack_sides(sides: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(input_ids, attention_mask) of several batches stacked into one, each padded on the
    right to the widest (pad id 0, masked), and the row count of each: the sides of the
    translation pairs then take one forward instead of two or three. In a causal model a
    row's non-pad states do not depend on pad positions after them, and the poolers and
    positions read the mask, so the vectors equal those of separate forwards."""
    width = max(ids.shape[1] for ids, _ in sides)
    ids_out, mask_out = [], []
    for ids, mask in sides:
        extra = width - ids.shape[1]
        ids_out.append(torch.nn.functional.pad(ids, (0, extra), value=0))
        mask_out.append(torch.nn.functional.pad(mask, (0, extra), value=0))
    return torch.cat(ids_out), torch.cat(mask_out), [ids.shape[0] for ids, _ in sides]


def _lm_inputs(model: nn.Module, batch: dict) -> dict[str, Any]:
    mask = batch.get("lm_attention_mask")
    if mask is not None and mask.ndim == 4:
        dtype = model.get_input_embeddings().weight.dtype
        if mask.dtype == torch.bool:  # True = attend -> additive
            mask = torch.where(mask, 0.0, torch.finfo(dtype).min)
        mask = mask.to(dtype)
    position_ids = _default_positions(mask, batch.get("lm_position_ids"))
    return _model_inputs(model, batch["lm_input_ids"], mask, position_ids)


def lm_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    """Logits of the instruction branch's rows at every position (``lm_input_ids``; a 4D
    ``lm_attention_mask`` of packed rows made additive in the model's dtype; positions from
    the mask unless given). The loss uses ``lm_response_logits``; this is its reference."""
    return model(**_lm_inputs(model, batch)).logits


def lm_response_logits(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of the positions whose next token is labelled (``lm_labels[:, t + 1]``
    not -100): (K, vocab) and (K,). The LM head runs on those K positions only
    (``logits_at``), so ``cross_entropy(logits, targets)`` equals ``lm_loss`` over the full
    logits, gradients included, without the (batch, seq, vocab) tensor."""
    labels = batch["lm_labels"]
    targets = labels[:, 1:]
    rows, positions = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    if rows.numel() == 0:
        raise ValueError("lm_loss got no labelled token (every label after the first is -100)")
    device = batch["lm_input_ids"].device
    rows, positions = rows.to(device), positions.to(device)
    with logits_at(model, rows, positions) as picked:
        logits = picked(model(**_lm_inputs(model, batch)).logits)
    return logits, targets[rows, positions]


@contextmanager
def logits_at(model: nn.Module, rows: torch.Tensor, positions: torch.Tensor) -> Iterator[Callable]:
    """Within the block, the model's LM head runs only at (``rows[k]``, ``positions[k]``).

    A forward pre-hook on ``model.get_output_embeddings()`` (the LM head) replaces the
    head's input, the final hidden states (batch, seq, hidden), by the K selected states
    shaped (1, K, hidden); the head and anything the model's forward does to its output
    afterwards (softcapping, scaling) then run on K positions. ``picked(logits)`` turns the
    logits of one forward inside the block into (K, vocab). A model whose head is not its
    output-embeddings module (the hook never fires) gets its K rows gathered from the full
    logits instead: the same values, only not faster. A head called more than once in a
    forward is an error (the selection would apply to the wrong tensor)."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    calls: list[tuple[int, ...]] = []

    def select(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("input")
        calls.append(tuple(hidden.shape))
        return (hidden[rows, positions].unsqueeze(0), *args[1:]), kwargs

    handle = head.register_forward_pre_hook(select, with_kwargs=True) if isinstance(head, nn.Module) else None

    def picked(logits: torch.Tensor) -> torch.Tensor:
        if not calls:
            return logits[rows, positions]
        if len(calls) > 1 or tuple(logits.shape[:2]) != (1, rows.numel()):
            raise RuntimeError(
                f"{type(model).__name__}: its LM head ran {len(calls)} time(s) on inputs {calls} and the "
                f"logits have shape {tuple(logits.shape)}; logits_at expects one call giving (1, {rows.numel()}, vocab)")
        calls.clear()
        return logits[0]

    try:
        yield picked
    finally:
        if handle is not None:
            handle.remove()
