"""The memory plan of a run: bytes per worker for weights, gradients, optimizer state and an
activation estimate under the chosen strategy, dtype, offload, LoRA and batch; checked
before anything launches, printed at run start, and by ``xalign plan RUN.yaml``.

``memory_plan`` is a pure function of numbers (``ModelShape`` and the knobs); ``model_shape``
reads them from the model's config (no weights: the model is built on the meta device).

Accounting (per worker, bytes):
- weights: fp32 master copy (training always keeps one; bf16 runs under autocast or FSDP's
  bf16 parameter policy). ddp: all of it. fsdp: 1/W of it, plus the gathered copies in
  flight in the compute dtype: two decoder blocks (the running one and the prefetched one)
  and the embedding group (tied head); ``scaling.fsdp_unit: model``: the whole model. With
  ``cpu_offload`` the shards live in CPU memory.
- gradients: fp32, trainable parameters only (LoRA: the adapters; else all but what
  ``model.freeze`` freezes); fsdp: 1/W, plus one gathered block's gradients in flight
  (``fsdp_unit: model``: all of them, before the reduce-scatter).
- optimizer: AdamW's two fp32 moments per trainable parameter; fsdp: 1/W; offload: CPU.
- activations: what the backward keeps, per decoder block and row (Korthikanti et al. 2022,
  no sequence parallelism): seq * hidden * (34 + 5 * heads * seq / hidden) bytes at 16 bit
  (x2 for fp32), for the LM rows through every block and for the contrastive rows (2 sides,
  3 with hard negatives) through the blocks early exit runs; plus the LM logits in fp32
  (rows * seq * vocab * 4, x2 for their gradient). Gradient checkpointing keeps one block's
  input per block and one block's full activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from xalign import progress
from xalign.errors import XalignError

GiB = 2**30


@dataclass(frozen=True)
class ModelShape:
    params: int             # all parameters (a tied embedding once)
    layers: int
    hidden: int
    heads: int
    vocab: int
    block_params: int       # one decoder block
    embedding_params: int   # the input embedding (tied: also the head)
    lora_params: int = 0    # adapters + modules_to_save under model.lora, else 0
    frozen_params: int = 0  # parameters model.freeze takes out of training (no gradient, no AdamW state)


@dataclass(frozen=True)
class Knobs:
    strategy: str = "ddp"
    workers: int = 1
    dtype: str = "fp32"
    cpu_offload: bool = False
    fsdp_unit: str = "block"
    lora: bool = False
    batch: int = 2
    seq: int = 512
    gradient_checkpointing: bool = False
    contrastive_layers: int = 1     # blocks the contrastive branch runs (early exit), 0 = no contrastive branch
    contrastive_sides: int = 2      # src, tgt (+ hard negative)
    lm: bool = True


@dataclass
class Plan:
    knobs: Knobs
    weights: float
    gradients: float
    optimizer: float
    activations: float
    cpu: float                      # offloaded bytes (in the worker's node memory, beside the process)
    notes: list[str] = field(default_factory=list)
    #: settings that work but gain nothing (each names its config key); printed, never refused
    warnings: list[str] = field(default_factory=list)

    @property
    def device_total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def lines(self) -> list[str]:
        k = self.knobs
        head = (f"memory plan per worker: {k.strategy} x {k.workers} worker(s), {k.dtype}"
                f"{', the whole model one FSDP unit' if k.strategy == 'fsdp' and k.fsdp_unit == 'model' else ''}"
                f"{', cpu offload' if k.cpu_offload else ''}{', LoRA' if k.lora else ''}"
                f"{', gradient checkpointing' if k.gradient_checkpointing else ''}, batch {k.batch} x seq {k.seq}")
        rows = [head,
                f"  weights      {self.weights / GiB:8.2f} GiB",
                f"  gradients    {self.gradients / GiB:8.2f} GiB",
                f"  optimizer    {self.optimizer / GiB:8.2f} GiB",
                f"  activations  {self.activations / GiB:8.2f} GiB (estimate)",
                f"  total        {self.device_total / GiB:8.2f} GiB"
                + (f" (+ {self.cpu / GiB:.2f} GiB offloaded to CPU memory)" if self.cpu else "")]
        return rows + [f"  warning: {w}" for w in self.warnings] + [f"  note: {n}" for n in self.notes]


def memory_plan(shape: ModelShape, knobs: Knobs) -> Plan:
    k = knobs
    compute = 2 if k.dtype == "bf16" else 4
    trainable = shape.lora_params if k.lora else shape.params - shape.frozen_params
    w = k.workers if k.strategy == "fsdp" else 1
    master = 4 * (shape.params + (shape.lora_params if k.lora else 0))
    gradients = 4 * trainable / w
    optimizer = 8 * trainable / w
    weights = master / w
    if k.strategy == "fsdp" and k.fsdp_unit == "model":   # the whole model gathered, its gradient unreduced
        weights += compute * shape.params
        gradients += 4 * trainable
    elif k.strategy == "fsdp":
        in_flight = compute * (2 * shape.block_params + shape.embedding_params)
        weights += in_flight
        gradients += 4 * (shape.block_params if not k.lora else 0)
    cpu = 0.0
    if k.cpu_offload:
        cpu = master / w + optimizer + 4 * trainable / w
        weights -= master / w
        optimizer = 0.0
        gradients -= 4 * trainable / w
    per_block_row = k.seq * shape.hidden * (34 + 5 * shape.heads * k.seq / shape.hidden) * (compute / 2)
    lm_rows = k.batch if k.lm else 0
    ctr_rows = k.batch * k.contrastive_sides if k.contrastive_layers else 0
    if k.gradient_checkpointing:
        keep = compute * k.seq * shape.hidden
        activations = (lm_rows * shape.layers + ctr_rows * k.contrastive_layers) * keep \
            + max(lm_rows, ctr_rows) * per_block_row
    else:
        activations = (lm_rows * shape.layers + ctr_rows * k.contrastive_layers) * per_block_row
    activations += lm_rows * k.seq * shape.vocab * 4 * 2
    return Plan(k, weights, max(gradients, 0.0), optimizer, activations, cpu, warnings=knob_warnings(k))


def knob_warnings(k: Knobs) -> list[str]:
    """Settings that run but gain nothing, each naming its key (a warning, not an error)."""
    out = []
    if k.strategy == "fsdp" and k.workers == 1 and not k.cpu_offload:
        out.append("scaling.strategy is fsdp with scaling.num_workers 1 and no scaling.cpu_offload: one worker "
                   "shards nothing, so it holds as much memory as ddp (plus the gathered copies) and only adds "
                   "FSDP's overhead; use scaling.strategy=ddp, more workers, or scaling.cpu_offload=true on a GPU")
    return out


def knobs_from_config(cfg, shape: ModelShape, *, workers: Optional[int] = None) -> Knobs:
    """The plan's knobs from a RunConfig: data.max_length as seq, the blocks the contrastive
    branch runs (its deepest pooled layer with early exit, else all)."""
    from xalign.model.pooling import resolve_layers

    o = cfg.objective
    layers = 0
    if o.contrastive_weight > 0:
        layers = max(max(resolve_layers(o.layer, shape.layers)), 1) if o.early_exit else shape.layers
    return Knobs(strategy=cfg.scaling.strategy, workers=workers or cfg.scaling.num_workers, dtype=cfg.model.dtype,
                 cpu_offload=cfg.scaling.cpu_offload, fsdp_unit=cfg.scaling.fsdp_unit, lora=cfg.model.lora is not None, batch=cfg.optim.batch_size,
                 seq=cfg.data.max_length, gradient_checkpointing=cfg.model.gradient_checkpointing,
                 contrastive_layers=layers, contrastive_sides=3 if o.hard_negatives else 2, lm=o.lm_weight > 0)


def fitting_knobs(shape: ModelShape, knobs: Knobs, limit: float, *, gpu: bool) -> list[str]:
    """Single changes to ``knobs`` whose plan fits ``limit`` bytes, as readable lines. On CPU
    ``limit`` is a worker's share of this node's memory: a change to n workers shares the
    node n ways (``limit`` x workers / n), so more workers on one node never fit by themselves."""
    options = []
    for n in (2, 4, 8, 16, 32, 64):
        if n > knobs.workers:
            options.append((f"fsdp on {n} workers (scaling.strategy=fsdp scaling.num_workers={n})",
                            replace(knobs, strategy="fsdp", workers=n)))
    if knobs.strategy == "ddp" and knobs.workers > 1:
        options.append(("scaling.strategy=fsdp", replace(knobs, strategy="fsdp")))
    if gpu and not knobs.cpu_offload:
        options.append(("scaling.strategy=fsdp scaling.cpu_offload=true",
                        replace(knobs, strategy="fsdp", cpu_offload=True)))
    if not knobs.lora:
        options.append(("model.lora (adapters only; e.g. model.lora.r=16)", replace(knobs, lora=True)))
    if knobs.batch > 1:
        options.append((f"optim.batch_size={max(1, knobs.batch // 2)} (raise optim.grad_accum_steps to keep the "
                        "LM batch; the contrastive negatives shrink)", replace(knobs, batch=max(1, knobs.batch // 2))))
    if not knobs.gradient_checkpointing:
        options.append(("model.gradient_checkpointing=true", replace(knobs, gradient_checkpointing=True)))
    out, more_workers = [], False
    for text, option in options:
        plan = memory_plan(shape, option)
        allowed = limit if gpu else limit * knobs.workers / option.workers
        if plan.device_total <= allowed and not (more_workers and text.startswith("fsdp on")):
            more_workers = more_workers or text.startswith("fsdp on")   # the fewest workers that fit
            out.append(f"{text}: {plan.device_total / GiB:.1f} GiB per worker")
    return out


def check_plan(plan: Plan, shape: ModelShape, *, limit: Optional[float], what: str) -> Optional[str]:
    """None when the plan fits ``limit`` bytes (or no limit is known), else the refusal text:
    the totals and the single changes that would fit (not the plan's lines: every caller
    prints the plan itself, once, before the refusal)."""
    if limit is None or plan.device_total <= limit:
        return None
    gpu = what.startswith("GPU")
    fits = fitting_knobs(shape, plan.knobs, limit, gpu=gpu)
    return "\n".join([f"the memory plan needs {plan.device_total / GiB:.1f} GiB per worker but a {what} has "
                      f"{limit / GiB:.1f} GiB.",
                      "changes that would fit:" if fits else "no single change fits; combine them (e.g. fsdp on more "
                      "workers with LoRA and gradient checkpointing)", *[f"  - {f}" for f in fits]])


def model_shape(model_cfg, world_dir=None) -> ModelShape:
    """The parameter counts of ``model_cfg``'s model, built on the meta device (no weights
    read), with the LoRA adapters counted when ``model.lora`` is set."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from xalign.model.loading import resolve_model_path

    name = resolve_model_path(model_cfg, world_dir)
    config = AutoConfig.from_pretrained(name, trust_remote_code=model_cfg.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
    return shape_of(model, model_cfg.lora, model_cfg.freeze)


def shape_of(model, lora_cfg=None, freeze_cfg=None) -> ModelShape:
    from torch import nn

    from xalign.model.forward import decoder_blocks

    text = model.config.get_text_config()
    blocks = decoder_blocks(model)[2]
    lora = 0
    if lora_cfg is not None:
        from xalign.model.lora import check_lora_targets

        check_lora_targets(model, lora_cfg)
        for name, module in model.named_modules():
            short = name.split(".")
            suffixes = {".".join(short[i:]) for i in range(len(short))}
            if isinstance(module, nn.Linear) and suffixes & set(lora_cfg.target_modules):
                lora += lora_cfg.r * (module.in_features + module.out_features)
            if suffixes & set(lora_cfg.modules_to_save):
                lora += sum(p.numel() for p in module.parameters())
    frozen = 0
    if freeze_cfg is not None and (freeze_cfg.embeddings or freeze_cfg.params):
        from xalign.model.freeze import embedding_parameter_names, frozen_names

        named = dict(model.named_parameters())
        names = frozen_names(named, embedding_names=embedding_parameter_names(model),
                             embeddings=freeze_cfg.embeddings, patterns=freeze_cfg.params,
                             model_name=type(model).__name__)
        frozen = sum(named[n].numel() for n in names)
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", 1)
    return ModelShape(params=sum(p.numel() for p in model.parameters()), layers=len(blocks),
                      hidden=int(text.hidden_size), heads=int(heads), vocab=int(text.vocab_size),
                      block_params=sum(p.numel() for p in blocks[0].parameters()),
                      embedding_params=model.get_input_embeddings().weight.numel(), lora_params=lora,
                      frozen_params=frozen)


def memory_limits(cfg) -> tuple[Optional[float], str]:
    """(bytes a worker may use, what that is): ``scaling.gpu_memory_gb`` or this machine's
    first GPU for a GPU run; this machine's memory divided among the workers it hosts
    for a CPU run (None when unknown)."""
    s = cfg.scaling
    if s.use_gpu:
        if s.gpu_memory_gb is not None:
            return s.gpu_memory_gb * GiB, "GPU (scaling.gpu_memory_gb)"
        try:
            import torch

            if torch.cuda.is_available():
                return float(torch.cuda.get_device_properties(0).total_memory), "GPU of this machine"
        except Exception:   # noqa: BLE001  (no driver: the limit is unknown, not an error)
            pass
        return None, "GPU (unknown here: set scaling.gpu_memory_gb to check)"
    import os

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total / s.num_workers, f"CPU worker's share of this node's memory ({total / GiB:.0f} GiB / {s.num_workers})"


def run_plan(cfg, world_dir=None) -> tuple[Plan, ModelShape, Optional[str]]:
    """(plan, model shape, refusal text or None) for a RunConfig."""
    shape = model_shape(cfg.model, world_dir)
    plan = memory_plan(shape, knobs_from_config(cfg, shape))
    limit, what = memory_limits(cfg)
    plan.notes.append(f"limit: {limit / GiB:.1f} GiB per worker ({what})" if limit else f"limit: {what}")
    return plan, shape, check_plan(plan, shape, limit=limit, what=what)


class MemoryPlanError(XalignError, ValueError):
    """A run whose memory plan exceeds what a worker has: the numbers and the knobs."""


def check_memory(cfg, world_dir=None) -> Plan:
    """Print the run's plan; refuse (MemoryPlanError: the totals and the knobs, the plan
    having been printed just before) a run that does not fit. Also checks
    ``model.lora``'s module names against the model (ModelLoadError naming the key)."""
    plan, _, refusal = run_plan(cfg, world_dir)
    for line in plan.lines():
        progress.note(line)
    if refusal:
        raise MemoryPlanError(refusal)
    return plan
