"""What can be known about a run's model before any worker starts, from its config and
tokenizer alone (no weights): the pooled layer exists, the pooler and the tokenizer's padding
side are ones xalign handles, every token id of the tokenizer has a row in the embedding
table, and the dtype runs where the run runs. Each problem is one ``ModelLoadError`` line
naming the key and the valid values; the driver (train, sweep) and ``xalign eval`` call
``check_run_model`` before Ray starts, so a bad value never reaches a worker (where Ray would
spend its restarts on it)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from xalign.config.schema import RunConfig
from xalign.model.gguf import is_gguf
from xalign.model.loading import ModelLoadError, resolve_model_path
from xalign.model.pooling import POOLERS, resolve_layers


def model_label(cfg: RunConfig) -> str:
    """How errors name the model: the GGUF file's name, else ``model.name_or_path``."""
    name = cfg.model.name_or_path
    return Path(name).name if is_gguf(name) else name


def check_run_model(cfg: RunConfig, world_dir: Optional[Path], tokenizer) -> dict:
    """Raise ``ModelLoadError`` for the first problem; return what was read (blocks, vocab)."""
    from transformers import AutoConfig

    name = resolve_model_path(cfg.model, world_dir)
    config = AutoConfig.from_pretrained(name, trust_remote_code=cfg.model.trust_remote_code).get_text_config()
    label = model_label(cfg)
    blocks = int(config.num_hidden_layers)
    try:
        resolve_layers(cfg.objective.layer, blocks, model_name=label)
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"objective.layer: {exc}") from None
    if cfg.objective.pooler not in POOLERS:
        raise ModelLoadError(f"objective.pooler: {cfg.objective.pooler!r} is not a pooler; available: "
                             f"{', '.join(sorted(POOLERS))}")
    side = getattr(tokenizer, "padding_side", "right")
    if side not in ("left", "right"):
        raise ModelLoadError(f"model.tokenizer: the tokenizer of {label} pads on the {side!r} side; xalign pools and "
                             "scores with left or right padding only")
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None:
        size = len(tokenizer)
        if size > vocab:
            which = f"model.tokenizer ({cfg.model.tokenizer})" if cfg.model.tokenizer else "the model's tokenizer"
            raise ModelLoadError(f"model.tokenizer: {which} has {size:,} tokens but {label}'s embedding table has "
                                 f"{vocab:,} rows, so ids {vocab:,}..{size - 1:,} would index past it; use the model's "
                                 "own tokenizer (leave model.tokenizer unset) or one of at most that size")
        pad = tokenizer.pad_token_id
        if pad is not None and not 0 <= pad < vocab:
            raise ModelLoadError(f"model.pad_token: the pad token id {pad} is outside {label}'s vocabulary "
                                 f"(0..{vocab - 1:,}); choose a token of its vocabulary (e.g. model.pad_token=eos)")
    if cfg.model.dtype == "bf16" and cfg.scaling.use_gpu:
        import torch

        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ModelLoadError(f"model.dtype: bf16 is not supported by this GPU ({torch.cuda.get_device_name()}); "
                                 "set model.dtype=fp32")
    return {"blocks": blocks, "vocab_size": vocab}
