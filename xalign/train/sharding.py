"""``scaling.strategy: fsdp``: PyTorch FSDP2 wrapping of the causal LM, and its checkpoints.

Wrapping (what tests/test_sharding.py checks against one process on gloo):
- ``fully_shard`` per decoder block (``scaling.fsdp_unit: block``; ``model``: the root alone,
  one unit, and early exit runs through the root), then the base model's other children that hold weights
  (embeddings, final norm, BLOOM's embedding norm) as their own groups: early exit calls the
  base transformer directly, never the root, so root hooks would not gather them. A tied
  input/output embedding is ONE tensor: the embedding and the LM head share one group.
- the root last, then one no-grad root forward of one token: FSDP2 picks its root on the
  first forward, which must be the root's (an early-exit forward first fails).
- mixed precision: parameters in bf16 when ``model.dtype`` is bf16, gradients reduced in fp32;
  ``scaling.reshard_after_forward``; ``scaling.cpu_offload`` (CPUOffloadPolicy, GPU runs only).
- the blocks an early-exit forward does not run are never gathered.
- gradients are reduce-scattered (averaged) during the backward: ``xalign.optim`` skips its
  all-reduce for these (DTensor) parameters and clips by the global norm over the shards.

Checkpoints: ``sharded/`` holds model and optimizer state as torch.distributed.checkpoint
shards (one file per worker, resharded on load: a run resumes on another worker count);
``model/`` the consolidated HF model (rank 0 gathers the full state dict on CPU), so that
evaluation and users load a checkpoint like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard

from xalign.config.schema import ScalingConfig
from xalign.model.forward import base_model, decoder_blocks

SHARDED_DIR = "sharded"


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def fsdp_groups(model: nn.Module) -> list[list[nn.Module]]:
    """The module groups ``wrap_fsdp`` shards, in order (each block; each weight-holding
    child of the blocks' owner and of the base model; the tied embedding with the LM head)."""
    owner, _, blocks = decoder_blocks(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = head is not None and embed is not None and head.weight is embed.weight
    groups: list[list[nn.Module]] = [[block] for block in blocks]
    seen = {id(blocks)} | {id(b) for b in blocks}
    for parent in (owner, base_model(model)):
        for child in parent.children():
            if id(child) in seen or not any(True for _ in child.parameters()):
                continue
            seen.add(id(child))
            groups.append([child, head] if tied and child is embed else [child])
    return groups


def wrap_fsdp(model: nn.Module, scaling: ScalingConfig, dtype: str, device: torch.device) -> nn.Module:
    """Shard ``model`` in place over the default process group (see the module docstring)."""
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if dtype == "bf16" else torch.float32,
                                  reduce_dtype=torch.float32)
    common = {"mp_policy": policy, "reshard_after_forward": scaling.reshard_after_forward}
    if scaling.cpu_offload:
        common["offload_policy"] = CPUOffloadPolicy()
    # fsdp_unit model: the root alone (early exit then runs through the root's forward, whose
    # hooks gather the weights; xalign.model.forward), so every forward completes the unit.
    for group in fsdp_groups(model) if scaling.fsdp_unit == "block" else []:
        fully_shard(group if len(group) > 1 else group[0], **common)
    fully_shard(model, **common)
    with torch.no_grad():
        model(input_ids=torch.ones(1, 1, dtype=torch.long, device=device), use_cache=False)
    # With reshard_after_forward=False that forward leaves every group gathered, and nothing
    # reshards it before the optimizer is built on the parameters (AdamW's first step then
    # crashed, SIGSEGV on gloo): start training from the sharded state, as after a backward.
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU: gathered from the shards (a collective: every
    rank calls it; rank 0 gets the tensors, the others an empty dict) or the model's own."""
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _with_objective(model: nn.Module, objective: Optional[nn.Module]) -> nn.Module:
    """What the optimizer trains, as one module: the model, or with the objective's learnable
    parameters (``objective.learn_temperature``: in the optimizer, not in the model) the two
    side by side, so that torch.distributed.checkpoint finds a name for every optimizer
    parameter (it fails with a KeyError on the temperature otherwise)."""
    if objective is None or not any(True for _ in objective.parameters()):
        return model
    return nn.ModuleDict({"model": model, "objective": objective})


def save_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 objective: Optional[nn.Module] = None) -> None:
    """Every rank writes its shard of the model and optimizer state to ``directory/sharded``."""
    module = _with_objective(model, objective)
    state = {"model": get_model_state_dict(module), "optim": get_optimizer_state_dict(module, optimizer)}
    dcp.save(state, checkpoint_id=str(Path(directory) / SHARDED_DIR))


