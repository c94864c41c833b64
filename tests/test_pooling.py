"""Poolers, layer resolution, and pooling under left vs right padding on tiny HF models."""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from xalign.data.collate import position_ids_from_mask
from xalign.model.pooling import (
    POOLERS,
    get_pooler,
    pool,
    resolve_layer,
    resolve_layers,
)


# ---------------------------------------------------------------- poolers on fixed tensors


def _hidden_with_poisoned_pads(mask: torch.Tensor, hidden: int = 3) -> torch.Tensor:
    """Real tokens get 1, 2, 3, ... per position; pads get values that would win any max
    and wreck any sum (a huge number and a NaN)."""
    batch, seq = mask.shape
    values = torch.arange(1, batch * seq * hidden + 1, dtype=torch.float32).reshape(batch, seq, hidden)
    poison = torch.full_like(values, 1e9)
    poison[..., 0] = float("nan")
    return torch.where(mask.bool().unsqueeze(-1), values, poison)


MASKS = {
    "right": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
    "left": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]),
}


@pytest.mark.parametrize("side", ["left", "right"])
def test_poolers_ignore_pads(side):
    mask = MASKS[side]
    hidden = _hidden_with_poisoned_pads(mask)
    for b in range(mask.shape[0]):
        real = hidden[b][mask[b].bool()]  # (n_real, hidden)
        torch.testing.assert_close(get_pooler("last")(hidden, mask)[b], real[-1])
        torch.testing.assert_close(get_pooler("mean")(hidden, mask)[b], real.mean(dim=0))
        torch.testing.assert_close(get_pooler("max")(hidden, mask)[b], real.max(dim=0).values)


def test_last_uses_the_mask_not_the_length():
    # a hole in the middle: the last token with mask 1 is position 3, length would say 2
    mask = torch.tensor([[1, 0, 1, 1, 0]])
    hidden = torch.arange(5, dtype=torch.float32).reshape(1, 5, 1)
    assert get_pooler("last")(hidden, mask).item() == 3.0


def test_pooler_rejects_empty_rows():
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        get_pooler("mean")(torch.zeros(2, 3, 4), torch.tensor([[1, 1, 0], [0, 0, 0]]))


def test_pooler_keeps_dtype_and_gradient():
    hidden = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0)).bfloat16().requires_grad_()
    mask = MASKS["left"][:, 1:]
    for name in POOLERS:
        out = get_pooler(name)(hidden, mask)
        assert out.shape == (2, 3) and out.dtype == torch.bfloat16
        (grad,) = torch.autograd.grad(out.float().sum(), hidden)
        assert torch.all(grad[0, 0] == 0), f"{name} sent gradient to a pad position"


def test_unknown_pooler_says_did_you_mean():
    with pytest.raises(ValueError) as err:
        get_pooler("avg")
    assert str(err.value) == "Unknown pooler 'avg'. Did you mean 'mean'? Available: last, max, mean"
    with pytest.raises(ValueError, match=r"Did you mean 'last'\?"):
        get_pooler("lats")
    with pytest.raises(ValueError) as err:
        get_pooler("cls")
    assert "Did you mean" not in str(err.value) and "Available: last, max, mean" in str(err.value)


def test_pool_over_layers_in_given_order():
    hidden_states = tuple(torch.full((2, 3, 4), float(i)) for i in range(5))
    mask = torch.ones(2, 3)
    out = pool(hidden_states, mask, [3, 1], "mean")
    assert [v[0, 0].item() for v in out] == [3.0, 1.0]
    stacked = torch.stack(hidden_states)
    assert pool(stacked, mask, 2, get_pooler("max"))[0][0, 0].item() == 2.0
    with pytest.raises(ValueError, match=r"resolved layer indices 0\.\.4"):
        pool(hidden_states, mask, [5], "mean")
    with pytest.raises(ValueError, match="resolved layer indices"):
        pool(hidden_states, mask, [-1], "mean")


def test_position_ids_from_mask():
    assert position_ids_from_mask(MASKS["left"]).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert position_ids_from_mask(MASKS["right"]).tolist() == [[0, 1, 2, 2, 2], [0, 1, 2, 3, 4]]


# ---------------------------------------------------------------- layer resolution

LAYER_TABLE = [  # (spec, num_layers, index)
    (0, 24, 0),  # embedding output
    (1, 24, 1),  # block 1 (the released "last-1")
    (24, 24, 24),
    (-1, 24, 24),  # last block, like Python
    (-2, 24, 23),
    (-25, 24, 0),
    (0.0, 24, 0),
    (0.25, 24, 6),
    (0.5, 24, 12),  # the middle block
    (1.0, 24, 24),  # a float 1.0 is the LAST block, an int 1 is block 1
    (0.5, 5, 3),  # halves round up: middle of 5 blocks is block 3
    (0.5, 7, 4),
    (0.1, 4, 0),
]


