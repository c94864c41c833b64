"""LoRA adapters through ``peft`` (``model.lora``).

``apply_lora`` injects the adapters into the HF model in place and returns both the
``PeftModel`` (for saving the adapter and merging) and the model to TRAIN, which is the HF
model itself with LoRA layers inside: its ``model.model`` / decoder blocks are unchanged, so
early exit (which calls the base transformer, not the causal LM) and FSDP's per-block
wrapping work as without LoRA. The PeftModel wrapper's own forward would go through the LM
head even for the early-exit branch.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from xalign.config.schema import LoraConfig
from xalign.model.loading import ModelLoadError


def module_suffixes(model: nn.Module) -> set[str]:
    """Every dotted suffix of every module name (what peft's target_modules match)."""
    out: set[str] = set()
    for name, _ in model.named_modules():
        parts = name.split(".")
        out.update(".".join(parts[i:]) for i in range(len(parts)) if name)
    return out


def check_lora_targets(model: nn.Module, cfg: LoraConfig) -> None:
    """``model.lora.target_modules`` / ``modules_to_save`` each name a module of ``model``
    (peft matches them as name suffixes); targets must be linear-like layers."""
    suffixes = module_suffixes(model)
    for key, names in (("target_modules", cfg.target_modules), ("modules_to_save", cfg.modules_to_save)):
        missing = [n for n in names if n not in suffixes]
        if missing:
            linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                             if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"})
            raise ModelLoadError(
                f"model.lora.{key}: {missing} name no module of {type(model).__name__}; its linear layers are "
                f"{linear}" + (" (and e.g. embed_tokens, norm for modules_to_save)" if key == "modules_to_save" else ""))


def apply_lora(model: nn.Module, cfg: LoraConfig):
    """(peft model, the model to train) with adapters on ``cfg.target_modules``; everything
    else frozen except ``cfg.modules_to_save`` (trained in full)."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    check_lora_targets(model, cfg)
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules),
                              modules_to_save=list(cfg.modules_to_save) or None, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, peft_cfg)
    return peft_model, peft_model.get_base_model()


def export_lora(peft_model, full_state: dict, directory: Path, tokenizer=None) -> tuple[Path, Path]:
    """Write ``directory/adapter`` (peft's adapter files) and ``directory/merged`` (an HF
    model with the adapters merged in, loadable by AutoModelForCausalLM) from ``full_state``,
    the trained model's full state dict (consolidated from FSDP shards when sharded).
    ``peft_model`` is an unsharded peft model of the same shape; it is changed in place."""
    directory = Path(directory)
    missing, unexpected = peft_model.get_base_model().load_state_dict(full_state, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"LoRA export: state does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    peft_model.save_pretrained(directory / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(directory / "merged")
    if tokenizer is not None:
        tokenizer.save_pretrained(directory / "adapter")
        tokenizer.save_pretrained(directory / "merged")
    return directory / "adapter", directory / "merged"
