"""``model.freeze``: parameters that training leaves as they are.

A frozen parameter gets ``requires_grad=False`` before the optimizer is built, so it has no
gradient, no AdamW state, no part in gradient clipping and no part in the gradient
all-reduce between workers (``xalign.optim``: all of them take only parameters that require
a gradient). With a 262k-token vocabulary the embedding table is most of a small model
(Gemma 3 270M: 168M of 268M parameters): freezing it removes most of the optimizer's work
and of the all-reduce's bytes.

``embeddings: true`` freezes ``model.get_input_embeddings().weight``. Models that tie it to
the LM head (Gemma, XGLM, BLOOM, Qwen2.5-0.5B: ``tie_word_embeddings``) share ONE tensor
between the two, so the LM head is frozen with it: the instruction loss then trains the
blocks only. ``params`` are ``fnmatch`` patterns over ``model.named_parameters()`` names
(e.g. ``model.layers.0.*``, ``*.mlp.*``); each must match at least one parameter, so a typo
is an error instead of a silently unfrozen model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from torch import nn

from xalign.errors import XalignError


class FreezeError(XalignError, ValueError):
    """A ``model.freeze`` setting that names nothing, or leaves nothing to train."""


def frozen_names(names: Iterable[str], *, embedding_names: Iterable[str] = (), embeddings: bool = False,
                 patterns: Iterable[str] = (), model_name: str = "the model") -> set[str]:
    """The parameter names ``model.freeze`` freezes among ``names`` (checks every pattern)."""
    names = list(names)
    frozen = set(embedding_names) if embeddings else set()
    for i, pattern in enumerate(patterns):
        hits = fnmatch.filter(names, pattern)
        if not hits:
            close = [n for n in names if fnmatch.fnmatch(n, f"*{pattern.strip('*.')}*")][:3]
            shown = ", ".join(close or names[:3])
            raise FreezeError(
                f"model.freeze.params[{i}]: {pattern!r} matches no parameter of {model_name} "
                f"({len(names)} parameters; {'similar' if close else 'e.g.'}: {shown}). Patterns are fnmatch "
                "globs over model.named_parameters() names")
        frozen.update(hits)
    if frozen and frozen >= set(names):
        raise FreezeError(f"model.freeze freezes all {len(names)} parameters of {model_name}: nothing left to train")
    return frozen


def embedding_parameter_names(model: nn.Module) -> list[str]:
    """Names under which the input embedding table appears (once per tied alias is enough:
    ``named_parameters`` lists a tied tensor once)."""
    table = model.get_input_embeddings().weight
    return [name for name, p in model.named_parameters() if p is table]


def apply_freeze(model: nn.Module, freeze) -> list[str]:
    """Set ``requires_grad=False`` on what ``freeze`` (a ``FreezeConfig``) names; returns the
    frozen names, sorted. Tied weights are one parameter: freezing either freezes both."""
    names = [name for name, _ in model.named_parameters()]
    frozen = frozen_names(names, embedding_names=embedding_parameter_names(model), embeddings=freeze.embeddings,
                          patterns=freeze.params, model_name=type(model).__name__)
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return sorted(frozen)


def freeze_summary(model: nn.Module) -> str:
    """'168,034,304 of 268,098,176 parameters frozen (62.7%)' for the run's log."""
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return f"{frozen:,} of {total:,} parameters frozen ({100 * frozen / max(total, 1):.1f}%)"


def check_freeze(model_cfg, name: str) -> None:
    """``model.freeze`` checked against the parameter names of the model at ``name`` (a folder
    or hub id; a ``.gguf`` file through its converted folder), built from its config on the
    meta device (no weights, no memory): for the driver, before any worker starts. A GGUF
    file not converted yet is left to the workers' ``apply_freeze``, which raises the same."""
    if not model_cfg.freeze.embeddings and not model_cfg.freeze.params:
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if name.lower().endswith(".gguf"):
        from xalign.model.gguf import cached_gguf_folder

        folder = cached_gguf_folder(name, model_cfg.dtype)
        if folder is None:
            return
        name = str(folder)
    config = AutoConfig.from_pretrained(name, trust_remote_code=model_cfg.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
    apply_freeze(model, model_cfg.freeze)
