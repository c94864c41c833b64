"""The alignment loop without Ray: resume equivalence, 2-rank equivalence, checkpoints,
sample building, model loading. Seconds each, on the session's tiny world."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from xalign.config import RunConfig, from_overrides
from xalign.data.instructions import cross_lingual_samples
from xalign.data.stream import ShardedOrder
from xalign.model import ModelLoadError, load_model, load_tokenizer
from xalign.optim import Dist, NonFiniteLossError, make_scheduler, train_step
from xalign.train.setup import setup_run

CPU = torch.device("cpu")


def run_config(tiny_world_overrides, *extra: str) -> RunConfig:
    return from_overrides(RunConfig, [f"data.world.{o}" for o in tiny_world_overrides] + [
        "data.max_length=64", "optim.batch_size=4", "optim.lr=1e-3", "optim.max_steps=6",
        "objective.layer=0.5", "objective.pooler=mean", "objective.temperature=0.1", *extra])


def params_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- data order and samples --------------------------------------------------------------

def test_sharded_order_splits_the_global_batch_and_is_resumable():
    full = ShardedOrder(10, seed=3, local_batch=4)
    ranks = [ShardedOrder(10, seed=3, local_batch=2, world_size=2, rank=r) for r in (0, 1)]
    for position in range(7):  # crosses several epochs
        assert full.indices(position) == ranks[0].indices(position) + ranks[1].indices(position)
    fresh = ShardedOrder(10, seed=3, local_batch=4)
    assert fresh.indices(5) == full.indices(5)          # a pure function of the position
    epoch0 = [i for p in range(5) for i in ShardedOrder(20, seed=1, local_batch=4).indices(p)]
    assert sorted(epoch0) == list(range(20))            # every sample once per epoch


def test_grouped_order_batches_similar_lengths_and_stays_a_pure_function_of_the_position():
    import numpy as np

    lengths = np.random.default_rng(0).integers(3, 60, size=96).tolist()
    grouped = ShardedOrder(96, seed=2, local_batch=4, lengths=lengths, group_window=6)
    plain = ShardedOrder(96, seed=2, local_batch=4)
    epoch = [grouped.indices(p) for p in range(24)]
    assert sorted(i for batch in epoch for i in batch) == list(range(96))   # every sample once per epoch

    def padding(batches):   # pad tokens a right-padded collation adds
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(epoch) < 0.5 * padding([plain.indices(p) for p in range(24)])
    ranks = [ShardedOrder(96, seed=2, local_batch=2, world_size=2, rank=r, lengths=lengths, group_window=6)
             for r in (0, 1)]
    for position in (0, 5, 6, 23, 30):                 # inside, across windows and epochs
        assert ranks[0].indices(position) + ranks[1].indices(position) == grouped.indices(position)
    fresh = ShardedOrder(96, seed=2, local_batch=4, lengths=lengths, group_window=6)
    assert fresh.indices(17) == grouped.indices(17)    # resumable: no state but the position
    with pytest.raises(ValueError, match="one length per sample"):
        ShardedOrder(96, seed=2, local_batch=4, group_window=6)


def test_dataloader_workers_collate_the_same_micro_batches(tiny_world, tiny_world_overrides):
    from xalign.train.setup import step_batches

    _, world_dir = tiny_world
    inline = setup_run(run_config(tiny_world_overrides, "optim.grad_accum_steps=2", "data.group_by_length=true",
                                  "data.group_window=4"), str(world_dir), Dist(), CPU)
    spawned = setup_run(run_config(tiny_world_overrides, "optim.grad_accum_steps=2", "data.group_by_length=true",
                                   "data.group_window=4", "data.num_workers=1"), str(world_dir), Dist(), CPU)
    a, b = list(step_batches(inline, 3, 9)), list(step_batches(spawned, 3, 9))
    assert len(a) == len(b) == 6 and all(len(steps) == 2 for steps in b)
    for x, y in zip(a, b):
        for bx, by in zip(x, y):
            assert bx.keys() == by.keys() and all(torch.equal(bx[k], by[k]) for k in bx)


def test_cross_lingual_samples_drop_unaligned_ids_and_honour_cross_probability():
    items = {lang: {str(i): {"instruction": f"do {i} {lang}", "input": "", "output": f"out {i} {lang}"}
                    for i in range(200)} for lang in ("en", "zh", "de")}
    del items["de"]["7"]
    answer_in = lambda s, t: f"Answer in {t}:"  # noqa: E731
    build = cross_lingual_samples(items, languages=["en", "zh", "de"], answer_in=answer_in,
                                  cross_probability=0.5, repeat=3, seed=0)
    assert build.dropped_ids == 1 and len(build.samples) == 199 * 3
    crossed = sum(s.src_lang != s.tgt_lang for s in build.samples) / len(build.samples)
    assert 0.43 < crossed < 0.57
    for s in build.samples:  # the response is the target language's, the prompt names it
        assert s.response == f"out {s.item_id} {s.tgt_lang}" and s.prompt.endswith(f"Answer in {s.tgt_lang}:")
        assert s.prompt.startswith(f"do {s.item_id} {s.src_lang}")
    never = cross_lingual_samples(items, languages=["en", "zh"], answer_in=answer_in,
                                  cross_probability=0.0, repeat=1, seed=0)
    assert all(s.src_lang == s.tgt_lang for s in never.samples)


def test_schedules():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lrs = {}
    for name in ("cosine", "linear", "constant"):
        sched = make_scheduler(torch.optim.SGD(opt.param_groups[0]["params"], lr=1.0), schedule=name,
                               warmup_steps=2, max_steps=10)
        lrs[name] = [sched.get_last_lr()[0]] + [(sched.optimizer.step(), sched.step(), sched.get_last_lr()[0])[2]
                                               for _ in range(10)]
    assert lrs["cosine"][:3] == [0.5, 1.0, 1.0] and lrs["cosine"][-1] == pytest.approx(0.0)
    assert lrs["linear"][6] == pytest.approx(0.5) and lrs["constant"][-1] == 1.0


# --- the loop ----------------------------------------------------------------------------

def test_resume_from_checkpoint_equals_an_uninterrupted_run(tiny_world, tiny_world_overrides, tmp_path):
    _, world_dir = tiny_world
    cfg = run_config(tiny_world_overrides)
    straight = setup_run(cfg, str(world_dir), Dist(), CPU)
    losses = [straight.step(s)["loss"] for s in range(6)]

    first = setup_run(cfg, str(world_dir), Dist(), CPU)
    resumed_losses = [first.step(s)["loss"] for s in range(3)]
    first.save(tmp_path / "ckpt", step=3)
    second = setup_run(cfg, str(world_dir), Dist(), CPU)
    start = second.restore(tmp_path / "ckpt")
    assert start == 3
    resumed_losses += [second.step(s)["loss"] for s in range(start, 6)]

    assert resumed_losses == pytest.approx(losses, rel=1e-5)
    for key, value in params_of(straight.model).items():
        torch.testing.assert_close(params_of(second.model)[key], value, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "ckpt" / "model" / "config.json").is_file()       # HF format, loadable as is
    assert (tmp_path / "ckpt" / "model" / "tokenizer.json").is_file()


def test_every_rank_starts_from_the_same_lora_adapters(tiny_world, tiny_world_overrides):
    """LoRA's A matrices are drawn at random: under ddp (own all-reduce, no broadcast) rank 1
    must draw the same ones as rank 0, or the replicas train different models."""
    pytest.importorskip("peft")
    _, world_dir = tiny_world
    cfg = run_config(tiny_world_overrides, "model.lora.r=4", "model.lora.target_modules=[q_proj,v_proj]")
    ranks = [setup_run(cfg, str(world_dir), Dist(rank, 2), CPU) for rank in (0, 1)]
    adapters = [{k: v for k, v in params_of(run.model).items() if "lora_A" in k} for run in ranks]
    assert adapters[0] and adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    assert any(adapters[0][k].abs().sum() > 0 for k in adapters[0])


def _rank_main(rank, world_size, port, cfg_json, world_dir, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        cfg = RunConfig.model_validate_json(cfg_json)
        run = setup_run(cfg, world_dir, Dist(rank, world_size), CPU)
        losses = [run.step(s)["loss"] for s in range(3)]
        if rank == 0:
            torch.save({"losses": losses, "params": params_of(run.model)}, out)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_ranks_equal_one_process_on_the_joined_batch(tiny_world, tiny_world_overrides, tmp_path):
    """Contrastive loss over the gathered global batch + averaged gradients: 2 ranks with
    batch 2 each take exactly the steps of 1 process with batch 4."""
    _, world_dir = tiny_world
    two = run_config(tiny_world_overrides, "optim.batch_size=2", "scaling.num_workers=2",
                     "objective.lm_weight=0", "objective.symmetric=true")
    out = tmp_path / "rank0.pt"
    mp.spawn(_rank_main, args=(2, _free_port(), two.model_dump_json(), str(world_dir), str(out)), nprocs=2)
    ranks = torch.load(out, weights_only=True)

    one = setup_run(run_config(tiny_world_overrides, "optim.batch_size=4", "objective.lm_weight=0",
                               "objective.symmetric=true"), str(world_dir), Dist(), CPU)
    losses = [one.step(s)["loss"] for s in range(3)]
    assert ranks["losses"] == pytest.approx(losses, rel=1e-4)
    # Adam divides by sqrt(v): where a gradient is ~0, float summation order shows up;
    # 5e-5 is 5% of one step (lr 1e-3).
    for key, value in params_of(one.model).items():
        torch.testing.assert_close(ranks["params"][key], value, rtol=1e-4, atol=5e-5)


def _dev_eval_rank(rank, world_size, port, cfg_json, config, out):
    from xalign.train.setup import setup_evaluation

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        run = setup_run(RunConfig.model_validate_json(cfg_json), config["world_dir"], Dist(rank, world_size), CPU)
        metrics = setup_evaluation(config, run)(run.model)
        torch.save(metrics, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.distributed
def test_periodic_dev_evaluation_sharded_over_two_ranks_equals_one_process(tiny_world, tiny_world_overrides, tmp_path):
    from xalign.train.setup import setup_evaluation

    _, world_dir = tiny_world
    cfg = run_config(tiny_world_overrides, "eval.tasks=[facts,xcopa]", "eval.max_items=12", "optim.batch_size=2")
    config = {"evaluate": True, "pivot": "qaa", "eval_world_dir": str(world_dir), "world_dir": str(world_dir)}
    out = tmp_path / "dev"
    mp.spawn(_dev_eval_rank, args=(2, _free_port(), cfg.model_dump_json(), config, str(out)), nprocs=2)
    rank0, rank1 = torch.load(f"{out}.0", weights_only=True), torch.load(f"{out}.1", weights_only=True)
    one = setup_run(cfg, str(world_dir), Dist(), CPU)
    expected = setup_evaluation(config, one)(one.model)
    assert rank1 == {} and "dev/facts/qab/acc" in rank0
    assert rank0 == pytest.approx(expected, abs=1e-12)


def test_non_finite_loss_stops_before_the_optimizer_moves():
    model = torch.nn.Linear(2, 1)
    before = params_of(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = make_scheduler(opt, schedule="constant", warmup_steps=0, max_steps=1)
    bad = lambda m, b: (m(b["x"]).sum() * float("nan"), {"contrastive": float("nan"), "lm": 1.0})  # noqa: E731
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss or gradient at step 7: .*contrastive=nan.*lm=1"):
        train_step(model, opt, sched, [{"x": torch.ones(1, 2)}], bad, step=7, max_grad_norm=1.0, dist=Dist(),
                   params=list(model.parameters()), count_tokens=lambda b: 0)
    assert all(torch.equal(before[k], v) for k, v in params_of(model).items())


def test_a_nan_gradient_under_a_finite_loss_stops_before_the_optimizer_moves():
    model = torch.nn.Linear(2, 1)
    before = params_of(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = make_scheduler(opt, schedule="constant", warmup_steps=0, max_steps=1)
    # sqrt at 0 has an infinite derivative: the loss is 0, its gradient is not finite
    loss = lambda m, b: ((m(b["x"]) * 0).clamp(min=0).sqrt().sum(), {"contrastive": 0.0})  # noqa: E731
    with pytest.raises(NonFiniteLossError, match=r"at step 3: .*grad_norm=(nan|inf)"):
        train_step(model, opt, sched, [{"x": torch.ones(1, 2)}], loss, step=3, max_grad_norm=1.0, dist=Dist(),
                   params=list(model.parameters()), count_tokens=lambda b: 0)
    assert all(torch.equal(before[k], v) for k, v in params_of(model).items())


# --- model loading -------------------------------------------------------------------------

def test_model_loads_with_tied_head_and_fp32_master_weights(tiny_world, tiny_world_overrides):
    _, world_dir = tiny_world
    cfg = run_config(tiny_world_overrides, "model.dtype=bf16")
    model = load_model(cfg.model, world_dir, for_training=True)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert next(model.parameters()).dtype == torch.float32
    assert next(load_model(cfg.model, world_dir).parameters()).dtype == torch.bfloat16
    assert load_tokenizer(cfg.model, world_dir).pad_token == "<pad>"


def test_tokenizer_without_pad_token_is_a_clear_error(tiny_world, tiny_world_overrides, tmp_path):
    from transformers import AutoTokenizer

    _, world_dir = tiny_world
    tok = AutoTokenizer.from_pretrained(world_dir / "tokenizer")
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    cfg = run_config(tiny_world_overrides, f"model.tokenizer={tmp_path / 'nopad'}")
    with pytest.raises(ModelLoadError, match=r"has no pad token.*set model.pad_token \(e.g. model.pad_token=eos"):
        load_tokenizer(cfg.model, world_dir)
    fixed = run_config(tiny_world_overrides, f"model.tokenizer={tmp_path / 'nopad'}", "model.pad_token=eos")
    assert load_tokenizer(fixed.model, world_dir).pad_token == "</s>"
    bad = run_config(tiny_world_overrides, f"model.tokenizer={tmp_path / 'nopad'}", "model.pad_token=<nope>")
    with pytest.raises(ModelLoadError, match="model.pad_token: '<nope>' is not a token"):
        load_tokenizer(bad.model, world_dir)


def test_layer_outside_the_model_names_key_model_and_range(tiny_world, tiny_world_overrides):
    _, world_dir = tiny_world
    cfg = run_config(tiny_world_overrides, "objective.layer=30")
    with pytest.raises(ValueError, match=r"layer 30 requested; .*2 blocks, so valid values are -3\.\.2 or a fraction"):
        setup_run(cfg, str(world_dir), Dist(), CPU)


def test_missing_world_model_is_a_clear_error(tmp_path):
    cfg = from_overrides(RunConfig, [])
    with pytest.raises(ModelLoadError, match="holds no model"):
        load_model(cfg.model, tmp_path)


def test_real_instruction_files_per_language_give_samples_and_pairs(tiny_world, tiny_world_overrides, tmp_path):
    """Local Bactrian-X-shaped files, one per language ({lang}), read through `datasets`;
    with no pairs source the contrastive pairs come from the same ids' texts."""
    import json

    from xalign.data import build_alignment_data

    _, world_dir = tiny_world
    for code, world_lang in (("en", "qaa"), ("zh", "qab")):
        rows = (world_dir / "instructions" / f"{world_lang}.jsonl").read_text().splitlines()
        rows = [json.loads(r) for r in rows if r.strip()]
        rows = rows[:50] if code == "en" else rows[1:50]          # id 0 exists in en only
        (tmp_path / f"{code}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = run_config(tiny_world_overrides, f"data.instructions.path={tmp_path}/{{lang}}.jsonl",
                     "data.pivot=en", "data.languages=[zh]", "data.mix.repeat=1", "data.mix.cross_probability=1.0")
    tokenizer = load_tokenizer(cfg.model, world_dir)
    data = build_alignment_data(cfg, tokenizer, None)
    assert data.stats["instruction_ids_dropped"] == 1
    assert len(data.lm_examples) == 49 and len(data.pairs.src) == 49
    assert data.stats["pairs"] == {"en-zh": 49}
    assert set(data.stats["instructions"]) == {"en->zh", "zh->en"}   # cross_probability 1
    bad = run_config(tiny_world_overrides, f"data.instructions.path={tmp_path}/{{lang}}.jsonl",
                     "data.pivot=en", "data.languages=[de]")
    with pytest.raises(ValueError, match=r"data.instructions.path: no file matches '.*/de.jsonl'"):
        build_alignment_data(bad, tokenizer, None)


