"""InfoNCE (local and across 2 gloo ranks), the LM loss and packing, early exit, the step.

transformers is imported inside the model helpers only, so the spawned distributed
workers (which import this module) start fast.
"""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xalign.config.schema import ObjectiveConfig
from xalign.data.collate import IGNORE_INDEX, build_lm_example, collate_lm, pack_examples
from xalign.model.forward import decoder_blocks, early_exit_forward, hidden_states_forward, sentence_vectors
from xalign.objectives import LearnableTemperature, alignment_loss, info_nce, lm_loss


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


# ---------------------------------------------------------------- InfoNCE golden values


def numpy_info_nce(a, p, t, hard=None, symmetric=False):
    """Independent reference: explicit loops over anchors and candidates, in float64."""
    a, p = np.asarray(a, np.float64), np.asarray(p, np.float64)
    cands = p if hard is None else np.concatenate([p, np.asarray(hard, np.float64)])

    def cos(x, y):
        return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))

    def direction(queries, candidates):
        losses = []
        for i, q in enumerate(queries):
            scores = [cos(q, c) / t for c in candidates]
            top = max(scores)
            log_z = top + math.log(sum(math.exp(s - top) for s in scores))
            losses.append(log_z - scores[i])
        return sum(losses) / len(losses)

    forward = direction(a, cands)
    return (forward + direction(p, a)) / 2 if symmetric else forward


A, P, H = _randn(6, 8, seed=1), _randn(6, 8, seed=2), _randn(4, 8, seed=3)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("with_hard", [False, True])
@pytest.mark.parametrize("temperature", [0.05, 0.7])
def test_info_nce_matches_reference(symmetric, with_hard, temperature):
    hard = H if with_hard else None
    got = info_nce(A, P, temperature=temperature, symmetric=symmetric, hard_negatives=hard)
    want = numpy_info_nce(A, P, temperature, hard=hard, symmetric=symmetric)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_info_nce_directions_differ_and_symmetric_is_their_mean():
    forward = info_nce(A, P, temperature=0.1)
    backward = info_nce(P, A, temperature=0.1)
    assert forward.item() != pytest.approx(backward.item())
    both = info_nce(A, P, temperature=0.1, symmetric=True)
    assert both.item() == pytest.approx((forward.item() + backward.item()) / 2, rel=1e-6)


def test_info_nce_scale_invariant_and_bf16_inputs():
    ref = info_nce(A, P, temperature=0.05)
    assert info_nce(3 * A, 0.5 * P, temperature=0.05).item() == pytest.approx(ref.item(), rel=1e-5)
    low = info_nce(A.bfloat16(), P.bfloat16(), temperature=0.05)
    assert low.dtype == torch.float32 and low.item() == pytest.approx(ref.item(), rel=2e-2)


def test_info_nce_stays_float32_under_bf16_autocast():
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = info_nce(A, P, temperature=0.05, symmetric=True)
    # a bf16 similarity would be off by ~1e-3 relative here
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(numpy_info_nce(A, P, 0.05, symmetric=True), rel=1e-5)


def test_learnable_temperature_gets_gradient_and_is_clamped():
    temperature = LearnableTemperature(0.05)
    assert temperature().item() == pytest.approx(0.05)
    loss = info_nce(A, P, temperature=temperature(), symmetric=True)
    loss.backward()
    assert temperature.log_scale.grad is not None and temperature.log_scale.grad.item() != 0.0
    with torch.no_grad():
        temperature.log_scale.fill_(math.log(1e6))  # scale far above CLIP's 100
    assert temperature().item() == pytest.approx(0.01)
    with pytest.raises(ValueError, match="min_temperature <= temperature"):
        LearnableTemperature(0.001)


