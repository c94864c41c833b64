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

