"""Alignment-step throughput and memory, each against a baseline measured in the same run.

    python benchmarks/alignment_step.py                          # CPU, the world's model shape
    python benchmarks/alignment_step.py --model xglm-564m --device cuda --dtype bf16 --batch 4 --length 512

What it measures (every number in its own subprocess, so peak memory is per measurement):

1. The contrastive branch alone (InfoNCE over B pairs of exactly L tokens per side, forward +
   backward), early exit on vs off, at layer 1 and at the middle layer of a 24-block model
   (``--deep-model``, default ``deep-24``); and both sides in one forward vs one per side.
2. The whole alignment step (contrastive + instruction LM loss, AdamW) on the synthetic
   world's data: a plain single-process PyTorch loop vs xalign's loop on Ray Train (one
   worker holding every CPU, or one GPU), both read at steady state: the median tokens/s
   of 10-step windows after the first two. The ratio is the cost of Ray Train, reporting
   and MLflow logging (a SQLite store) per step.
3. Data: the share of the step spent collating micro-batches, and the padding that
   ``data.group_by_length`` removes.
4. The step at an exact shape (B rows of L tokens for each pair side and for the LM rows):
   steps/s, tokens/s, and on a GPU the MFU, 6 x parameters x tokens/s over the GPU's bf16
   peak (``--peak-tflops`` for GPUs not in the table), next to the paper's 7.55 steps/s for
   XGLM-564M at batch 4 x 512 on one A800 (their number, not re-measured here).

Models are built from a config with random weights (nothing is downloaded): ``tiny`` (the
synthetic world's base-model shape), ``deep-24``, ``xglm-564m`` (XGLM-564M's shape), ``7b``
(Llama-2-7B's shape), or ``--model-config config.json``. ``--json FILE`` writes every number.

``--model gemma3-270m`` measures instead (5.) the AFP step of the real Gemma 3 270M (262k
vocabulary, embedding table tied to the LM head; benchmarks/real_model.py) at an exact
shape (half of each LM row is response), each setting in its own process, fp32 and bf16
autocast: the plain step (early exit off, LM head at every position, every weight trained)
vs xalign's (early exit, LM head at the response tokens, ``model.freeze.embeddings``), and
each change alone. Same loss at the first step (printed); tokens/s from the median step.

    python benchmarks/alignment_step.py --model gemma3-270m            # CPU, batch 4 x 32, ~3 min

``--strategy ddp fsdp [--workers 2] [--lora] [--cpu-offload]`` measures instead (6.) the
step (contrastive at layer 1 with early exit + 1.5 x LM loss, AdamW, clipping; exact batches
per worker) on one process against ``scaling.strategy`` ddp and fsdp on ``--workers``
processes (torch.multiprocessing: gloo on CPU, NCCL and one GPU each on CUDA), each also with
LoRA and fsdp also with CPU offload (GPU only): tokens/s, MFU and peak memory per worker,
each as a ratio to the single process of the same run. xalign's own pieces run: apply_lora,
wrap_fsdp, train_step (its all-reduce, or FSDP's reduce-scatter) and alignment_loss.

    python benchmarks/alignment_step.py --strategy ddp fsdp --lora              # CPU, 2 workers, ~3 min
    python benchmarks/alignment_step.py --strategy ddp fsdp --lora --cpu-offload --device cuda --dtype bf16 \
        --model xglm-564m --workers 8 --batch 4 --length 512
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")   # no "Loading weights" bars between the lines

from real_model import GEMMA3  # noqa: E402  (benchmarks/real_model.py, next to this script)


#: Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device name.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "A800": 312.0, "L40S": 362.1, "L4": 121.0,
                    "A10G": 70.0, "A10": 125.0}
PAPER = "the paper: 7.55 steps/s, XGLM-564M, batch 4 x 512, bf16, 1x A800 (their measurement)"


def model_config(name: str, vocab: int):
    from transformers import AutoConfig, LlamaConfig, XGLMConfig

    if name.endswith(".json"):
        cfg = AutoConfig.from_pretrained(str(Path(name).parent)) if Path(name).name == "config.json" else None
        if cfg is None:
            data = json.loads(Path(name).read_text())
            cfg = AutoConfig.for_model(data.pop("model_type"), **data)
        return cfg
    llama = dict(vocab_size=vocab, num_key_value_heads=None, max_position_embeddings=2048)
    presets = {
        "tiny": lambda: LlamaConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                    intermediate_size=512, **llama),
        "deep-24": lambda: LlamaConfig(hidden_size=128, num_hidden_layers=24, num_attention_heads=4,
                                       intermediate_size=512, **llama),
        "xglm-564m": lambda: XGLMConfig(vocab_size=256008, d_model=1024, num_layers=24, attention_heads=16,
                                        ffn_dim=4096, max_position_embeddings=2048),
        "7b": lambda: LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                  intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096),
    }
    if name not in presets:
        raise SystemExit(f"unknown --model {name!r}; presets: {', '.join(presets)}, or a config.json path")
    cfg = presets[name]()
    cfg.vocab_size = max(cfg.vocab_size, vocab)
    return cfg


# --- the pieces every measurement shares -------------------------------------------------

def world_dir() -> Path:
    from xalign.config.world import WorldConfig
    from xalign.synthetic import ensure_world

    return ensure_world(WorldConfig(), with_model=False)


def saved_model(name: str, out: Path, tokenizer_dir: Path) -> Path:
    """A random-init model of preset ``name`` saved (with the world's tokenizer) in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config(name, len(tokenizer)))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def peak_memory_mb(device: str) -> float:
    """What xalign's workers report as train/peak_memory_mb, for the same device."""
    import torch

    from xalign.train.worker import peak_memory_mb as worker_peak

    return worker_peak(torch.device(device))


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def exact_batch(batch: int, length: int, vocab: int, *, lm: bool, seed: int = 0) -> dict:
    """Pairs (and LM rows) of exactly ``length`` non-pad tokens: shapes, not language."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = lambda: torch.randint(3, vocab, (batch, length), generator=g)  # noqa: E731
    ones = torch.ones(batch, length, dtype=torch.long)
    out = {"src_input_ids": ids(), "src_attention_mask": ones, "tgt_input_ids": ids(), "tgt_attention_mask": ones}
    if lm:
        labels = ids()
        labels[:, : length // 2] = -100                    # response-only loss on the second half
        out.update(lm_input_ids=ids(), lm_labels=labels, lm_attention_mask=ones)
    return out


def windowed_rate(tokens: list[int], seconds: list[float], window: int = 10, skip: int = 2) -> float:
    """Median tokens/s over windows of ``window`` steps, after ``skip`` warm-up windows."""
    rates = [sum(tokens[i:i + window]) / sum(seconds[i:i + window])
             for i in range(skip * window, len(tokens) - window + 1, window)]
    return statistics.median(rates)


# --- one measurement (run in a subprocess) -----------------------------------------------

def measure(spec: dict) -> dict:
    import torch

    from xalign.config.schema import ObjectiveConfig
    from xalign.objectives import alignment_loss

    device, kind = spec["device"], spec["kind"]
    torch.manual_seed(0)
    if kind == "plain" or kind == "data":
        return measure_world_loop(spec)
    if kind == "ray":
        return measure_ray(spec)
    if kind == "vocab":
        return measure_vocab(spec)
    if kind == "strategy":
        return measure_strategy(spec)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).to(device).train()
    base_memory = peak_memory_mb(device)
    depth = model.config.get_text_config().num_hidden_layers
    layer = {"first": 1, "middle": depth // 2}.get(spec.get("layer", "first"), 1)
    lm = kind == "exact"
    cfg = ObjectiveConfig(contrastive_weight=1.0, lm_weight=1.5 if lm else 0.0, layer=layer,
                          early_exit=spec.get("early_exit", True), fused_sides=spec.get("fused", True))
    batch = {k: v.to(device) for k, v in exact_batch(spec["batch"], spec["length"], model.config.vocab_size,
                                                     lm=lm).items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda") if lm else None
    autocast = torch.autocast(device, dtype=torch.bfloat16) if spec["dtype"] == "bf16" else None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(spec["warmup"] + spec["steps"]):
        synchronize(device)
        start = time.perf_counter()
        if autocast is not None:
            with autocast:
                loss, _ = alignment_loss(model, batch, cfg)
        else:
            loss, _ = alignment_loss(model, batch, cfg)
        loss.backward()
        if optimizer is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        model.zero_grad(set_to_none=True)
        synchronize(device)
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens = spec["batch"] * spec["length"] * (3 if lm else 2)
    params = sum(p.numel() for p in model.parameters())
    out = {"ms_per_step": 1000 * seconds, "steps_per_s": 1 / seconds, "tokens_per_s": tokens / seconds,
           "layer": layer, "blocks": depth, "params": params,
           "peak_memory_mb": peak_memory_mb(device) - (0 if device == "cuda" else base_memory)}
    if lm and device == "cuda":
        name = torch.cuda.get_device_name()
        peak = spec.get("peak_tflops") or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        if peak:
            out.update(mfu=6 * params * out["tokens_per_s"] / (peak * 1e12), peak_tflops=peak)
    return out


def world_run_config(spec: dict, **extra):
    from xalign.config import from_overrides
    from xalign.config.schema import RunConfig

    overrides = [f"model.name_or_path={spec['model_dir']}", f"optim.batch_size={spec['batch']}",
                 f"data.max_length={spec['world_length']}", f"optim.max_steps={spec['warmup'] + spec['steps']}",
                 "optim.lr=1e-4", "eval.tasks=[]", "objective.layer=1", "tracking.log_every_n_steps=10",
                 f"model.dtype={spec['dtype']}", *[f"{k}={v}" for k, v in extra.items()]]
    return from_overrides(RunConfig, overrides)


def measure_world_loop(spec: dict) -> dict:
    """The plain loop: the same model, data and loss as xalign's, no Ray, no reporting."""
    import torch

    from xalign.optim import Dist
    from xalign.train.setup import setup_run

    device = spec["device"]
    cfg = world_run_config(spec, **({"data.group_by_length": "true"} if spec.get("grouped") else {}))
    run = setup_run(cfg, spec["world_dir"], Dist(), torch.device(device))
    base_memory = peak_memory_mb(device)
    batches = run.batches()
    if spec["kind"] == "data":       # padding, no model
        pad = real = 0
        for steps in (batches[s] for s in range(spec["warmup"] + spec["steps"])):
            for b in steps:
                for side in ("src", "tgt", "lm"):
                    mask = b.get(f"{side}_attention_mask")
                    if mask is not None and mask.ndim == 2:
                        pad += int((mask == 0).sum())
                        real += int(mask.sum())
        return {"pad_share": pad / (pad + real)}
    params = [p for p in run.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, fused=device == "cuda")
    from xalign.objectives import alignment_loss

    autocast = torch.autocast(device, dtype=torch.bfloat16) if spec["dtype"] == "bf16" else None
    tokens, seconds, collate = [], [], []
    for step in range(spec["warmup"] + spec["steps"]):
        synchronize(device)
        start = time.perf_counter()
        micro = batches[step]
        collate.append(time.perf_counter() - start)
        micro = [{k: v.to(device) for k, v in b.items()} for b in micro]
        optimizer.zero_grad(set_to_none=True)
        for b in micro:
            if autocast is not None:
                with autocast:
                    loss, _ = alignment_loss(run.model, b, run.cfg.objective, temperature=run.temperature)
            else:
                loss, _ = alignment_loss(run.model, b, run.cfg.objective, temperature=run.temperature)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        tokens.append(sum(run.data.count_tokens(b) for b in micro))
    warm = slice(spec["warmup"], None)
    return {"tokens_per_s": windowed_rate(tokens, seconds), "peak_memory_mb": peak_memory_mb(device) - base_memory,
            "collate_share": sum(collate[warm]) / sum(seconds[warm]), "ms_per_step": 1000 * statistics.median(seconds)}


def measure_ray(spec: dict) -> dict:
    """xalign's own loop: `xalign train`'s driver, one Ray Train worker, metrics read back
    from the run's MLflow store (train/wall_tokens_per_s per 10-step window)."""
    from mlflow.tracking import MlflowClient

    from xalign.train.driver import train

    gpu = spec["device"] == "cuda"
    tmp = Path(spec["tmp"])
    cfg = world_run_config(spec, **{"tracking.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
                                    "tracking.experiment": "bench", "checkpoint.every_n_steps": 0,
                                    "checkpoint.storage_path": str(tmp / "ray_results"),
                                    "scaling.cpus_per_worker": 1 if gpu else os.cpu_count() or 1,
                                    **({"scaling.use_gpu": "true", "scaling.gpus_per_worker": 1} if gpu else {})})
    result = train(cfg, name="bench")
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    history = sorted(client.get_metric_history(result.mlflow_run_id, "train/wall_tokens_per_s"), key=lambda m: m.step)
    memory = client.get_metric_history(result.mlflow_run_id, "train/peak_memory_mb")
    rates = [m.value for m in history if m.step > 2 * 10]
    return {"tokens_per_s": statistics.median(rates), "windows": len(rates),
            "peak_memory_mb": max(m.value for m in memory) if memory else math.nan}


# --- orchestration -------------------------------------------------------------------------

#: The large-vocabulary settings (5.): (early exit, LM head at the response tokens only,
#: frozen embeddings, dtype). "plain" is the step without any of them.
VOCAB_SETTINGS = {
    "plain": (False, False, False, "fp32"),
    "early exit": (True, False, False, "fp32"),
    "LM head at response tokens": (False, True, False, "fp32"),
    "frozen embeddings": (False, False, True, "fp32"),
    "xalign (all three)": (True, True, True, "fp32"),
    "plain, bf16 autocast": (False, False, False, "bf16"),
    "xalign (all three), bf16 autocast": (True, True, True, "bf16"),
}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def _reset_peak_rss() -> None:
    try:  # Linux: reset the peak-RSS mark (ru_maxrss follows it)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def measure_vocab(spec: dict) -> dict:
    """Every setting of VOCAB_SETTINGS on one real model in this process (5.): contrastive
    (layer 1) + 1.5 x LM loss, AdamW over the trainable weights, clipping. The settings'
    steps run in turns (round r: one step of each, the order rotated), so load from other
    work falls on all of them alike; tokens/s from each setting's fastest timed step (load
    only ever slows a step down), the median is kept too. Two AdamW states (all weights; all
    but the embedding table) stand for the settings' optimizers. The first loss of every
    setting is taken on the same initial weights, before any step."""
    import resource

    import torch
    from transformers import AutoModelForCausalLM

    from xalign.config.schema import ObjectiveConfig
    from xalign.model.forward import lm_logits
    from xalign.objectives import alignment_loss, lm_loss

    device = spec["device"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).to(device).train()
    table = model.get_input_embeddings().weight
    everything = list(model.parameters())
    blocks_only = [p for p in everything if p is not table]
    optimizers = {False: torch.optim.AdamW(everything, lr=1e-5, fused=device == "cuda"),
                  True: torch.optim.AdamW(blocks_only, lr=1e-5, fused=device == "cuda")}
    batch = {k: v.to(device) for k, v in exact_batch(spec["batch"], spec["length"], model.config.vocab_size,
                                                     lm=True).items()}
    tokens = spec["batch"] * spec["length"] * 3

    def loss_of(setting: str):
        early_exit, response_head, _, dtype = VOCAB_SETTINGS[setting]
        cfg = ObjectiveConfig(contrastive_weight=1.0, lm_weight=1.5, layer=1, early_exit=early_exit)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            if response_head:
                return alignment_loss(model, batch, cfg)[0]
            # the LM head at every position: lm_loss over the full logits (xalign before the change)
            only = ObjectiveConfig(contrastive_weight=1.0, lm_weight=0.0, layer=1, early_exit=early_exit)
            return alignment_loss(model, batch, only)[0] + cfg.lm_weight * lm_loss(lm_logits(model, batch),
                                                                                   batch["lm_labels"])

    settings = spec["settings"]
    with torch.no_grad():
        first = {name: float(loss_of(name)) for name in settings}
    base = _rss_mb()
    times = {name: [] for name in settings}
    peaks = {name: 0.0 for name in settings}
    for r in range(spec["warmup"] + spec["steps"]):
        for name in settings[r % len(settings):] + settings[: r % len(settings)]:
            freeze = VOCAB_SETTINGS[name][2]
            table.requires_grad_(not freeze)
            optimizer = optimizers[freeze]
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            else:
                _reset_peak_rss()
            synchronize(device)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(name)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], 1.0)
            optimizer.step()
            synchronize(device)
            if r >= spec["warmup"]:
                times[name].append(time.perf_counter() - start)
            peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)
            peaks[name] = max(peaks[name], peak)
            model.zero_grad(set_to_none=True)
    out = {}
    for name in settings:
        trainable = sum(p.numel() for p in (blocks_only if VOCAB_SETTINGS[name][2] else everything))
        out[name] = {"setting": name, "tokens_per_s": tokens / min(times[name]),
                     "tokens_per_s_median": tokens / statistics.median(times[name]),
                     "ms_per_step": 1000 * min(times[name]), "times_s": times[name], "first_loss": first[name],
                     "trainable": trainable, "params": sum(p.numel() for p in everything),
                     "peak_memory_mb": peaks[name]}
    return {"settings": out, "load_average": os.getloadavg()}


