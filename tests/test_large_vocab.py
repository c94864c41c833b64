"""Gemma 3 on the generic code paths, and what makes a 262k vocabulary affordable: early
exit on sliding-window + global layers, the LM head at the read positions only (training
loss and its gradients), and ``model.freeze``. Tiny random-init models; the real Gemma 3
270M is checked in tests/test_gemma3_real.py (marker ``realmodel``)."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig

from xalign.config.schema import FreezeConfig, ObjectiveConfig, RunConfig
from xalign.data.collate import IGNORE_INDEX
from xalign.model.forward import (
    decoder_blocks,
    early_exit_forward,
    hidden_states_forward,
    lm_logits,
    logits_at,
    sentence_vectors,
)
from xalign.model.freeze import FreezeError, apply_freeze
from xalign.objectives import alignment_loss, lm_loss
from xalign.objectives.lm import response_lm_loss

WINDOW = 4
LENGTHS = (11, 7, 3)  # rows longer and shorter than the sliding window


def tiny_gemma3(*, softcap: float | None = 5.0, tie: bool = True) -> Gemma3ForCausalLM:
    torch.manual_seed(0)  # weight init only
    config = Gemma3TextConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, sliding_window=WINDOW, max_position_embeddings=128,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        final_logit_softcapping=softcap, tie_word_embeddings=tie, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    return Gemma3ForCausalLM(config).eval()


def padded(side: str, lengths=LENGTHS, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(input_ids, attention_mask) of rows of ``lengths`` tokens padded on ``side``, and the rows alone."""
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, 96, (n,), generator=generator) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[i, span], mask[i, span] = row, 1
    return ids, mask, rows


def test_gemma3_facts_the_generic_early_exit_relies_on():
    """Gemma 3 numbers its layer types by block index and builds one mask and one rotary
    table per type before the loop, so cutting the block list at the end keeps every
    remaining block's mask and rotary table; the embedding output is already scaled."""
    model = tiny_gemma3()
    owner, attribute, blocks = decoder_blocks(model)
    assert owner is model.model and attribute == "layers" and len(blocks) == 4
    ids, mask, _ = padded("right")
    with torch.no_grad():
        states = hidden_states_forward(model, ids, mask)
        raw = model.model.embed_tokens.weight[ids]
    torch.testing.assert_close(states[0], raw * model.config.hidden_size ** 0.5)  # scaled by sqrt(hidden)


@pytest.mark.parametrize("side", ["left", "right"])
def test_gemma3_early_exit_equals_the_full_forward_at_every_layer(side):
    model = tiny_gemma3()
    ids, mask, rows = padded(side)
    with torch.no_grad():
        full = hidden_states_forward(model, ids, mask)
        for max_layer in range(0, 5):
            short = early_exit_forward(model, ids, mask, max_layer)
            assert len(short) == max_layer + 1
            for i in range(max_layer + 1):
                assert torch.equal(short[i], full[i]), (side, max_layer, i)
            layers = list(range(max_layer + 1))
            for pooler in ("last", "mean", "max"):
                a = sentence_vectors(model, ids, mask, layers=layers, pooler=pooler, early_exit=True)
                b = sentence_vectors(model, ids, mask, layers=layers, pooler=pooler, early_exit=False)
                assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        # and a padded row is the row alone: the sliding window counts real tokens, either side
        width = ids.shape[1]
        for r, row in enumerate(rows):
            alone = hidden_states_forward(model, row[None], torch.ones(1, len(row), dtype=torch.long))
            span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
            for i in range(5):
                torch.testing.assert_close(full[i][r, span], alone[i][0], rtol=1e-5, atol=1e-5)


def test_sliding_window_matters_in_these_tests():
    """Guard: with a window as long as the rows, block outputs change (so the tests above
    really run rows longer than the window through sliding layers)."""
    model = tiny_gemma3()
    ids, mask, _ = padded("right")
    with torch.no_grad():
        windowed = hidden_states_forward(model, ids, mask)
        model.config.sliding_window = 64
        wide = hidden_states_forward(model, ids, mask)
    assert not torch.allclose(windowed[1][0], wide[1][0])