def test_info_nce_needs_two_pairs():
    with pytest.raises(ValueError, match="needs at least 2 pairs in the global batch.*batch size 1"):
        info_nce(A[:1], P[:1], temperature=0.05)
    with pytest.raises(ValueError, match="pair up row by row"):
        info_nce(A, P[:5], temperature=0.05)
    with pytest.raises(RuntimeError, match="process group"):
        info_nce(A, P, temperature=0.05, gather=True)


# ---------------------------------------------------------------- InfoNCE across 2 ranks (gloo)
#
# Convention: each rank's loss is the mean over its local anchors; DDP averages parameter
# gradients over ranks. Then (equal local sizes) the mean of the rank losses is the
# single-process loss on the concatenated batch, the DDP-averaged parameter gradients are
# its gradients, and each rank's input gradient is world_size x the single-process one
# (its loss is not divided by world_size; DDP's averaging does that for parameters).

DIST_CASES = {  # name: (local sizes, symmetric, hard negatives per rank)
    "forward": ((3, 3), False, 0),
    "symmetric_hard": ((3, 3), True, 2),
    "unequal": ((2, 4), True, 1),
}


def _dist_data(sizes, hard_per_rank):
    n = sum(sizes)
    anchors, positives = _randn(n, 8, seed=11), _randn(n, 8, seed=12)
    hard = _randn(hard_per_rank * len(sizes), 8, seed=13) if hard_per_rank else None
    weight = _randn(8, 8, seed=14)
    return anchors, positives, hard, weight


def _loss_on(anchors, positives, hard, weight, temperature_module, symmetric, gather=None):
    """The shared part of a 'model': a projection and a learnable temperature."""
    return info_nce(
        anchors @ weight, positives @ weight, temperature=temperature_module(), symmetric=symmetric,
        hard_negatives=None if hard is None else hard @ weight, gather=gather,
    )


def _dist_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        for name, (sizes, symmetric, hard_per_rank) in DIST_CASES.items():
            anchors, positives, hard, weight = _dist_data(sizes, hard_per_rank)
            start = sum(sizes[:rank])
            a = anchors[start : start + sizes[rank]].clone().requires_grad_()
            p = positives[start : start + sizes[rank]].clone().requires_grad_()
            h = None if hard is None else hard[rank * hard_per_rank : (rank + 1) * hard_per_rank].clone().requires_grad_()
            w = weight.clone().requires_grad_()
            temperature = LearnableTemperature(0.1)
            loss = _loss_on(a, p, h, w, temperature, symmetric)
            loss.backward()
            param_grads = torch.cat([w.grad.flatten(), temperature.log_scale.grad.reshape(1)])
            dist.all_reduce(param_grads)  # what DDP does: average over ranks
            results[name] = {
                "loss": loss.detach(), "a": a.grad, "p": p.grad,
                "h": None if h is None else h.grad, "params": param_grads / world,
            }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_info_nce_distributed_matches_single_process(tmp_path):
    world = 2
    mp.spawn(_dist_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    for name, (sizes, symmetric, hard_per_rank) in DIST_CASES.items():
        anchors, positives, hard, weight = _dist_data(sizes, hard_per_rank)
        a, p, w = (x.clone().requires_grad_() for x in (anchors, positives, weight))
        h = None if hard is None else hard.clone().requires_grad_()
        temperature = LearnableTemperature(0.1)
        if len(set(sizes)) == 1:
            reference = _loss_on(a, p, h, w, temperature, symmetric, gather=False)
        else:
            # unequal shards: the objective DDP optimises is the mean of the rank losses,
            # each the mean over its own anchors; built here from per-shard losses that
            # still score every anchor against the whole global batch
            reference = 0.0
            for r, n in enumerate(sizes):
                start = sum(sizes[:r])
                rows = slice(start, start + n)
                logits_f = torch.nn.functional.normalize(a[rows] @ w, dim=-1) @ torch.nn.functional.normalize(
                    torch.cat([p @ w, h @ w]), dim=-1).T / temperature()
                targets = torch.arange(start, start + n)
                loss_r = torch.nn.functional.cross_entropy(logits_f, targets)
                logits_b = torch.nn.functional.normalize(p[rows] @ w, dim=-1) @ torch.nn.functional.normalize(
                    a @ w, dim=-1).T / temperature()
                loss_r = (loss_r + torch.nn.functional.cross_entropy(logits_b, targets)) / 2
                reference = reference + loss_r / world
        reference.backward()

        mean_rank_loss = sum(r[name]["loss"] for r in ranks) / world
        torch.testing.assert_close(mean_rank_loss, reference.detach(), rtol=1e-5, atol=1e-6)
        params = torch.cat([w.grad.flatten(), temperature.log_scale.grad.reshape(1)])
        for r in range(world):
            torch.testing.assert_close(ranks[r][name]["params"], params, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.cat([r[name]["a"] for r in ranks]) / world, a.grad, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(torch.cat([r[name]["p"] for r in ranks]) / world, p.grad, rtol=1e-4, atol=1e-7)
        if h is not None:
            torch.testing.assert_close(torch.cat([r[name]["h"] for r in ranks]) / world, h.grad, rtol=1e-4, atol=1e-7)
        if name == "forward":  # and that is the released single-process value on the whole batch
            want = numpy_info_nce((anchors @ weight).numpy(), (positives @ weight).numpy(), 0.1)
            assert mean_rank_loss.item() == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------- tiny models


def tiny_llama(*, layers=4, attn="sdpa"):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)  # weight init only
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, attn_implementation=attn,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_gpt2():
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=4, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
    return AutoModelForCausalLM.from_config(config).eval()


def _count_block_calls(model):
    _, _, blocks = decoder_blocks(model)
    calls = [0] * len(blocks)
    handles = [b.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1)) for i, b in enumerate(blocks)]
    return calls, handles