def large_vocabulary(args) -> dict:
    """5.: the real model's AFP step, every setting of VOCAB_SETTINGS in turns in one process."""
    from real_model import gemma3_folder

    folder = str(gemma3_folder(args.model_path))
    print(f"machine: {machine(args.device)}")
    print(f"model: {args.model} from {folder}; batch {args.batch} x {args.length} tokens per pair side and LM row "
          f"(half of each LM row is response), {args.warmup} warm-up + {args.steps} timed steps, {args.device}")
    print("\n5. the AFP step with a 262k vocabulary: plain vs early exit, LM head at response tokens, "
          "frozen embeddings")
    settings = list(VOCAB_SETTINGS) if not args.quick else ["plain", "xalign (all three)"]
    spec = {"kind": "vocab", "device": args.device, "batch": args.batch, "length": args.length, "steps": args.steps,
            "warmup": args.warmup, "model_dir": folder, "in_process": args.quick, "settings": settings}
    measured = run_one(spec)
    results = {"machine": machine(args.device), "model": args.model, "model_dir": folder,
               "settings": measured["settings"], "load_average": measured["load_average"]}
    plain = results["settings"]["plain"]
    for name, r in results["settings"].items():
        print(f"   {name:<36} {r['tokens_per_s']:8,.0f} tokens/s  {r['tokens_per_s'] / plain['tokens_per_s']:5.2f}x  "
              f"{r['ms_per_step']:8.0f} ms/step  peak +{r['peak_memory_mb']:6.0f} MiB  "
              f"trainable {r['trainable'] / 1e6:5.1f}M  first loss {r['first_loss']:.4f}")
    print(f"   (fastest of {args.steps} timed steps per setting, steps of all settings in turns; load average "
          f"{', '.join(f'{x:.1f}' for x in measured['load_average'])} at the end)")
    plain, fast = results["settings"]["plain"], results["settings"]["xalign (all three)"]
    ratio = fast["tokens_per_s"] / plain["tokens_per_s"]
    results["ratio"] = ratio
    print(f"   -> xalign's step (early exit, LM head at response tokens, frozen embeddings): {ratio:.2f}x the plain "
          f"step's tokens/s (target >= 2x: {'met' if ratio >= 2 else 'NOT met'}); same first loss: "
          f"{abs(fast['first_loss'] - plain['first_loss']) <= 1e-4 * abs(plain['first_loss'])}")
    if "plain, bf16 autocast" in results["settings"]:
        bf16 = results["settings"]["plain, bf16 autocast"]
        results["bf16_ratio"] = bf16["tokens_per_s"] / plain["tokens_per_s"]
        print(f"   -> bf16 autocast: {results['bf16_ratio']:.2f}x fp32 on the plain step, "
              f"{results['settings']['xalign (all three), bf16 autocast']['tokens_per_s'] / fast['tokens_per_s']:.2f}x "
              f"on xalign's")
    return results


