"""Checkpoint layout (one directory):

    model/              the model and tokenizer in HF format (save_pretrained): loadable as is
    trainer_state.pt    optimizer, scheduler, objective state (learnable temperature), step,
                        the torch RNG state; read back with weights_only=True (no arbitrary pickle)

The data position needs no saving: the batch order is a pure function of the step
(xalign.data.stream), so the step number is the data position.
"""

from __future__ import annotations

from pathlib import Path

import torch

STATE_FILE = "trainer_state.pt"
MODEL_DIR = "model"


def save_checkpoint(directory: Path, *, model, tokenizer, optimizer, scheduler, objective: torch.nn.Module,
                    step: int) -> None:
    directory = Path(directory)
    model.save_pretrained(directory / MODEL_DIR)
    tokenizer.save_pretrained(directory / MODEL_DIR)
    torch.save({
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "objective": objective.state_dict(),
        "torch_rng": torch.get_rng_state(),  # dropout, if the model has any
    }, directory / STATE_FILE)


def load_checkpoint(directory: Path, *, model, optimizer, scheduler, objective: torch.nn.Module) -> int:
    """Restore everything in place; return the step to continue from."""
    from safetensors.torch import load_file

    directory = Path(directory)
    weights = {}
    for shard in sorted((directory / MODEL_DIR).glob("*.safetensors")):
        weights.update(load_file(shard, device=str(next(model.parameters()).device)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied weights (the LM head) are saved once; anything else missing is corruption.
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    really_missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if really_missing or unexpected:
        raise RuntimeError(f"checkpoint {directory} does not match the model: missing {really_missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    state = torch.load(directory / STATE_FILE, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    objective.load_state_dict(state["objective"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])
