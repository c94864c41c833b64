"""The evaluator end to end: per-item records reproduce every reported accuracy, and on the
real PAWS-X / XCOPA samples xalign's accuracy equals lm-evaluation-harness's (HFLM) with
the lm-eval templates, same-language 0-shot."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from xalign.config.eval import EvalConfig
from xalign.eval.evaluator import Target, evaluate
from xalign.eval.records import accuracy_from_records, read_records

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.mark.slow
def test_records_reproduce_every_reported_accuracy(tiny_world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, world_dir = tiny_world
    tok = AutoTokenizer.from_pretrained(world_dir / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(world_dir / "base_model")
    cfg = EvalConfig(tasks=["facts", "pawsx", "xcopa"], shots=1, seeds=[0, 1])
    result = evaluate(model, tok, cfg, Target(pivot="qaa", world_dir=world_dir, layer=1), out_dir=tmp_path)
    records = read_records(tmp_path / "eval_records.jsonl")
    by_cell = defaultdict(list)
    for record in records:
        by_cell[(record["task"], record["lang"])].append(record)
    assert len(by_cell) == 3 * 4
    for (task, lang), cell in by_cell.items():
        half = len(cell) // 2                                      # two seeds, one after the other
        for norm, suffix in (("none", "acc_sum"), ("token", "acc_token"), ("char", "acc_char")):
            mean = (accuracy_from_records(cell[:half], norm) + accuracy_from_records(cell[half:], norm)) / 2
            assert mean == pytest.approx(result.metrics[f"eval/{task}/{lang}/{suffix}"])
        assert result.metrics[f"eval/{task}/{lang}/acc"] == result.metrics[f"eval/{task}/{lang}/acc_sum"]
    # every stored score is what a plain forward over prompt + option gives
    for record in records[:: max(1, len(records) // 25)]:
        prompt_ids = [tok.bos_token_id] + tok(record["prompt"], add_special_tokens=False)["input_ids"]
        for option, logprob in zip(record["options"], record["logprob"]):
            full = [tok.bos_token_id] + tok(record["prompt"] + option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([full])).logits[0].log_softmax(-1)
            expected = sum(float(logits[i - 1, full[i]]) for i in range(len(prompt_ids), len(full)))
            assert logprob == pytest.approx(expected, abs=1e-4)


def test_scores_in_shards_merge_to_the_metrics_of_one_pass(tiny_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xalign.eval.evaluator import merge_shards, plan_items, score_shard, shard_bounds

    _, world_dir = tiny_world
    tok = AutoTokenizer.from_pretrained(world_dir / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(world_dir / "base_model")
    cfg = EvalConfig(tasks=["facts", "xcopa"], shots=2, max_items=15)
    target = Target(pivot="qaa", world_dir=world_dir, layer=1)
    items = plan_items(cfg, target, split="dev")
    whole = evaluate(model, tok, cfg, target, items=items, representations=False)
    parts = [score_shard(model, tok, items, batch_size=4, shard=(i, 3)) for i in range(3)]
    assert [len(p[next(iter(items))]) for p in parts] == [5, 5, 5]
    sharded = evaluate(model, tok, cfg, target, items=items, scores=merge_shards(parts), representations=False)
    assert sharded.metrics == pytest.approx(whole.metrics, abs=1e-12)
    assert [shard_bounds(7, (i, 3)) for i in range(3)] == [(0, 2), (2, 4), (4, 7)]
    with pytest.raises(ValueError, match="shard index"):
        shard_bounds(7, (3, 3))


def _byte_bpe_tokenizer(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1500, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real is absent")
def test_accuracy_equals_lm_eval_on_the_real_samples(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from xalign.eval.evaluator import plan_items
    from xalign.eval.scoring import choose, score_items

    cfg = EvalConfig.model_validate({
        "tasks": ["pawsx", "xcopa"], "template": "lm_eval", "protocol": "same", "shots": 0, "max_items": 150,
        "languages": ["de", "en", "zh", "vi"],
        "sources": {
            "pawsx": {"dev": f"{REAL}/pawsx/{{lang}}/dev_2k.tsv", "test": f"{REAL}/pawsx/{{lang}}/test_2k.tsv"},
            "xcopa": {"dev": f"{REAL}/xcopa/data/{{lang}}/val.{{lang}}.jsonl",
                      "test": f"{REAL}/xcopa/data/{{lang}}/test.{{lang}}.jsonl",
                      "languages": {"en": {"dev": f"{REAL}/xcopa/en/train.jsonl", "test": f"{REAL}/xcopa/en/test.jsonl"}}},
        }})
    items = plan_items(cfg, Target(pivot="en"))
    assert {(task, lang) for task, lang, *_ in items} == {("pawsx", "de"), ("pawsx", "en"), ("pawsx", "zh"),
                                                         ("xcopa", "en"), ("xcopa", "vi"), ("xcopa", "zh")}
    texts = [it.prompt(j) + o for batch in items.values() for it in batch for j, o in enumerate(it.options)]
    tokenizer = _byte_bpe_tokenizer(texts)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")        # a tiny SAVED model
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16, device="cpu")
    t_ours = t_theirs = 0.0
    lines = []
    for (task, lang, *_), batch in sorted(items.items()):
        start = time.perf_counter()
        ours = [choose(s, "none") for s in score_items(model, tokenizer, batch, batch_size=16, add_bos=False)]
        t_ours += time.perf_counter() - start
        requests = [Instance("loglikelihood", {}, (it.prompt(i), o), i)
                    for it in batch for i, o in enumerate(it.options)]
        start = time.perf_counter()
        answers = iter(hflm.loglikelihood(requests, disable_tqdm=True))
        t_theirs += time.perf_counter() - start
        theirs = []
        for it in batch:
            lls = [next(answers)[0] for _ in it.options]
            theirs.append(max(range(len(lls)), key=lls.__getitem__))
        acc_ours = sum(p == it.gold for p, it in zip(ours, batch)) / len(batch)
        acc_theirs = sum(p == it.gold for p, it in zip(theirs, batch)) / len(batch)
        lines.append(f"{task}/{lang}: xalign {100 * acc_ours:.1f} lm-eval {100 * acc_theirs:.1f} ({len(batch)} items)")
        assert abs(acc_ours - acc_theirs) <= 0.005, lines[-1]
    with capsys.disabled():
        print("\n" + "\n".join(lines) + f"\nwall time: xalign {t_ours:.2f}s, lm-eval HFLM {t_theirs:.2f}s")


def test_two_protocols_in_one_evaluation_keep_their_metrics_apart(tiny_world, tmp_path):
    """eval.protocol [cross, same]: the first keeps the contract's names, the other's go under
    eval_same/...; each equals what an evaluation with that protocol alone reports, the pivot's
    items (rendered alike by both) are scored once, and each protocol has its own records."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xalign.eval.evaluator import plan_items, score_shard

    _, world_dir = tiny_world
    tok = AutoTokenizer.from_pretrained(world_dir / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(world_dir / "base_model")
    target = Target(pivot="qaa", world_dir=world_dir, layer=1)
    both_cfg = EvalConfig(tasks=["pawsx"], shots=1, max_items=6, protocol=["cross", "same"])
    items = plan_items(both_cfg, target)
    scores = score_shard(model, tok, items, batch_size=8)
    assert scores[("pawsx", "qaa", 0, "same")] is scores[("pawsx", "qaa", 0, "cross")]      # scored once
    assert items[("pawsx", "qab", 0, "same")] != items[("pawsx", "qab", 0, "cross")]
    both = evaluate(model, tok, both_cfg, target, items=items, scores=scores, out_dir=tmp_path, representations=False)
    alone = {p: evaluate(model, tok, EvalConfig(tasks=["pawsx"], shots=1, max_items=6, protocol=p), target,
                         representations=False).metrics for p in ("cross", "same")}
    assert not any(k.startswith("eval_cross/") for k in both.metrics)
    assert {k: v for k, v in both.metrics.items() if k.startswith("eval/")} == alone["cross"]
    assert {k.replace("eval_same/", "eval/"): v for k, v in both.metrics.items()
            if k.startswith("eval_same/")} == alone["same"]
    assert both.metrics["eval_same/pawsx/qaa/acc"] == both.metrics["eval/pawsx/qaa/acc"]
    assert both.metrics["eval_same/pawsx/qab/n_items"] == 6
    assert len(read_records(tmp_path / "eval_records.jsonl")) == len(read_records(tmp_path / "eval_same_records.jsonl"))
    assert (tmp_path / "eval_same_accuracy.png").is_file() and "[protocol same: eval_same/...]" in both.table