# --- the LM head at the read positions ---------------------------------------------------


def test_logits_at_gives_the_models_own_processed_logits():
    model = tiny_gemma3(softcap=2.0)  # a small cap: most logits are bent by tanh
    ids, mask, _ = padded("right")
    rows = torch.tensor([0, 0, 1, 2, 2])
    positions = torch.tensor([0, 10, 6, 0, 2])
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        with logits_at(model, rows, positions) as picked:
            out = model(input_ids=ids, attention_mask=mask)
            assert out.logits.shape == (1, 5, 96)  # the head saw 5 positions, not 3 x 11
            some = picked(out.logits)
    torch.testing.assert_close(some, full[rows, positions], rtol=1e-6, atol=1e-6)
    assert some.abs().max() <= 2.0  # softcapped by the model's forward, not by us
    assert not model.get_output_embeddings()._forward_pre_hooks  # the hook is gone


def test_logits_at_gathers_from_full_logits_when_the_head_is_not_called():
    class Plain(torch.nn.Module):  # logits without an output-embeddings module
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(8, 5))

        def forward(self, x):
            return x @ self.weight

    model, x = Plain(), torch.randn(2, 3, 8)
    rows, positions = torch.tensor([1, 0]), torch.tensor([2, 1])
    with logits_at(model, rows, positions) as picked:
        torch.testing.assert_close(picked(model(x)), model(x)[rows, positions])


def lm_batch(ids: torch.Tensor, mask: torch.Tensor, prompt: int = 3) -> dict:
    labels = torch.where(mask.bool(), ids, IGNORE_INDEX)
    for r in range(ids.shape[0]):  # the first ``prompt`` real tokens of each row are prompt
        real = mask[r].nonzero().flatten()
        labels[r, real[:prompt]] = IGNORE_INDEX
    return {"lm_input_ids": ids, "lm_attention_mask": mask, "lm_labels": labels}


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_response_lm_loss_equals_the_full_logits_loss_with_its_gradients(side, tie):
    model = tiny_gemma3(tie=tie).train()
    ids, mask, _ = padded(side, lengths=(11, 9, 6))
    batch = lm_batch(ids, mask)
    reference = lm_loss(lm_logits(model, batch), batch["lm_labels"])
    reference.backward()
    want = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    heads = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, o: heads.append(o.shape[1]))
    loss = response_lm_loss(model, batch)
    handle.remove()
    loss.backward()
    assert heads == [int((batch["lm_labels"][:, 1:] != IGNORE_INDEX).sum())]  # labelled positions only
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_response_lm_loss_needs_a_labelled_token():
    model = tiny_gemma3()
    ids, mask, _ = padded("right")
    batch = {"lm_input_ids": ids, "lm_attention_mask": mask, "lm_labels": torch.full_like(ids, IGNORE_INDEX)}
    with pytest.raises(ValueError, match="no labelled token"):
        response_lm_loss(model, batch)