def load_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 objective: Optional[nn.Module] = None) -> None:
    """Load ``directory/sharded`` into the wrapped model and its optimizer (any worker count)."""
    module = _with_objective(model, objective)
    state = {"model": get_model_state_dict(module), "optim": get_optimizer_state_dict(module, optimizer)}
    dcp.load(state, checkpoint_id=str(Path(directory) / SHARDED_DIR))
    set_model_state_dict(module, state["model"])
    set_optimizer_state_dict(module, optimizer, state["optim"])


def save_scaled(directory: Path, *, model, peft_model, tokenizer, optimizer, scheduler, objective: nn.Module,
                step: int, rank: int) -> None:
    """A checkpoint under fsdp and/or LoRA; called on EVERY rank (the gathers are collectives).

    fsdp: ``sharded/`` (every rank) + ``model/`` (rank 0, consolidated); LoRA: ``adapter/``
    (the adapters and modules_to_save) + ``model/`` (merged: what evaluation loads);
    ``trainer_state.pt`` (rank 0): the scheduler, objective, step, RNG and, without fsdp, the
    optimizer (LoRA: the adapters' moments only)."""
    from xalign.train.checkpoint import MODEL_DIR, STATE_FILE

    directory = Path(directory)
    if is_sharded(model):
        save_sharded(directory, model, optimizer, objective)
    full = full_state_dict(model)
    if rank != 0:
        return
    if peft_model is not None:
        from xalign.model.lora import export_lora

        fresh = unsharded_copy(model, peft_model)
        adapter, merged = export_lora(fresh, full, directory / "export", tokenizer)
        adapter.rename(directory / "adapter")
        merged.rename(directory / MODEL_DIR)
        (directory / "export").rmdir()
    else:
        model.save_pretrained(directory / MODEL_DIR, state_dict=dict(full))   # HF pops keys from it
        tokenizer.save_pretrained(directory / MODEL_DIR)
    state = {"step": step, "scheduler": scheduler.state_dict(), "objective": objective.state_dict(),
             "torch_rng": torch.get_rng_state()}
    if not is_sharded(model):
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, directory / STATE_FILE)


def load_scaled(directory: Path, *, model, peft_model, optimizer, scheduler, objective: nn.Module) -> int:
    """Restore a ``save_scaled`` checkpoint in place; the step to continue from."""
    from safetensors.torch import load_file

    from xalign.train.checkpoint import STATE_FILE

    directory = Path(directory)
    state = torch.load(directory / STATE_FILE, weights_only=True, map_location="cpu")
    if is_sharded(model):
        load_sharded(directory, model, optimizer, objective)
    else:
        from peft import set_peft_model_state_dict

        device = next(model.parameters()).device
        weights = load_file(str(directory / "adapter" / "adapter_model.safetensors"), device=str(device))
        result = set_peft_model_state_dict(peft_model, weights)
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"checkpoint {directory} does not match the adapters: unexpected "
                               f"{result.unexpected_keys[:5]}")
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    objective.load_state_dict(state["objective"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def unsharded_copy(model: nn.Module, peft_model):
    """A fresh CPU peft model of the same architecture and adapters (weights to be loaded):
    exporting merges in place, which the training model must not undergo."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    config = peft_model.peft_config["default"]
    return get_peft_model(base, config)


def unsharded_model(model: nn.Module, peft_model=None):
    """Rank 0: an unsharded copy of the FSDP ``model`` (same device, eval mode; LoRA adapters
    merged) for evaluation; other ranks: None. A collective: every rank calls it."""
    from transformers import AutoModelForCausalLM

    full = full_state_dict(model)
    if not full:
        return None
    device = next(iter(model.buffers()), torch.empty(0)).device
    if peft_model is not None:
        fresh = unsharded_copy(model, peft_model)
        fresh.get_base_model().load_state_dict(full, strict=False)
        copy = fresh.merge_and_unload()
    else:
        copy = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
        copy.load_state_dict(full, strict=False)
    return copy.to(device).eval()
