"""Response-only language-model loss over the examples of ``xalign.data.collate``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xalign.data.collate import IGNORE_INDEX
from xalign.model.forward import lm_response_logits


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the tokens whose label is not -100.

    Logits at position t predict the label at t + 1. Computed in float32.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (batch, seq)")
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(logits.device)
    if not (shift_labels != IGNORE_INDEX).any():
        raise ValueError("lm_loss got no labelled token (every label after the first is -100)")
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def response_lm_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """``lm_loss`` of the batch's ``lm_*`` rows with the LM head run at the labelled positions
    only (``xalign.model.forward.lm_response_logits``): the same value and gradients
    (tests/test_large_vocab.py checks both) without logits over the whole vocabulary at
    every prompt and pad position. Computed in float32."""
    logits, targets = lm_response_logits(model, batch)
    return F.cross_entropy(logits.float(), targets.to(logits.device))