@pytest.mark.parametrize(("spec", "num_layers", "index"), LAYER_TABLE)
def test_resolve_layer_table(spec, num_layers, index):
    assert resolve_layer(spec, num_layers) == index


def test_resolve_layer_error_message():
    with pytest.raises(ValueError) as err:
        resolve_layer(30, 24)
    assert str(err.value) == "layer 30 requested; model has 24 blocks, so valid values are -25..24 or a fraction 0.0..1.0"
    with pytest.raises(ValueError, match="xglm-564m has 24 blocks"):
        resolve_layer(-26, 24, model_name="xglm-564m")


@pytest.mark.parametrize("spec", [25, -26, 1.5, -0.1, float("nan"), math.inf])
def test_resolve_layer_out_of_range(spec):
    with pytest.raises(ValueError, match=r"valid values are -25\.\.24 or a fraction 0\.0\.\.1\.0"):
        resolve_layer(spec, 24)


@pytest.mark.parametrize("spec", [True, False, "1", None])
def test_resolve_layer_rejects_non_numbers(spec):
    with pytest.raises(TypeError, match="int index or a float fraction"):
        resolve_layer(spec, 24)


def test_resolve_layers_sorted_unique():
    assert resolve_layers([1, -1, 0.5, 1, 12], 24) == [1, 12, 24]
    assert resolve_layers(0.5, 24) == [12]
    assert resolve_layers(-1, 4) == [4]
    with pytest.raises(ValueError, match="at least one layer"):
        resolve_layers([], 24)


# ---------------------------------------------------------------- left vs right padding on tiny models


def _tiny(kind: str):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)  # weight init only; the test's data use their own generator
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4,
        )
    else:  # absolute learned position embeddings: left padding needs position_ids
        config = GPT2Config(vocab_size=64, n_embd=32, n_layer=4, n_head=4, n_positions=64,
                            bos_token_id=1, eos_token_id=2)
    return AutoModelForCausalLM.from_config(config).eval()


def _padded(sequences, side, pad_id=0):
    width = max(map(len, sequences))
    ids, mask = [], []
    for seq in sequences:
        pad = width - len(seq)
        ids.append([pad_id] * pad + seq if side == "left" else seq + [pad_id] * pad)
        mask.append([0] * pad + [1] * len(seq) if side == "left" else [1] * len(seq) + [0] * pad)
    return torch.tensor(ids), torch.tensor(mask)


SEQUENCES = [[5, 9, 3], [7, 8, 9, 10, 11, 12], [4, 4, 20, 21]]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_pooling_same_under_left_and_right_padding(kind):
    from xalign.model.forward import hidden_states_forward

    model = _tiny(kind)
    pooled = {}
    with torch.no_grad():
        for side in ("left", "right"):
            ids, mask = _padded(SEQUENCES, side)
            hidden = hidden_states_forward(model, ids, mask)  # position_ids come from the mask
            pooled[side] = {name: pool(hidden, mask, [1, 2, 4], name) for name in POOLERS}
        alone = [hidden_states_forward(model, torch.tensor([seq]), None) for seq in SEQUENCES]
    for name in POOLERS:
        for left, right in zip(pooled["left"][name], pooled["right"][name]):
            torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)
    # and equal to each sequence run on its own, without padding
    for b, hidden in enumerate(alone):
        torch.testing.assert_close(pooled["left"]["last"][0][b], hidden[1][0, -1], atol=1e-5, rtol=1e-5)


def test_left_padding_without_position_ids_shifts_absolute_positions():
    """Why position_ids_from_mask exists: transformers 5.x numbers positions 0..seq-1 when
    position_ids is omitted, so GPT-2 pools different vectors under left padding."""
    model = _tiny("gpt2")
    with torch.no_grad():
        vectors = {}
        for side in ("left", "right"):
            ids, mask = _padded(SEQUENCES, side)
            hidden = model.base_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            vectors[side] = pool(hidden, mask, 1, "last")[0]
    assert not torch.allclose(vectors["left"][0], vectors["right"][0], atol=1e-3)


@pytest.mark.parametrize(("name", "suggestion"), [("avg-1", "mean"), ("last-1", "last"), ("Mean", "mean"), ("maxx", "max")])
def test_unknown_pooler_suggestions(name, suggestion):
    with pytest.raises(ValueError, match=f"Did you mean '{suggestion}'"):
        get_pooler(name)
