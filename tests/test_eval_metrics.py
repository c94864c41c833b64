"""Gap metrics, retrieval and MEXA golden values, representation embedding, plots."""

from __future__ import annotations

import math

import pytest
import torch

from xalign.eval.metrics import gap, summarise, table
from xalign.eval.representations import alignment_metrics, cosine_matrix, embed_parallel, mexa, retrieval_top1


def test_gap_and_summary_use_the_contract_names():
    acc = {"xcopa": {"en": [0.8], "zh": [0.6], "vi": [0.5]},
           "pawsx": {"en": [0.7, 0.9], "de": [0.6, 0.6]}}
    m = summarise(acc, pivot="en")
    assert m["eval/xcopa/en/acc"] == 0.8 and m["eval/xcopa/gap"] == pytest.approx(0.8 - 0.55)
    assert m["eval/pawsx/en/acc"] == pytest.approx(0.8) and m["eval/pawsx/en/acc_std"] == pytest.approx(0.1414, abs=1e-4)
    assert m["eval/acc_pivot"] == pytest.approx((0.8 + 0.8) / 2)
    assert m["eval/acc_non_pivot"] == pytest.approx((0.55 + 0.6) / 2)
    assert m["eval/gap"] == pytest.approx(((0.8 - 0.55) + (0.8 - 0.6)) / 2)
    assert m["eval/acc"] == pytest.approx(((0.8 + 0.6 + 0.5) / 3 + (0.8 + 0.6) / 2) / 2)
    assert "dev/acc" in summarise(acc, pivot="en", prefix="dev")
    text = table(m, pivot="en")
    assert text.splitlines()[0].split()[:2] == ["task", "en*"] and "25.0" in text   # xcopa gap 25 points


def test_gap_needs_the_pivot_and_another_language():
    assert math.isnan(gap({"en": 0.5}, "en")) and math.isnan(gap({"zh": 0.5}, "en"))
    assert "eval/gap" not in summarise({"t": {"zh": [0.5]}}, pivot="en")


def test_mexa_counts_strict_row_and_column_maxima():
    sim = torch.tensor([[0.9, 0.1, 0.2],
                        [0.95, 0.8, 0.1],    # row 1's diagonal loses to column 0 of its row
                        [0.0, 0.3, 0.3]])   # row 2: a tie with the diagonal is not strict
    # i=0: 0.9 is max of row 0 but column 0 has 0.95 -> no; i=1: 0.8 < 0.95 in its row -> no;
    # i=2: 0.3 ties 0.3 in its row -> no
    assert mexa(sim) == 0.0
    assert mexa(torch.eye(4)) == 1.0
    assert retrieval_top1(torch.eye(4)) == 1.0
    assert retrieval_top1(torch.tensor([[0.1, 0.9], [0.2, 0.8]])) == 0.5


def test_alignment_metrics_on_constructed_vectors():
    torch.manual_seed(0)
    base = torch.randn(3, 50, 8)                       # (layers, N, hidden)
    from xalign.eval.representations import Embeddings

    emb = Embeddings({"en": base, "aa": base + 0.01 * torch.randn_like(base), "bb": torch.randn(3, 50, 8)})
    m = alignment_metrics(emb, pivot="en", layer=1)
    assert m["align/retrieval/aa/top1"] == 1.0 and m["align/mexa/aa"] == 1.0
    assert m["align/retrieval/bb/top1"] < 0.2 and m["align/mexa/bb"] < 0.2
    assert m["align/mexa"] == pytest.approx((m["align/mexa/aa"] + m["align/mexa/bb"]) / 2)
    assert {"align/mexa/aa/layer0", "align/mexa/aa/layer2"} <= set(m)
    assert cosine_matrix(base, base).shape == (3, 50, 50)


def test_embedding_a_world_model_is_batch_independent(tiny_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, world_dir = tiny_world
    tok = AutoTokenizer.from_pretrained(world_dir / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(world_dir / "base_model")
    sentences = {"qaa": ["Alba cozvy .", "a b c d e f"], "qab": ["x y", "z"]}
    state = torch.get_rng_state()
    one = embed_parallel(model, tok, sentences, batch_size=1)
    many = embed_parallel(model, tok, sentences, batch_size=64)
    assert torch.equal(state, torch.get_rng_state()) and model.training is False
    for lang in sentences:
        torch.testing.assert_close(one.vectors[lang], many.vectors[lang], rtol=1e-4, atol=1e-5)
    assert one.vectors["qaa"].shape == (model.config.num_hidden_layers + 1, 2, model.config.hidden_size)


def test_plots_are_written(tmp_path):
    from xalign.eval.plots import accuracy_bars, projection

    m = summarise({"xcopa": {"en": [0.8], "zh": [0.6]}}, pivot="en")
    bars = accuracy_bars(m, pivot="en", path=tmp_path / "acc.png")
    proj = projection({"en": torch.randn(20, 8), "zh": torch.randn(20, 8)}, path=tmp_path / "proj.png")
    for path in (bars, proj):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