# --- 6. strategies: single process vs ddp vs fsdp (offload, LoRA) on W workers -------------

#: The LoRA of the strategy measurements: rank 16 on the attention projections the model has.
LORA_RANK, LORA_ALPHA = 16, 32.0


def strategy_settings(args) -> list[dict]:
    """The settings of 6.: the single-process loop (the baseline; with LoRA too under --lora),
    then each strategy on ``--workers`` workers, fsdp also with offload under --cpu-offload,
    each also with LoRA under --lora."""
    loras = [False, True] if args.lora else [False]
    out = [{"name": "single process" + (", LoRA" if lora else ""), "strategy": "single", "workers": 1,
            "offload": False, "lora": lora} for lora in loras]
    for strategy in args.strategy:
        for offload in ([False, True] if args.cpu_offload and strategy == "fsdp" else [False]):
            for reshard in ([True, False] if args.no_reshard and strategy == "fsdp" and not offload else [True]):
                for unit in (args.fsdp_unit if strategy == "fsdp" else ["block"]):
                    for lora in loras:
                        name = (f"{strategy} x {args.workers}" + (", cpu offload" if offload else "")
                                + ("" if reshard else ", no reshard") + (", one unit" if unit == "model" else "")
                                + (", LoRA" if lora else ""))
                        out.append({"name": name, "strategy": strategy, "workers": args.workers, "offload": offload,
                                    "lora": lora, "reshard": reshard, "fsdp_unit": unit})
    return out


