"""Load any HF causal LM and its tokenizer: by hub id, local path, or the synthetic world's
base model. No per-architecture code: AutoModelForCausalLM, the model's own LM head, weight
tying kept."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from xalign.config.schema import WORLD_MODEL, ModelConfig
from xalign.errors import XalignError
from xalign.model.gguf import check_gguf, ensure_converted, is_gguf

log = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


class ModelLoadError(XalignError, ValueError):
    """A model or tokenizer that cannot be used, with the key and value to fix."""


def resolve_model_path(cfg: ModelConfig, world_dir: Optional[Path]) -> str:
    """``world`` means the base model saved inside the synthetic world's directory."""
    if cfg.name_or_path == WORLD_MODEL:
        if world_dir is None:
            raise ModelLoadError("model.name_or_path is 'world' but no synthetic world was built")
        path = Path(world_dir) / "base_model"
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model.name_or_path is 'world' but {path} holds no model; "
                                 "rebuild the world with `xalign world build`")
        return str(path)
    if is_gguf(cfg.name_or_path):
        # The HF folder converted from the file (xalign.model.gguf): the driver converted it
        # before Ray started, so workers, evaluations and sweep trials find it in the cache.
        return str(ensure_converted(str(Path(cfg.name_or_path).expanduser()), cfg.dtype, progress=False))
    return str(Path(cfg.name_or_path).expanduser()) if cfg.name_or_path.startswith(("~",)) else cfg.name_or_path


def prepare_model(cfg: ModelConfig, *, progress: bool = True) -> None:
    """Work done once, in the driver, before anything else starts: a GGUF file is checked
    (header only) and converted to its cached HF folder, with a progress display."""
    if is_gguf(cfg.name_or_path):
        path = str(Path(cfg.name_or_path).expanduser())
        check_gguf(path)
        ensure_converted(path, cfg.dtype, progress=progress)


def load_tokenizer(cfg: ModelConfig, world_dir: Optional[Path] = None):
    """The tokenizer, with a pad token (set from ``model.pad_token`` when it has none)."""
    from transformers import AutoTokenizer

    name = cfg.tokenizer or resolve_model_path(cfg, world_dir)
    if cfg.tokenizer is None and cfg.name_or_path == WORLD_MODEL:
        name = str(Path(world_dir) / "tokenizer")
    if cfg.trust_remote_code:
        log.warning("model.trust_remote_code is on: %s may run code from its repository", name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.tokenizer: cannot load a tokenizer from {name!r}: {exc}") from exc
    if tokenizer.pad_token is None:
        if cfg.pad_token is None:
            raise ModelLoadError(
                f"the tokenizer of {name!r} has no pad token, which batching needs; set model.pad_token "
                f"(e.g. model.pad_token=eos to reuse {tokenizer.eos_token!r}, or any token of its vocabulary)")
        token = tokenizer.eos_token if cfg.pad_token == "eos" else cfg.pad_token
        if token is None or token not in tokenizer.get_vocab():
            raise ModelLoadError(f"model.pad_token: {cfg.pad_token!r} is not a token of {name!r}'s vocabulary")
        tokenizer.pad_token = token
    return tokenizer


def check_model(cfg: ModelConfig, world_dir: Optional[Path] = None) -> None:
    """What the workers will load, checked in the driver without loading weights: the
    config is readable and names a causal LM, and a local folder holds weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    prepare_model(cfg)
    name = resolve_model_path(cfg, world_dir)
    local = Path(name)
    if not local.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ModelLoadError(f"model.name_or_path: {name!r} does not exist (a local path, since it is not a hub id "
                             "of the form org/name)")
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"model.name_or_path: cannot read a model config from {name!r}: {first}") from exc
    if type(config) not in AutoModelForCausalLM._model_mapping and not cfg.trust_remote_code:
        raise ModelLoadError(f"model.name_or_path: {name!r} is a {config.model_type!r} model, which has no causal LM "
                             "head in transformers; xalign aligns decoder LMs (e.g. XGLM, BLOOM, Llama, Qwen)")
    if local.is_dir() and not any(local.glob("*.safetensors")) and not any(local.glob("*.bin")):
        raise ModelLoadError(f"model.name_or_path: {name!r} has a config.json but no weights (*.safetensors or "
                             "*.bin); save the model with save_pretrained or point at the folder that has them")


def load_model(cfg: ModelConfig, world_dir: Optional[Path] = None, *, for_training: bool = False):
    """The causal LM with gradient checkpointing when asked. Weights are in ``cfg.dtype``,
    or fp32 master weights ``for_training`` (bf16 then comes from autocast)."""
    import torch
    from transformers import AutoModelForCausalLM

    name = resolve_model_path(cfg, world_dir)
    if cfg.trust_remote_code:
        log.warning("model.trust_remote_code is on: %s may run code from its repository", name)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=torch.float32 if for_training else getattr(torch, DTYPES[cfg.dtype]),
            trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.name_or_path: cannot load a causal LM from {name!r}: {exc}") from exc
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model


def num_blocks(model) -> int:
    """Number of transformer blocks (hidden_states has this many + 1 entries)."""
    return int(model.config.get_text_config().num_hidden_layers)
