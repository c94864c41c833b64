"""The AFP training objective for one batch.

    loss = contrastive_weight * L_contrastive + lm_weight * L_instruction

A branch whose weight is 0 is not computed at all. The contrastive branch pools hidden
states of the translation pair's two sides (``xalign.model.forward``); with ``early_exit``
it runs only the embedding and the blocks up to the deepest pooled layer (with the released
layer 1 that skips nearly the whole network).

The objective is the config's own ``ObjectiveConfig`` (one type from the YAML file to the
loss); the layers are resolved against the model here.

Under DDP pass the unwrapped module (``model.module``): the contrastive branch calls the
base model directly to skip the LM head.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from xalign.config.schema import ObjectiveConfig
from xalign.model.forward import sentence_vectors, stack_sides
from xalign.model.pooling import model_layers
from xalign.objectives.contrastive import info_nce
from xalign.objectives.lm import response_lm_loss


def alignment_loss(model: nn.Module, batch: dict, objective: ObjectiveConfig, *,
                   temperature: Optional[Union[float, torch.Tensor, nn.Module]] = None,
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted total loss, parts) for one batch under ``objective`` (the config section).

    ``temperature`` replaces ``objective.temperature`` when it is learned (a
    ``LearnableTemperature`` module, called here). ``batch``: src_input_ids/
    src_attention_mask and tgt_input_ids/tgt_attention_mask (the translation pair; src is
    the anchor/pivot side), optionally neg_input_ids/neg_attention_mask (a hard negative per
    pair) for the contrastive branch; lm_input_ids/lm_labels/lm_attention_mask (+ optional
    lm_position_ids; a 4D mask for packed rows) for the instruction branch. ``parts`` holds
    detached "loss", "contrastive" and "lm" (only the branches computed), and
    "contrastive/layer<i>" when several layers are pooled (the contrastive loss is their mean).
    """
    cfg = objective
    total = None
    parts: dict[str, torch.Tensor] = {}
    if cfg.contrastive_weight > 0:
        if temperature is None:
            temperature = cfg.temperature
        elif isinstance(temperature, nn.Module):
            temperature = temperature()
        layers = model_layers(model, cfg.layer)
        common = {"layers": layers, "pooler": cfg.pooler, "early_exit": cfg.early_exit}
        sides = ["src", "tgt"] + (["neg"] if "neg_input_ids" in batch else [])  # neg: a hard negative per pair
        if cfg.fused_sides:
            ids, mask, sizes = stack_sides([(batch[f"{s}_input_ids"], batch[f"{s}_attention_mask"]) for s in sides])
            vectors = [v.split(sizes) for v in sentence_vectors(model, ids, mask, **common)]
            per_side = [[v[k] for v in vectors] for k in range(len(sides))]
        else:
            per_side = [sentence_vectors(model, batch[f"{s}_input_ids"], batch[f"{s}_attention_mask"], **common)
                        for s in sides]
        src, tgt = per_side[0], per_side[1]
        neg = per_side[2] if len(sides) == 3 else [None] * len(layers)
        per_layer = [
            info_nce(s, t, temperature=temperature, symmetric=cfg.symmetric, hard_negatives=n,
                     scaling=cfg.gradient_scaling)
            for s, t, n in zip(src, tgt, neg)
        ]
        contrastive = torch.stack(per_layer).mean()
        parts["contrastive"] = contrastive.detach()
        if len(layers) > 1:
            for layer, value in zip(layers, per_layer):
                parts[f"contrastive/layer{layer}"] = value.detach()
        total = cfg.contrastive_weight * contrastive
    if cfg.lm_weight > 0:
        instruction = response_lm_loss(model, batch)  # LM head at response tokens only
        parts["lm"] = instruction.detach()
        total = cfg.lm_weight * instruction if total is None else total + cfg.lm_weight * instruction
    parts["loss"] = total.detach()
    return total, parts