def test_alignment_loss_on_gemma3_early_exit_and_frozen_embeddings():
    """The whole objective on Gemma 3: early exit on/off give the same loss, and with frozen
    embeddings (tied to the head) neither the table nor the head gets a gradient."""
    model = tiny_gemma3().train()
    src, src_mask, _ = padded("right", lengths=(8, 6, 5), seed=2)
    tgt, tgt_mask, _ = padded("right", lengths=(9, 7, 4), seed=3)
    ids, mask, _ = padded("right", lengths=(11, 9, 6), seed=4)
    batch = {"src_input_ids": src, "src_attention_mask": src_mask, "tgt_input_ids": tgt,
             "tgt_attention_mask": tgt_mask, **lm_batch(ids, mask)}
    losses = {}
    for early_exit in (True, False):
        objective = ObjectiveConfig(early_exit=early_exit, layer=1)
        losses[early_exit] = alignment_loss(model, batch, objective)[1]
    for key in losses[True]:
        torch.testing.assert_close(losses[True][key], losses[False][key], rtol=1e-6, atol=1e-6)
    apply_freeze(model, FreezeConfig(embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight and not model.lm_head.weight.requires_grad
    loss, _ = alignment_loss(model, batch, ObjectiveConfig(layer=1))
    loss.backward()
    assert model.model.embed_tokens.weight.grad is None
    assert all(p.grad is not None for p in model.model.layers.parameters())


# --- model.freeze -------------------------------------------------------------------


def test_freeze_embeddings_and_patterns_leave_the_optimizer_and_the_all_reduce():
    from xalign.optim import Dist
    from xalign.train.setup import setup_optimizer

    model = tiny_gemma3().train()
    frozen = apply_freeze(model, FreezeConfig(embeddings=True, params=["model.layers.0.*", "*.mlp.down_proj.*"]))
    assert "model.embed_tokens.weight" in frozen
    assert all(n.startswith("model.layers.0.") or ".mlp.down_proj." in n or n == "model.embed_tokens.weight"
               for n in frozen)
    assert any(n.startswith("model.layers.0.") for n in frozen) and "model.layers.3.mlp.down_proj.weight" in frozen
    cfg = RunConfig.model_validate({"model": {"freeze": {"embeddings": True}}})
    optimizer, _, params = setup_optimizer(cfg, model, torch.nn.Module())
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in in_optimizer) == (name not in frozen) == p.requires_grad, name
    assert {id(p) for p in params} == in_optimizer

    ids, mask, _ = padded("right")
    loss = response_lm_loss(model, lm_batch(ids, mask))
    loss.backward()
    assert all((p.grad is None) == (name in frozen) for name, p in model.named_parameters())

    # the gradient all-reduce sees only trainable parameters (world_size 2 would all-reduce these)
    seen = []

    class Recording(Dist):
        def average_gradients(self, params):
            seen.extend(p for p in params if p.requires_grad)

    Recording(0, 2).average_gradients(model.parameters())
    assert {id(p) for p in seen} == in_optimizer


def test_freeze_pattern_that_matches_nothing_names_the_key():
    model = tiny_gemma3()
    with pytest.raises(FreezeError, match=r"model\.freeze\.params\[1\]: 'model\.layer\.\*' matches no parameter "
                                          r"of Gemma3ForCausalLM .*model\.layers\.0"):
        apply_freeze(model, FreezeConfig(params=["model.norm.*", "model.layer.*"]))
    assert all(p.requires_grad for p in model.parameters())  # nothing half-applied
    with pytest.raises(FreezeError, match="nothing left to train"):
        apply_freeze(model, FreezeConfig(embeddings=True, params=["*"]))


def test_freeze_is_checked_from_the_config_alone(tmp_path):
    """The driver's check builds the model on the meta device: no weights are read."""
    from xalign.model.freeze import check_freeze

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4)
    config.save_pretrained(tmp_path)  # a config and no weights: enough for the check
    good = RunConfig.model_validate({"model": {"name_or_path": str(tmp_path), "freeze": {"params": ["model.layers.1.*"]}}})
    check_freeze(good.model, str(tmp_path))
    bad = RunConfig.model_validate({"model": {"name_or_path": str(tmp_path), "freeze": {"params": ["layers.9.*"]}}})
    with pytest.raises(FreezeError, match=r"model\.freeze\.params\[0\]: 'layers\.9\.\*' matches no parameter of "
                                          r"LlamaForCausalLM"):
        check_freeze(bad.model, str(tmp_path))


def test_freeze_config_is_validated():
    with pytest.raises(Exception, match=r"params\[0\] is empty"):
        RunConfig.model_validate({"model": {"freeze": {"params": [" "]}}})
    with pytest.raises(Exception, match="embedding"):
        RunConfig.model_validate({"model": {"freeze": {"embedding": True}}})