def strategy_model(spec: dict):
    """The random-init model of a strategy measurement (seed 0: every rank builds the same),
    LoRA injected through xalign's apply_lora; ``(model to train, parameter count)``."""
    import torch
    from transformers import AutoModelForCausalLM

    from xalign.config.schema import LoraConfig
    from xalign.model.lora import apply_lora, module_suffixes

    config = model_config(spec["model"], spec["vocab"])
    if spec["model"] == "tiny":
        config.tie_word_embeddings = True       # as the synthetic world's base model
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if spec["lora"]:
        names = module_suffixes(model)
        targets = [n for n in ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj") if n in names]
        _, model = apply_lora(model, LoraConfig(r=LORA_RANK, alpha=LORA_ALPHA, dropout=0.0, target_modules=targets))
    return model.train(), sum(p.numel() for p in model.parameters())


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def _strategy_rank(rank: int, spec: dict, init_file: str, out_dir: str) -> None:
    """One worker of a strategy measurement (rank ``rank`` of ``spec['workers']``; one process,
    no process group, for the single-process loop): xalign's own pieces (apply_lora,
    wrap_fsdp, train_step with its gradient all-reduce or FSDP's reduce-scatter, clipping by
    the global norm, alignment_loss with the negatives gathered across ranks), exact batches."""
    import torch
    import torch.distributed as dist

    from xalign.config.schema import ObjectiveConfig, ScalingConfig
    from xalign.objectives import alignment_loss
    from xalign.optim import Dist, make_scheduler, train_step
    from xalign.train.sharding import wrap_fsdp

    world, cuda = spec["workers"], spec["device"] == "cuda"
    if not cuda and spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if spec["strategy"] != "single":
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world)
    result: dict = {}
    warnings.filterwarnings("ignore", category=FutureWarning)   # transformers' deprecations, once per worker
    try:
        with torch.device("meta"):   # import the model's and peft's modules before the memory baseline
            strategy_model(spec)
        _reset_peak_rss()
        base = _rss_mb()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        model, params_total = strategy_model(spec)
        if spec["strategy"] == "fsdp":
            scaling = ScalingConfig.model_construct(num_workers=world, strategy="fsdp", cpu_offload=spec["offload"],
                                                    reshard_after_forward=spec.get("reshard", True), use_gpu=cuda,
                                                    fsdp_unit=spec.get("fsdp_unit", "block"))
            wrap_fsdp(model, scaling, spec["dtype"], device)
        else:
            model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        fused = cuda and not spec["offload"]
        optimizer = torch.optim.AdamW(params, lr=1e-5, fused=fused)
        scheduler = make_scheduler(optimizer, schedule="constant", warmup_steps=0, max_steps=10**9)
        objective = ObjectiveConfig(contrastive_weight=1.0, lm_weight=1.5, layer=1, early_exit=True)
        vocab = model.config.get_text_config().vocab_size
        batches = [{k: v.to(device) for k, v in exact_batch(spec["batch"], spec["length"], vocab, lm=True,
                                                            seed=100 * rank + i).items()} for i in range(4)]
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if spec["dtype"] == "bf16" else None
        per_rank_tokens = spec["batch"] * spec["length"] * 3
        tokens, seconds, losses = [], [], []
        for step in range(spec["warmup"] + spec["steps"]):
            synchronize(spec["device"])
            start = time.perf_counter()
            metrics = train_step(model, optimizer, scheduler, [batches[step % len(batches)]],
                                 lambda m, b: alignment_loss(m, b, objective), step=step + 1, max_grad_norm=1.0,
                                 dist=Dist.current(), params=params, count_tokens=lambda b: per_rank_tokens,
                                 autocast=autocast)
            synchronize(spec["device"])
            if step >= spec["warmup"]:
                seconds.append(time.perf_counter() - start)
                tokens.append(int(metrics["tokens"]))
            losses.append(metrics["loss"])
        window = 10 if len(tokens) >= 10 else len(tokens)
        peak = (torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _peak_rss_mb() - base)
        result = {"tokens_per_s": windowed_rate(tokens, seconds, window=window, skip=0),
                  "ms_per_step": 1000 * statistics.median(seconds), "params": params_total,
                  "trainable": sum(p.numel() for p in params),     # a DTensor's numel is the whole tensor's
                  "peak_memory_mb": peak, "losses": losses[:3]}
        if spec["strategy"] != "single":   # every worker's peak memory, and the slowest worker's rate
            gathered: list = [None] * world
            dist.all_gather_object(gathered, (result["peak_memory_mb"], result["tokens_per_s"]))
            result["peak_memory_mb_per_worker"] = [g[0] for g in gathered]
            result["peak_memory_mb"] = max(g[0] for g in gathered)
            result["tokens_per_s"] = min(g[1] for g in gathered)
        if rank == 0:
            Path(out_dir, "result.json").write_text(json.dumps(result))
    finally:
        if spec["strategy"] != "single":
            dist.destroy_process_group()