IDS = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14], [0, 0, 0, 3, 4, 5]])
MASK = (IDS != 0).long()  # left padded


def test_hidden_states_convention_transformers5():
    """transformers 5.x: hidden_states has num_layers + 1 entries, [i] for i < num_layers is the
    raw output of block i, and the LAST entry is replaced by the final-norm output."""
    model = tiny_llama()
    _, _, blocks = decoder_blocks(model)
    raw = []
    handles = [b.register_forward_hook(lambda m, a, o: raw.append(o[0] if isinstance(o, tuple) else o)) for b in blocks]
    with torch.no_grad():
        out = model.base_model(input_ids=IDS, attention_mask=MASK, output_hidden_states=True)
    for handle in handles:
        handle.remove()
    hs = out.hidden_states
    assert len(hs) == len(blocks) + 1 == 5
    for i in range(1, 4):
        assert torch.equal(hs[i], raw[i - 1])
    assert torch.equal(hs[-1], out.last_hidden_state)
    assert not torch.allclose(hs[-1], raw[-1])
    torch.testing.assert_close(hs[-1], model.base_model.norm(raw[-1]))


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_early_exit_equals_full_forward_and_runs_fewer_blocks(make):
    model = make()
    owner, attribute, blocks = decoder_blocks(model)
    keys = list(model.state_dict())
    with torch.no_grad():
        full = hidden_states_forward(model, IDS, MASK)
        for max_layer in (0, 1, 2, 4):  # embeddings, the released layer 1, the middle, the last
            calls, handles = _count_block_calls(model)
            short = early_exit_forward(model, IDS, MASK, max_layer)
            for handle in handles:
                handle.remove()
            assert len(short) == max_layer + 1
            for i in range(max_layer + 1):
                assert torch.equal(short[i], full[i]), (max_layer, i)
            assert calls == [1] * max(max_layer, 1) + [0] * (4 - max(max_layer, 1))
            for pooler in ("last", "mean", "max"):
                layers = sorted({1, max_layer}) if max_layer else [0]
                a = sentence_vectors(model, IDS, MASK, layers=layers, pooler=pooler, early_exit=True)
                b = sentence_vectors(model, IDS, MASK, layers=layers, pooler=pooler, early_exit=False)
                for x, y in zip(a, b):
                    assert torch.equal(x, y)
    assert getattr(owner, attribute) is blocks and list(model.state_dict()) == keys
    with pytest.raises(ValueError, match=r"max_layer must be in 0\.\.4"):
        early_exit_forward(model, IDS, MASK, 5)


