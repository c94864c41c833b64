"""The synthetic world's base model: a small Llama pre-trained on the world's corpus with the
alignment loop itself (train_step + alignment_loss with the LM loss only), in-process.

Run as the world's ``base_model`` stage (``BASE_MODEL_STAGE``), so the model is cached with
the world by content hash. Reports the LM loss per language on the world's held-out
parallel sentences: the same meanings in every language, so the numbers show the gap the
imbalanced corpus left.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from xalign import progress
from xalign.config.schema import ObjectiveConfig
from xalign.data.batches import collate_lm_batch, encode, num_tokens
from xalign.data.stream import ShardedOrder
from xalign.data.world_files import read_jsonl
from xalign.objectives import alignment_loss, lm_loss
from xalign.optim import Dist, make_scheduler, train_step
from xalign.synthetic.lexicon import make_languages

log = logging.getLogger("xalign.world")
LM_ONLY = ObjectiveConfig(contrastive_weight=0.0, lm_weight=1.0)


def corpus_examples(world_dir: Path, tokenizer, seq_len: int) -> list[dict]:
    """One example per document (BOS doc EOS), documents longer than seq_len split into
    seq_len pieces: every token is trained on, none dropped."""
    examples = []
    for path in sorted((world_dir / "corpus").glob("*.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            ids = encode(tokenizer, line) + [tokenizer.eos_token_id]
            for start in range(0, len(ids), seq_len):
                piece = ids[start: start + seq_len]
                if len(piece) > 1:
                    examples.append({"input_ids": piece, "labels": piece})
    return examples


def build_model(cfg, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.seq_len, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


@torch.no_grad()
def language_losses(model, tokenizer, world_dir: Path, languages: list[str]) -> dict[str, float]:
    """Mean per-token LM loss of each language's held-out parallel sentences (pivot first)."""
    model.eval()
    pivot = languages[0]
    texts: dict[str, list[str]] = {}
    for lang in languages[1:]:
        rows = read_jsonl(world_dir / "pairs" / "heldout" / f"{pivot}-{lang}.jsonl")
        texts[lang] = [r["tgt"] for r in rows]
        texts.setdefault(pivot, [r["src"] for r in rows])
    out = {}
    for lang, sentences in sorted(texts.items()):
        total, count = 0.0, 0
        for i in range(0, len(sentences), 64):
            examples = [{"input_ids": ids, "labels": ids} for ids in
                        (encode(tokenizer, s) + [tokenizer.eos_token_id] for s in sentences[i: i + 64])]
            batch = collate_lm_batch(examples, tokenizer.pad_token_id, pack=False, max_length=10_000)
            logits = model(input_ids=batch["lm_input_ids"], attention_mask=batch["lm_attention_mask"],
                           position_ids=batch["lm_position_ids"]).logits
            n = int((batch["lm_labels"][:, 1:] != -100).sum())
            total += float(lm_loss(logits, batch["lm_labels"])) * n
            count += n
        out[lang] = total / count
    model.train()
    return out


def pretrain_base_model(world_dir: Path, world_cfg) -> dict:
    """The ``base_model`` stage: train, save to ``world_dir/base_model``, return the record
    that goes into the manifest."""
    from transformers import AutoTokenizer

    cfg = world_cfg.base_model
    world_dir = Path(world_dir)
    tokenizer = AutoTokenizer.from_pretrained(world_dir / "tokenizer")
    examples = corpus_examples(world_dir, tokenizer, cfg.seq_len)
    with torch.random.fork_rng():
        torch.manual_seed(world_cfg.seed)
        model = build_model(cfg, tokenizer)
        model.train()
        params = list(model.parameters())
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        scheduler = make_scheduler(optimizer, schedule="cosine", warmup_steps=max(1, cfg.steps // 20),
                                   max_steps=cfg.steps)
        order = ShardedOrder(len(examples), seed=world_cfg.seed, local_batch=cfg.batch_size)
        loss_fn = lambda m, b: alignment_loss(m, b, LM_ONLY)  # noqa: E731
        start, tokens, losses = time.perf_counter(), 0, []
        with progress.bar("world: base model pre-training", total=cfg.steps, unit="step") as shown:
            for step in range(cfg.steps):
                batch = collate_lm_batch([examples[i] for i in order.indices(step)], tokenizer.pad_token_id,
                                         pack=False, max_length=cfg.seq_len)
                metrics = train_step(model, optimizer, scheduler, [batch], loss_fn, step=step + 1,
                                     max_grad_norm=1.0, dist=Dist(), params=params, count_tokens=num_tokens)
                tokens += metrics["tokens"]
                losses.append(metrics["loss"])
                shown.update(1, loss=sum(losses[-20:]) / len(losses[-20:]),
                             tok_s=tokens / max(time.perf_counter() - start, 1e-9))
        seconds = time.perf_counter() - start
    out_dir = world_dir / "base_model"
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    record = {
        "parameters": sum(p.numel() for p in params),
        "steps": cfg.steps,
        "tokens_seen": int(tokens),
        "final_train_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
    }
    # Timings stay out of the manifest so that two builds of a world stay identical.
    log.info("base model: %s parameters, %d steps, %d tokens in %.1fs (%.0f tokens/s)",
             f"{record['parameters']:,}", cfg.steps, tokens, seconds, tokens / seconds)
    codes = [lang.code for lang in make_languages(world_cfg.languages)]
    record["heldout_loss"] = {k: round(v, 4) for k, v in language_losses(model, tokenizer, world_dir, codes).items()}
    if not math.isfinite(record["final_train_loss"]):
        raise RuntimeError(f"base model pre-training diverged: final loss {record['final_train_loss']}")
    return record


BASE_MODEL_STAGE = ("base_model", pretrain_base_model)