def test_packed_lm_rows_give_the_same_loss_as_one_sample_per_row(tiny_world, tiny_world_overrides):
    _, world_dir = tiny_world
    plain = setup_run(run_config(tiny_world_overrides, "objective.contrastive_weight=0"), str(world_dir), Dist(), CPU)
    packed = setup_run(run_config(tiny_world_overrides, "objective.contrastive_weight=0", "data.pack=true"),
                       str(world_dir), Dist(), CPU)
    batch = packed.data.micro_batch(0, contrastive=False, lm=True)
    assert batch["lm_input_ids"].shape[0] < 4                      # 4 samples in fewer rows
    assert packed.step(0)["lm"] == pytest.approx(plain.step(0)["lm"], rel=1e-5)


def test_hard_negatives_come_from_a_pairs_column(tiny_world, tiny_world_overrides, tmp_path):
    import json

    _, world_dir = tiny_world
    rows = [json.loads(r) for r in (world_dir / "pairs/train/qaa-qab.jsonl").read_text().splitlines()[:40]]
    for i, row in enumerate(rows):
        row["hard_negative"] = rows[(i + 1) % len(rows)]["tgt"]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = run_config(tiny_world_overrides, f"data.pairs.path={tmp_path}/pairs.jsonl", "data.pivot=qaa",
                     "data.languages=[qab]", "objective.hard_negatives=true")
    run = setup_run(cfg, str(world_dir), Dist(), CPU)
    assert run.data.micro_batch(0, contrastive=True, lm=False)["neg_input_ids"].shape[0] == 4
    assert math.isfinite(run.step(0)["contrastive"])
    without = run_config(tiny_world_overrides, "objective.hard_negatives=true")
    with pytest.raises(ValueError, match="objective.hard_negatives: only a data.pairs source"):
        setup_run(without, str(world_dir), Dist(), CPU)


def test_a_non_finite_report_becomes_an_error_naming_step_parts_and_checkpoint():
    from xalign.train.driver import TrainingError, raise_if_nonfinite

    raise_if_nonfinite({"train/loss": 1.0}, "/ckpt")                 # a normal result passes
    with pytest.raises(TrainingError, match=r"non-finite loss or gradient at step 12 \(contrastive=nan, lm=2\.5\); "
                                            r"last good checkpoint: /runs/step_0000010"):
        raise_if_nonfinite({"train/nonfinite_step": 12, "train/nonfinite_contrastive": float("nan"),
                            "train/nonfinite_lm": 2.5}, "/runs/step_0000010")