def test_early_exit_restores_blocks_after_an_error():
    model = tiny_llama()
    owner, attribute, blocks = decoder_blocks(model)
    with pytest.raises(Exception):
        early_exit_forward(model, torch.tensor([[70, 71]]), None, 1)  # ids outside the vocabulary
    assert getattr(owner, attribute) is blocks
    assert not blocks[0]._forward_pre_hooks and not blocks[0]._forward_hooks


# ---------------------------------------------------------------- LM examples, collation, packing


def test_build_lm_example_labels_exactly_the_response():
    ex = build_lm_example([3, 4, 5], [10, 11], max_length=16, eos_id=2)
    assert ex["input_ids"] == [3, 4, 5, 10, 11, 2]
    assert ex["labels"] == [IGNORE_INDEX] * 3 + [10, 11, 2]
    assert ex["prompt_truncated"] == 0


def test_build_lm_example_never_drops_silently():
    with pytest.raises(ValueError, match="max_length=5.*truncate_prompt=True"):
        build_lm_example([3, 4, 5], [10, 11], max_length=5, eos_id=2)
    ex = build_lm_example([3, 4, 5], [10, 11], max_length=5, eos_id=2, truncate_prompt=True)
    assert ex == {"input_ids": [4, 5, 10, 11, 2], "labels": [IGNORE_INDEX] * 2 + [10, 11, 2], "prompt_truncated": 1}
    with pytest.raises(ValueError, match="response alone does not fit"):
        build_lm_example([3], [10, 11, 12], max_length=4, eos_id=2, truncate_prompt=True)
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        build_lm_example([], [10], max_length=4, eos_id=2)


EXAMPLES = [
    build_lm_example(prompt, response, max_length=12, eos_id=2)
    for prompt, response in [
        ([3, 4, 5], [10, 11, 12]),
        ([6], [13, 14]),
        ([7, 8, 9, 3, 4], [15, 16, 17, 18, 19]),
        ([5, 6], [20]),
        ([9, 9, 9, 9], [21, 22, 23, 24, 25, 26, 27]),
    ]
]


@pytest.mark.parametrize("side", ["left", "right"])
def test_collate_lm_keeps_response_labels(side):
    batch = collate_lm(EXAMPLES, pad_id=0, padding_side=side)
    for row, ex in enumerate(EXAMPLES):
        mask = batch["attention_mask"][row].bool()
        assert batch["input_ids"][row][mask].tolist() == ex["input_ids"]
        assert batch["labels"][row][mask].tolist() == ex["labels"]
        assert (batch["labels"][row][~mask] == IGNORE_INDEX).all()
        assert batch["position_ids"][row][mask].tolist() == list(range(len(ex["input_ids"])))
    with pytest.raises(ValueError, match="padding_side"):
        collate_lm(EXAMPLES, 0, padding_side="middle")


