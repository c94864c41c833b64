"""The benchmark scripts run (smoke runs; no timing is asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_icl_scoring_benchmark_runs_quick(tmp_path):
    out = tmp_path / "icl.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "icl_scoring.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    have_lm_eval = result["lm_eval_skipped"] is None
    settings = {"naive", "xalign-no-reuse", "xalign"} | ({"lm-eval"} if have_lm_eval else set())
    got = {(s["setting"], s["shots"]) for s in result["settings"]}
    assert got == {(name, shots) for name in settings for shots in (0, 5)}
    for s in result["settings"]:
        assert math.isfinite(s["items_per_s"]) and s["items_per_s"] > 0, s
        assert math.isfinite(s["peak_memory_mb"]) and s["peak_memory_mb"] >= 0, s
    prefix = {s["shots"]: s["tokens"]["prefix_tokens"] for s in result["settings"]}
    assert prefix[0] == 0 and prefix[5] > 0
    assert {"xalign_over_naive@5", "no_reuse_over_naive@5", "xalign_over_no_reuse@5"} <= set(result["ratios"])
    assert "prefix reuse at 5 shots:" in proc.stdout
    for shots in (0, 5):  # every setting gives the scores of the naive per-option forward
        assert result["agreement"][f"naive@{shots}"]["max_abs_logprob_diff"] <= 1e-4
        assert result["agreement"][f"xalign-no-reuse@{shots}"]["max_abs_logprob_diff"] <= 1e-4
    if not have_lm_eval:
        assert "pip install" in proc.stdout
        pytest.skip("lm-eval is not installed: the accuracy comparison was skipped")
    for shots in (0, 5):
        agree = result["agreement"][f"lm-eval@{shots}"]
        assert agree["accuracy_xalign"] == agree["accuracy_lm-eval"], agree
        assert agree["same_predictions"] == agree["items"] and agree["max_abs_logprob_diff"] <= 1e-4, agree


def test_alignment_step_benchmark_runs_quick(tmp_path):
    out = tmp_path / "align.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "XALIGN_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "alignment_step.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    for layer in ("first", "middle"):
        on, off = result[f"early_exit_{layer}"]["on"], result[f"early_exit_{layer}"]["off"]
        assert on["blocks"] == 24 and on["layer"] == {"first": 1, "middle": 12}[layer]
        assert on["ms_per_step"] > 0 and off["ms_per_step"] > 0
    assert result["plain_loop"]["tokens_per_s"] > 0 and "xalign_ray" not in result       # --quick: no Ray
    assert 0 <= result["data"]["padding_grouped"] <= result["data"]["padding"] < 1
    assert math.isfinite(result["exact_step"]["tokens_per_s"]) and result["exact_step"]["params"] > 0
    assert "early exit" in proc.stdout and "plain loop" in proc.stdout


def test_icl_scoring_large_vocabulary_settings_run_quick(tmp_path):
    """The settings the real-model run compares (LM head at every position, bf16 weights)
    run and agree with xalign's scores: the same within 1e-4 for the full-vocabulary head."""
    out = tmp_path / "icl.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "icl_scoring.py"), "--quick", "--shots", "0",
                           "--settings", "xalign", "xalign-full-vocab", "xalign-bf16", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert {s["setting"] for s in result["settings"]} == {"xalign", "xalign-full-vocab", "xalign-bf16"}
    assert {"xalign_over_full_vocab@0", "bf16_over_fp32@0"} <= set(result["ratios"])
    assert result["agreement"]["xalign-full-vocab@0"]["max_abs_logprob_diff"] <= 1e-4
    assert "LM head at the read positions at 0 shots:" in proc.stdout


def test_alignment_step_strategies_run_quick(tmp_path):
    """6.: the single-process loop, ddp and fsdp (per block and as one unit) on 2 gloo
    workers, each also with LoRA; --cpu-offload on CPU is reported as not measured (it needs
    a GPU), not run."""
    out = tmp_path / "strategies.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "XALIGN_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "alignment_step.py"), "--quick", "--strategy",
                           "ddp", "fsdp", "--workers", "2", "--lora", "--cpu-offload", "--fsdp-unit", "block", "model",
                           "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    names = {"single process", "single process, LoRA", "ddp x 2", "ddp x 2, LoRA", "fsdp x 2", "fsdp x 2, LoRA",
             "fsdp x 2, one unit", "fsdp x 2, one unit, LoRA"}
    assert set(result["settings"]) == names
    assert set(result["not_measured"]) == {"fsdp x 2, cpu offload", "fsdp x 2, cpu offload, LoRA",
                                           "fsdp x 2, cpu offload, one unit", "fsdp x 2, cpu offload, one unit, LoRA"}
    single = result["settings"]["single process"]
    for name, s in result["settings"].items():
        assert "error" not in s, (name, s)
        assert math.isfinite(s["tokens_per_s"]) and s["tokens_per_s"] > 0, name
        assert math.isfinite(s["peak_memory_mb"]) and s["mfu"] is None, name    # CPU without --peak-tflops
        assert s["tokens_ratio"] == s["tokens_per_s"] / single["tokens_per_s"], name
        assert all(math.isfinite(loss) for loss in s["losses"]), name
        assert s["trainable"] < s["params"] if s["lora"] else s["trainable"] == s["params"], name
    for name in ("ddp x 2", "fsdp x 2"):
        assert len(result["settings"][name]["peak_memory_mb_per_worker"]) == 2
    # the same model (seed 0 on every rank) and the same batches per rank under both strategies:
    # the first step's loss (the mean over the ranks) is the same computation, sharded or not
    for fsdp in ("fsdp x 2", "fsdp x 2, one unit"):
        assert result["settings"]["ddp x 2"]["losses"][0] == pytest.approx(result["settings"][fsdp]["losses"][0],
                                                                           abs=1e-4)
    assert set(result["ratios"]) == {"fsdp_over_ddp", "fsdp_over_ddp_lora", "fsdp_over_ddp_one_unit",
                                     "fsdp_over_ddp_one_unit_lora"}
    assert "MFU: n/a" in proc.stdout and "-> fsdp x 2, one unit at" in proc.stdout
    assert "cpu offload: not measured" in proc.stdout
