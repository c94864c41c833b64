"""The memory plan (xalign/train/plan.py) and `xalign plan RUN.yaml` end to end, on a tiny
model folder written here (config only: the plan builds the model on the meta device and
reads no weights and no tokenizer)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xalign.train.plan import GiB, Knobs, ModelShape, memory_plan

H, LAYERS, INTER, VOCAB, HEADS = 512, 12, 2048, 32000, 8
BLOCK = 4 * H * H + 3 * H * INTER + 2 * H          # q k v o, gate up down, two RMSNorms (no biases)
PARAMS = VOCAB * H + LAYERS * BLOCK + H             # tied embedding/head once, final norm


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("tiny") / "model"
    LlamaConfig(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                num_key_value_heads=HEADS, intermediate_size=INTER, tie_word_embeddings=True).save_pretrained(path)
    assert not list(path.glob("*.safetensors"))     # a config alone
    return path


def run_file(tmp_path: Path, model: Path, scaling: str = "") -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(f"model: {{name_or_path: {model}}}\n"
                    "data: {max_length: 128}\n"
                    "objective: {layer: 1, early_exit: true}\n"
                    f"optim: {{batch_size: 2}}\nscaling: {{{scaling}}}\n")
    return path


def gib(n: float) -> str:
    return f"{n / GiB:8.2f} GiB"


def plan_cli(path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    xalign = Path(sys.executable).with_name("xalign")
    return subprocess.run([str(xalign), "plan", str(path), *overrides], capture_output=True, text=True, env=env,
                          timeout=300)


def lines_of(text: str) -> dict[str, str]:
    return {line.split()[0]: line for line in text.splitlines() if line.startswith("  ") and line.split()}


def test_fsdp_on_one_worker_without_offload_warns_naming_the_key():
    shape = ModelShape(params=PARAMS, layers=LAYERS, hidden=H, heads=HEADS, vocab=VOCAB, block_params=BLOCK,
                       embedding_params=VOCAB * H)
    plan = memory_plan(shape, Knobs(strategy="fsdp", workers=1))
    assert len(plan.warnings) == 1 and "scaling.strategy" in plan.warnings[0] and "scaling.num_workers" in plan.warnings[0]
    assert any(line.startswith("  warning: scaling.strategy") for line in plan.lines())
    for fine in (Knobs(strategy="fsdp", workers=2), Knobs(strategy="ddp", workers=1),
                 Knobs(strategy="fsdp", workers=1, cpu_offload=True)):
        assert memory_plan(shape, fine).warnings == []


def test_fsdp_as_one_unit_gathers_the_whole_model():
    """scaling.fsdp_unit model: the whole model in flight in the compute dtype and its whole
    gradient before the reduce-scatter, on top of the shards; optimizer state stays 1/W."""
    shape = ModelShape(params=PARAMS, layers=LAYERS, hidden=H, heads=HEADS, vocab=VOCAB, block_params=BLOCK,
                       embedding_params=VOCAB * H)
    block = memory_plan(shape, Knobs(strategy="fsdp", workers=2))
    whole = memory_plan(shape, Knobs(strategy="fsdp", workers=2, fsdp_unit="model"))
    assert whole.weights == 4 * PARAMS / 2 + 4 * PARAMS > block.weights
    assert whole.gradients == 4 * PARAMS / 2 + 4 * PARAMS and whole.optimizer == block.optimizer == 8 * PARAMS / 2
    assert "the whole model one FSDP unit" in whole.lines()[0] and "FSDP unit" not in block.lines()[0]


def test_xalign_plan_prints_the_numbers_and_refuses_what_does_not_fit(tiny_model, tmp_path):
    path = run_file(tmp_path, tiny_model)
    ddp = plan_cli(path)
    assert ddp.returncode == 0, ddp.stderr
    assert f"{PARAMS:,} parameters, {LAYERS} blocks, hidden {H}, vocabulary {VOCAB:,}" in ddp.stdout
    rows = lines_of(ddp.stdout)
    # ddp, fp32, one worker: the whole model, its gradients and AdamW's two moments
    assert rows["weights"].endswith(gib(4 * PARAMS)), rows["weights"]
    assert rows["gradients"].endswith(gib(4 * PARAMS))
    assert rows["optimizer"].endswith(gib(8 * PARAMS))
    act = float(rows["activations"].split()[1])
    assert act > 0
    total = float(rows["total"].split()[1])
    assert abs(total - (16 * PARAMS / GiB + act)) <= 0.011
    assert "OK: the plan fits." in ddp.stdout and "warning:" not in ddp.stdout

    fsdp = plan_cli(path, "scaling.strategy=fsdp", "scaling.num_workers=2")
    assert fsdp.returncode == 0, fsdp.stderr
    f = lines_of(fsdp.stdout)
    assert "fsdp x 2 worker(s)" in fsdp.stdout
    # 1/2 of the fp32 master copy plus two gathered blocks and the embedding group in flight
    assert f["weights"].endswith(gib(4 * PARAMS / 2 + 4 * (2 * BLOCK + VOCAB * H)))
    assert float(f["weights"].split()[1]) < float(rows["weights"].split()[1])
    assert float(f["optimizer"].split()[1]) < float(rows["optimizer"].split()[1])

    one = plan_cli(path, "scaling.strategy=fsdp")
    assert one.returncode == 0 and "warning: scaling.strategy is fsdp with scaling.num_workers 1" in one.stdout

    limit = 16 * PARAMS / GiB * 0.75     # below what ddp needs on one worker
    refused = plan_cli(path, "scaling.use_gpu=true", "scaling.gpus_per_worker=1", f"scaling.gpu_memory_gb={limit:.3f}")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    out = refused.stdout
    assert "REFUSED: the memory plan needs" in out and f"{limit:.1f} GiB" in out
    # the plan once, before the refusal (the refusal used to repeat it)
    assert out.count("memory plan per worker:") == 1 and out.count("  weights ") == 1, out
    assert out.index("  total ") < out.index("REFUSED:")
    assert "changes that would fit:" in out
    assert "scaling.strategy=fsdp scaling.cpu_offload=true" in out and "model.lora" in out
    assert "fsdp on 2 workers" in out or "fsdp on 4 workers" in out


def test_frozen_parameters_have_no_gradients_and_no_optimizer_state_in_the_plan(tiny_model, tmp_path):
    """model.freeze (here the tied embedding table) takes its parameters out of the gradient
    and AdamW lines; the fp32 weights stay whole."""
    frozen = plan_cli(run_file(tmp_path, tiny_model), "model.freeze.embeddings=true")
    assert frozen.returncode == 0, frozen.stderr
    rows = lines_of(frozen.stdout)
    trainable = PARAMS - VOCAB * H
    assert f"{VOCAB * H:,} frozen (model.freeze)" in frozen.stdout
    assert rows["weights"].endswith(gib(4 * PARAMS)), rows["weights"]
    assert rows["gradients"].endswith(gib(4 * trainable)), rows["gradients"]
    assert rows["optimizer"].endswith(gib(8 * trainable)), rows["optimizer"]


def test_cpu_run_over_the_node_memory_is_refused_with_the_numbers_and_knobs(tmp_path, capfd):
    """A CPU run (no GPU keys) whose plan exceeds this node's memory: check_memory, what
    prepare_data calls before Ray starts, refuses it naming the node's memory, the plan's
    total and the single changes that fit; the plan is printed once, the error does not repeat
    it. The model is a config only (Llama-2-7B's block shape, as many blocks as make ddp's 16
    bytes per parameter 1.5x this node's memory): built on the meta device, nothing allocated."""
    import math

    from transformers import LlamaConfig

    from xalign.config import load_run
    from xalign.train.plan import MemoryPlanError, check_memory

    hidden, inter, vocab = 4096, 11008, 32000
    block = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    node = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    layers = math.ceil(1.5 * node / (16 * block))
    params = 2 * vocab * hidden + layers * block + hidden       # untied embedding and head, final norm
    folder = tmp_path / "big"
    LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=32,
                num_key_value_heads=32, intermediate_size=inter, tie_word_embeddings=False).save_pretrained(folder)
    cfg = load_run(run_file(tmp_path, folder))
    assert not cfg.scaling.use_gpu and cfg.scaling.num_workers == 1
    with pytest.raises(MemoryPlanError) as refused:
        check_memory(cfg)
    message = str(refused.value)
    needed = float(message.split("needs ")[1].split(" GiB")[0])
    # ddp: fp32 weights and gradients, AdamW's two moments (16 bytes per parameter), + activations
    assert 16 * params / GiB <= needed <= 1.05 * 16 * params / GiB
    assert needed * GiB > node
    assert f"a CPU worker's share of this node's memory ({node / GiB:.0f} GiB / 1) has {node / GiB:.1f} GiB" in message
    assert "changes that would fit:" in message and "model.lora" in message
    # on CPU: no offload (it needs a GPU) and no more workers on this node (they share its memory)
    assert "cpu_offload" not in message and "fsdp on" not in message
    assert "memory plan per worker" not in message and "  weights " not in message
    err = capfd.readouterr().err
    assert err.count("memory plan per worker: ddp x 1 worker(s), fp32") == 1, err
    assert err.count("  weights ") == 1 and "limit: " in err
    rows = lines_of(err)
    assert rows["weights"].endswith(gib(4 * params)) and rows["optimizer"].endswith(gib(8 * params)), rows