def test_pack_examples_keeps_every_token_and_starts_new_rows():
    packed = pack_examples(EXAMPLES, max_length=12, pad_id=0)
    lengths = [len(ex["input_ids"]) for ex in EXAMPLES]  # 7, 4, 11, 4, 12
    assert packed["input_ids"].shape == (4, 12)  # [7+4], [11], [4], [12]: no row overflows
    assert packed["segment_ids"].tolist()[0] == [0] * 7 + [1] * 4 + [2]
    total_real = sum(lengths)
    is_pad = packed["segment_ids"] == torch.tensor([2, 1, 1, 1]).unsqueeze(1)
    assert int((~is_pad).sum()) == total_real
    # every response token labelled exactly once, in order
    labelled = packed["labels"][packed["labels"] != IGNORE_INDEX].tolist()
    assert labelled == [t for ex in EXAMPLES for t in ex["labels"] if t != IGNORE_INDEX]
    assert packed["position_ids"][0].tolist() == list(range(7)) + list(range(4)) + [0]
    assert packed["attention_mask"].shape == (4, 1, 12, 12)
    assert packed["attention_mask"][0, 0, 8, 2] < -1e30  # example 2 cannot see example 1
    assert packed["attention_mask"][0, 0, 8, 7] == 0
    with pytest.raises(ValueError, match="example 0 has 7 tokens > max_length=6"):
        pack_examples(EXAMPLES, max_length=6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_and_loss_equal_unpacked(attn):
    model = tiny_llama(attn=attn)
    packed = pack_examples(EXAMPLES, max_length=12, pad_id=0)
    with torch.no_grad():
        logits = model(
            input_ids=packed["input_ids"], attention_mask=packed["attention_mask"], position_ids=packed["position_ids"]
        ).logits
        row, col = 0, 0
        for ex in EXAMPLES:
            n = len(ex["input_ids"])
            if col + n > 12:
                row, col = row + 1, 0
            alone = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0]
            torch.testing.assert_close(logits[row, col : col + n], alone, atol=1e-5, rtol=1e-5)
            col += n
        unpacked = collate_lm(EXAMPLES, 0, padding_side="left")
        unpacked_logits = model(
            input_ids=unpacked["input_ids"], attention_mask=unpacked["attention_mask"],
            position_ids=unpacked["position_ids"],
        ).logits
    torch.testing.assert_close(
        lm_loss(logits, packed["labels"]), lm_loss(unpacked_logits, unpacked["labels"]), atol=1e-5, rtol=1e-5
    )


def test_lm_loss_golden():
    logits = _randn(2, 4, 5, seed=21)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1], [IGNORE_INDEX, 4, IGNORE_INDEX, IGNORE_INDEX]])
    terms = []
    for b, t in [(0, 1), (0, 2), (1, 0)]:  # logits at t predict labels at t + 1
        row = logits[b, t].double()
        terms.append(float(torch.logsumexp(row, 0) - row[labels[b, t + 1]]))
    assert lm_loss(logits, labels).item() == pytest.approx(sum(terms) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="no labelled token"):
        lm_loss(logits, torch.full((2, 4), IGNORE_INDEX))


# ---------------------------------------------------------------- the combined step


def _step_batch():
    src_ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11], [0, 0, 12, 13]])
    tgt_ids = torch.tensor([[20, 21, 22, 0], [23, 24, 0, 0], [25, 26, 27, 28]])  # right padded
    lm = collate_lm(EXAMPLES[:3], 0, padding_side="right")
    return {
        "src_input_ids": src_ids, "src_attention_mask": (src_ids != 0).long(),
        "tgt_input_ids": tgt_ids, "tgt_attention_mask": (tgt_ids != 0).long(),
        "lm_input_ids": lm["input_ids"], "lm_labels": lm["labels"], "lm_attention_mask": lm["attention_mask"],
    }


def test_step_combines_weighted_branches():
    model = tiny_llama()
    batch = _step_batch()
    cfg = ObjectiveConfig(contrastive_weight=1.0, lm_weight=1.5, temperature=0.05, layer=[1, 2])
    loss, parts = alignment_loss(model, batch, cfg)
    assert set(parts) == {"loss", "contrastive", "lm", "contrastive/layer1", "contrastive/layer2"}
    torch.testing.assert_close(loss.detach(), parts["contrastive"] + 1.5 * parts["lm"])
    full, _ = alignment_loss(model, batch, ObjectiveConfig(layer=[1, 2], early_exit=False))
    torch.testing.assert_close(loss, full)