def measure_strategy(spec: dict) -> dict:
    """One setting of 6.: ``spec['workers']`` processes (torch.multiprocessing, gloo on CPU,
    NCCL on CUDA), or this process alone for the single-process loop."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="xa-strategy-") as tmp:
        if spec["strategy"] == "single":
            _strategy_rank(0, spec, "", tmp)
        else:
            mp.spawn(_strategy_rank, args=(spec, str(Path(tmp) / "init"), tmp), nprocs=spec["workers"], join=True)
        return json.loads(Path(tmp, "result.json").read_text())


def mfu(result: dict, peak_tflops: Optional[float]) -> Optional[float]:
    return 6 * result["params"] * result["tokens_per_s"] / (peak_tflops * 1e12) if peak_tflops else None


def strategies(args) -> dict:
    """6.: the alignment step on one process vs ddp vs fsdp (offload, LoRA) on ``--workers``."""
    import torch

    cuda = args.device == "cuda"
    if cuda and torch.cuda.device_count() < args.workers:
        raise SystemExit(f"--workers {args.workers} needs as many GPUs; this machine has {torch.cuda.device_count()}")
    peak = args.peak_tflops
    if cuda and peak is None:
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    cpus = os.cpu_count() or 1
    vocab = args.vocab
    if vocab is None:   # the synthetic world's vocabulary for its model's shape, else the preset's own
        if args.model == "tiny":
            from transformers import AutoTokenizer

            vocab = len(AutoTokenizer.from_pretrained(world_dir() / "tokenizer"))
        else:
            vocab = 0
    settings = strategy_settings(args)
    not_measured = [] if cuda else [s["name"] for s in settings if s["offload"]]
    settings = [s for s in settings if s["name"] not in not_measured]
    common = {"device": args.device, "dtype": args.dtype, "batch": args.batch, "length": args.length,
              "steps": args.steps, "warmup": args.warmup, "model": args.model, "vocab": vocab}
    print(f"machine: {machine(args.device)}")
    print(f"model: {args.model} (random init{', tied embeddings' if args.model == 'tiny' else ''}, vocabulary "
          f"{vocab or 'the preset'}); per worker batch {args.batch} pairs + {args.batch} LM rows of exactly "
          f"{args.length} tokens; contrastive at layer 1 with early exit + 1.5 x LM loss, AdamW, clipping; "
          f"{args.device} {args.dtype}; {args.warmup} warm-up + {args.steps} timed steps per setting, "
          f"{args.rounds} round(s)")
    threads = args.threads or max(1, cpus // args.workers)
    print(f"\n6. the step on one process vs ddp and fsdp on {args.workers} workers "
          f"({'one GPU each, NCCL' if cuda else f'torch.multiprocessing + gloo; every process, the single one too, on {threads} thread(s)'})")
    if not cuda and args.cpu_offload:
        print("   cpu offload: not measured on CPU (PyTorch's CPUOffloadPolicy moves shards between CPU and a GPU; "
              "xalign refuses scaling.cpu_offload on a CPU run)")
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {s["name"]: [] for s in settings}
    for r in range(args.rounds):
        for s in settings[r % len(settings):] + settings[: r % len(settings)]:
            spec = {**common, **s, "kind": "strategy", "threads": 0 if cuda else threads,
                    "in_process": args.quick}
            try:
                runs[s["name"]].append(run_one(spec, fail_ok=True))
            except MeasurementFailed as exc:
                runs[s["name"]].append({"error": str(exc)})
    load_after = os.getloadavg()
    results: dict = {"machine": machine(args.device), "model": args.model, "vocab": vocab, "workers": args.workers,
                     "threads": None if cuda else threads,
                     "peak_tflops": peak, "load_average_before": load_before, "load_average_after": load_after,
                     "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                              if k not in ("one", "json")},
                     "settings": {}, "not_measured": {n: "cpu offload needs a GPU" for n in not_measured}}
    for s in settings:
        ok = [m for m in runs[s["name"]] if "error" not in m]
        if not ok:
            results["settings"][s["name"]] = {**s, "error": runs[s["name"]][-1]["error"]}
            continue
        best = max(ok, key=lambda m: m["tokens_per_s"])    # other load only ever slows a run down
        results["settings"][s["name"]] = {**s, **best, "rounds_tokens_per_s": [m["tokens_per_s"] for m in ok],
                                          "mfu": mfu(best, peak)}
    base = results["settings"].get("single process", {})
    print(f"   {'setting':<28} {'tokens/s':>10} {'vs single':>9} {'ms/step':>8} {'MFU':>6} "
          f"{'peak MiB/worker':>15} {'vs single':>9}  rounds (tokens/s)")
    for name, r in results["settings"].items():
        if "error" in r:
            print(f"   {name:<28} failed: {r['error'].splitlines()[-1][:120]}")
            continue
        speed = r["tokens_per_s"] / base["tokens_per_s"] if "tokens_per_s" in base else math.nan
        memory = r["peak_memory_mb"] / base["peak_memory_mb"] if base.get("peak_memory_mb") else math.nan
        r["tokens_ratio"], r["memory_ratio"] = speed, memory
        mfu_text = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"   {name:<28} {r['tokens_per_s']:10,.0f} {speed:8.2f}x {r['ms_per_step']:8.1f} {mfu_text:>6} "
              f"{r['peak_memory_mb']:15,.0f} {memory:8.2f}x  "
              + " / ".join(f"{x:,.0f}" for x in r["rounds_tokens_per_s"]))
    if peak is None:
        print("   MFU: n/a (no peak FLOP/s known for this device; --peak-tflops gives one)")
    else:
        print(f"   MFU = 6 x parameters x tokens/s / {peak:g} TFLOP/s (an upper estimate: the early-exited pair "
              "tokens and LoRA's frozen weights take less than 6 FLOPs per parameter)")
    print(f"   peak memory: {'torch.cuda.max_memory_allocated' if cuda else 'the peak RSS above the RSS before the model was built'}"
          f", the largest over the workers")
    ratios = {}
    for name, f in results["settings"].items():   # every fsdp setting against ddp with the same LoRA choice
        if not name.startswith("fsdp") or "tokens_per_s" not in f:
            continue
        lora = ", LoRA" if name.endswith(", LoRA") else ""
        d = results["settings"].get(f"ddp x {args.workers}{lora}", {})
        if "tokens_per_s" not in d:
            continue
        variant = name.removeprefix(f"fsdp x {args.workers}").removesuffix(lora)
        key = "fsdp_over_ddp" + variant.replace(", ", "_").replace(" ", "_").lower() + lora.replace(", ", "_").lower()
        ratios[key] = ratio = f["tokens_per_s"] / d["tokens_per_s"]
        print(f"   -> {name} at {100 * ratio:.1f}% of ddp{lora}'s tokens/s "
              f"(target: within 15%: {'met' if ratio >= 0.85 else 'NOT met'}); peak memory per worker "
              f"{f['peak_memory_mb'] / d['peak_memory_mb']:.2f}x ddp's")
    results["ratios"] = ratios
    print(f"   load average before {', '.join(f'{x:.2f}' for x in load_before)}; after "
          f"{', '.join(f'{x:.2f}' for x in load_after)}")
    return results


class MeasurementFailed(Exception):
    """A measurement that may fail (e.g. out of memory) failed: its last error lines."""


def run_one(spec: dict, *, fail_ok: bool = False) -> dict:
    """One measurement in a fresh process (its own peak memory), or in this one (--quick).
    ``fail_ok``: a failure raises MeasurementFailed (the caller records it) instead of exiting."""
    if spec.get("in_process"):
        try:
            return json.loads(json.dumps(measure(spec)))
        except Exception as exc:   # noqa: BLE001
            if not fail_ok:
                raise
            raise MeasurementFailed(f"{type(exc).__name__}: {exc}") from exc
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        if fail_ok:
            raise MeasurementFailed(proc.stderr[-4000:].strip() or f"exit status {proc.returncode}")
        raise SystemExit(f"measurement {spec['kind']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny",
                   help="tiny | deep-24 | xglm-564m | 7b | path/to/config.json (random weights), or the real "
                        "gemma3-270m (5. only)")
    p.add_argument("--model-path", help="with --model gemma3-270m: a converted HF folder or a .gguf file")
    p.add_argument("--deep-model", default="deep-24", help="the model of the early-exit measurements (24 blocks)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=16, help="pairs and LM samples per step")
    p.add_argument("--length", type=int, default=32, help="tokens per row of the exact-shape measurements")
    p.add_argument("--world-length", type=int, default=64, help="data.max_length of the world-data loop")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    p.add_argument("--skip-ray", action="store_true", help="leave out xalign's Ray Train loop (30 s of start-up)")
    p.add_argument("--strategy", nargs="+", choices=["ddp", "fsdp"], default=None,
                   help="6. only: measure these strategies on --workers workers against the single-process loop "
                        "(default with --lora or --cpu-offload: ddp fsdp)")
    p.add_argument("--workers", type=int, default=2, help="6.: workers (processes; one GPU each on CUDA)")
    p.add_argument("--cpu-offload", action="store_true", help="6.: fsdp also with CPU offload (GPU runs only)")
    p.add_argument("--no-reshard", action="store_true",
                   help="6.: fsdp also with scaling.reshard_after_forward=false (parameters stay gathered from the "
                        "forward to the backward: half the all-gathers, ZeRO-2's trade)")
    p.add_argument("--fsdp-unit", nargs="+", choices=["block", "model"], default=["block"],
                   help="6.: fsdp's scaling.fsdp_unit values to measure (model: the whole model as one unit, "
                        "3 collectives per step instead of ~3 per block)")
    p.add_argument("--lora", action="store_true", help=f"6.: every setting also with LoRA (r {LORA_RANK} on the "
                                                        "attention projections)")
    p.add_argument("--rounds", type=int, default=2, help="6.: times each setting is measured, in turns (best kept)")
    p.add_argument("--threads", type=int, default=None,
                   help="6., CPU: torch threads of every process, the single-process loop's too (default: CPUs / "
                        "workers, so the workers fill the machine and the baseline is one of them alone)")
    p.add_argument("--vocab", type=int, default=None,
                   help="6.: vocabulary of the random model (default: the synthetic world's for tiny)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run in seconds: few steps, no Ray, one process (peak memory not per measurement)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return 0
    if args.model == GEMMA3:
        if args.quick:
            args.steps, args.warmup, args.batch, args.length = 1, 1, 2, 8
        else:  # a 270M model with a 262k vocabulary on CPU: seconds per step
            args.steps = args.steps if "--steps" in (argv or sys.argv) else 3
            args.warmup = args.warmup if "--warmup" in (argv or sys.argv) else 1
            args.batch = args.batch if "--batch" in (argv or sys.argv) else 4
        results = large_vocabulary(args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    if args.strategy is not None or args.lora or args.cpu_offload or args.no_reshard or args.fsdp_unit != ["block"]:
        args.strategy = args.strategy or ["ddp", "fsdp"]
        if args.workers < 1 or args.rounds < 1:
            raise SystemExit(f"--workers and --rounds must be at least 1, got {args.workers} and {args.rounds}")
        if args.quick:
            args.steps, args.warmup, args.batch, args.length, args.rounds = 4, 2, 2, 8, 1
        results = strategies(args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    if args.quick:
        args.steps, args.warmup, args.skip_ray, args.batch, args.length = 30, 20, True, 4, 16
    with tempfile.TemporaryDirectory(prefix="xa-bench-") as tmp:
        world = world_dir()
        models = {name: str(saved_model(name, Path(tmp) / name.replace("/", "_"), world / "tokenizer"))
                  for name in dict.fromkeys([args.model, args.deep_model])}
        common = {"device": args.device, "dtype": args.dtype, "batch": args.batch, "length": args.length,
                  "steps": args.steps, "warmup": args.warmup, "world_dir": str(world), "tmp": tmp,
                  "world_length": args.world_length, "peak_tflops": args.peak_tflops, "in_process": args.quick}
        deep = {**common, "model_dir": models[args.deep_model], "steps": max(10, args.steps // 3),
                "warmup": max(3, args.warmup // 4)}
        main_model = {**common, "model_dir": models[args.model]}
        results: dict = {"machine": machine(args.device), "model": args.model, "deep_model": args.deep_model,
                         "args": {k: v for k, v in vars(args).items() if k not in ("one", "json")}}
        print(f"machine: {results['machine']}")
        print(f"models: {args.model} (step, loop, data), {args.deep_model} (early exit); batch {args.batch}, "
              f"exact rows of {args.length} tokens, world data up to {args.world_length} tokens; "
              f"{args.device} {args.dtype}")

        print("\n1. contrastive branch (InfoNCE only, forward + backward), early exit on vs off")
        for layer in ("first", "middle"):
            on = run_one({**deep, "kind": "contrastive", "layer": layer, "early_exit": True})
            off = run_one({**deep, "kind": "contrastive", "layer": layer, "early_exit": False})
            ratio = off["ms_per_step"] / on["ms_per_step"]
            results[f"early_exit_{layer}"] = {"on": on, "off": off, "ratio": ratio}
            print(f"   layer {on['layer']} of {on['blocks']}: {on['ms_per_step']:.1f} ms on, {off['ms_per_step']:.1f} ms "
                  f"off -> early exit {ratio:.1f}x cheaper; peak memory {on['peak_memory_mb']:.0f} vs "
                  f"{off['peak_memory_mb']:.0f} MiB")
        separate = run_one({**deep, "kind": "contrastive", "layer": "first", "fused": False})
        fused = results["early_exit_first"]["on"]
        results["fused_sides"] = {"fused": fused, "separate": separate,
                                  "ratio": separate["ms_per_step"] / fused["ms_per_step"]}
        print(f"   both sides in one forward: {fused['ms_per_step']:.1f} ms vs {separate['ms_per_step']:.1f} ms "
              f"in two -> {results['fused_sides']['ratio']:.2f}x")

        print("\n2. the alignment step on the world's data: a plain PyTorch loop vs xalign's loop on Ray Train")
        plain = run_one({**main_model, "kind": "plain"})
        results["plain_loop"] = plain
        print(f"   plain loop: {plain['tokens_per_s']:,.0f} tokens/s, peak memory +{plain['peak_memory_mb']:.0f} MiB")
        if not args.skip_ray:
            ray_run = run_one({**main_model, "kind": "ray"})
            ratio = ray_run["tokens_per_s"] / plain["tokens_per_s"]
            results["xalign_ray"] = {**ray_run, "ratio": ratio}
            print(f"   xalign on Ray Train: {ray_run['tokens_per_s']:,.0f} tokens/s ({ray_run['windows']} windows), "
                  f"peak memory {ray_run['peak_memory_mb']:.0f} MiB (the worker process)")
            print(f"   -> xalign's step runs at {100 * ratio:.1f}% of the plain loop's throughput "
                  f"(target: at least 90%)")

        print("\n3. data")
        inline = run_one({**main_model, "kind": "data"})
        grouped = run_one({**main_model, "kind": "data", "grouped": True})
        results["data"] = {"padding": inline["pad_share"], "padding_grouped": grouped["pad_share"],
                           "collate_share": plain["collate_share"]}
        print(f"   collating the micro-batches in the loop: {100 * plain['collate_share']:.1f}% of a "
              f"{plain['ms_per_step']:.1f} ms step (data.num_workers > 0 moves it to worker processes)")
        print(f"   padding: {100 * inline['pad_share']:.1f}% of pair and LM positions, "
              f"{100 * grouped['pad_share']:.1f}% with data.group_by_length "
              f"({inline['pad_share'] / max(grouped['pad_share'], 1e-9):.1f}x less)")

        print(f"\n4. the whole step at an exact shape: batch {args.batch} x {args.length} tokens per row")
        exact = run_one({**main_model, "kind": "exact"})
        results["exact_step"] = exact
        line = (f"   {exact['steps_per_s']:.2f} steps/s, {exact['tokens_per_s']:,.0f} tokens/s, "
                f"{exact['params'] / 1e6:.1f}M parameters, peak memory {exact['peak_memory_mb']:.0f} MiB")
        if "mfu" in exact:
            line += f", MFU {100 * exact['mfu']:.1f}% of {exact['peak_tflops']:.0f} TFLOP/s"
        print(line)
        if args.model == "xglm-564m" and args.batch == 4 and args.length == 512:
            print(f"   ({PAPER})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0



if __name__ == "__main__":
    sys.exit(main())