@pytest.mark.parametrize("branch", ["contrastive", "lm"])
def test_step_with_zero_weight_skips_the_branch(branch):
    model = tiny_llama()
    head_calls = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, o: head_calls.append(1))
    calls, _ = _count_block_calls(model)
    cfg = ObjectiveConfig(
        contrastive_weight=1.0 if branch == "contrastive" else 0.0,
        lm_weight=1.5 if branch == "lm" else 0.0,
        layer=1,
    )
    temperature = LearnableTemperature(0.05)
    loss, parts = alignment_loss(model, _step_batch(), cfg, temperature=temperature)
    loss.backward()
    _, _, blocks = decoder_blocks(model)
    if branch == "contrastive":
        assert set(parts) == {"loss", "contrastive"}
        assert head_calls == [] and calls == [1, 0, 0, 0]  # src and tgt in one forward, block 1 only
        assert temperature.log_scale.grad is not None
        assert blocks[0].mlp.up_proj.weight.grad is not None
        assert all(p.grad is None for p in blocks[1].parameters())  # gradient stops at layer 1
    else:
        assert set(parts) == {"loss", "lm"}
        assert head_calls == [1] and calls == [1, 1, 1, 1]
        torch.testing.assert_close(loss.detach(), 1.5 * parts["lm"])
    with pytest.raises(ValueError, match="cannot both be 0"):
        alignment_loss(model, _step_batch(), ObjectiveConfig(contrastive_weight=0.0, lm_weight=0.0))


@pytest.mark.parametrize("hard_negatives", [False, True])
def test_fused_sides_give_the_loss_and_gradients_of_one_forward_per_side(hard_negatives):
    """src is partly left padded, tgt right padded and of another width: stacking pads both
    to one width on the right, which must not change any vector, loss or gradient."""
    batch = _step_batch()
    if hard_negatives:
        neg = torch.tensor([[30, 31, 0, 0, 0], [32, 33, 34, 35, 36], [37, 0, 0, 0, 0]])
        batch.update(neg_input_ids=neg, neg_attention_mask=(neg != 0).long())
    results = []
    for fused in (True, False):
        model = tiny_llama()
        calls, _ = _count_block_calls(model)
        cfg = ObjectiveConfig(lm_weight=1.5, layer=[1, 2], pooler="last", symmetric=True, fused_sides=fused)
        loss, parts = alignment_loss(model, batch, cfg)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), parts, grads, list(calls)))
    (loss_f, parts_f, grads_f, calls_f), (loss_s, parts_s, grads_s, calls_s) = results
    torch.testing.assert_close(loss_f, loss_s, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(parts_f["contrastive"], parts_s["contrastive"], atol=1e-6, rtol=1e-5)
    assert grads_f.keys() == grads_s.keys()
    for name in grads_f:
        torch.testing.assert_close(grads_f[name], grads_s[name], atol=1e-6, rtol=1e-4)
    sides = 3 if hard_negatives else 2
    assert calls_f[0] == 1 + 1 and calls_s[0] == sides + 1    # contrastive forwards + the LM forward


def test_step_accepts_packed_lm_batch():
    model = tiny_llama()
    packed = pack_examples(EXAMPLES, max_length=12)
    unpacked = collate_lm(EXAMPLES, 0, padding_side="right")
    cfg = ObjectiveConfig(contrastive_weight=0.0, lm_weight=1.0)
    batch_packed = {"lm_input_ids": packed["input_ids"], "lm_labels": packed["labels"],
                    "lm_attention_mask": packed["attention_mask"], "lm_position_ids": packed["position_ids"]}
    batch_unpacked = {"lm_input_ids": unpacked["input_ids"], "lm_labels": unpacked["labels"],
                      "lm_attention_mask": unpacked["attention_mask"]}
    with torch.no_grad():
        a, _ = alignment_loss(model, batch_packed, cfg)
        b, _ = alignment_loss(model, batch_unpacked, cfg)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
