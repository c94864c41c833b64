"""Tokenise translation pairs and LM samples once, and collate micro-batches for the
alignment step (the keys ``xalign.objectives.alignment_loss`` reads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from xalign.data.instructions import LMSample
from xalign.data.collate import build_lm_example, collate_lm, pack_examples


def encode(tokenizer, text: str) -> list[int]:
    """Token ids with the tokenizer's own special tokens; a BOS is prepended only when the
    tokenizer adds no special token itself (so XGLM's leading </s> is not doubled)."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) == len(plain) and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return ids


@dataclass
class TokenizedPairs:
    src: list[list[int]] = field(default_factory=list)
    tgt: list[list[int]] = field(default_factory=list)
    neg: list[list[int]] | None = None      # a hard negative per pair, when the data has them
    langs: list[str] = field(default_factory=list)
    too_long: int = 0
    #: Index in the input of each pair kept (to find its text again).
    kept: list[int] = field(default_factory=list)
    #: Pairs dropped as too long, by "src_lang-tgt_lang".
    too_long_by: dict[str, int] = field(default_factory=dict)

    def select(self, indices: Sequence[int]) -> "TokenizedPairs":
        """The pairs at ``indices`` (repeats allowed), in that order; token lists are shared."""
        return TokenizedPairs(src=[self.src[i] for i in indices], tgt=[self.tgt[i] for i in indices],
                              neg=[self.neg[i] for i in indices] if self.neg is not None else None,
                              langs=[self.langs[i] for i in indices], too_long=self.too_long,
                              kept=[self.kept[i] for i in indices], too_long_by=dict(self.too_long_by))


def tokenize_pairs(tokenizer, pairs: Sequence[dict], *, max_length: int) -> TokenizedPairs:
    """Pairs whose either side exceeds ``max_length`` are dropped and counted (never cut:
    a cut sentence is no longer a translation of the other side)."""
    with_neg = bool(pairs) and all("hard_negative" in p for p in pairs)
    out = TokenizedPairs(neg=[] if with_neg else None)
    for index, pair in enumerate(pairs):
        sides = [encode(tokenizer, pair["src"]), encode(tokenizer, pair["tgt"])]
        if with_neg:
            sides.append(encode(tokenizer, pair["hard_negative"]))
        if any(len(side) > max_length for side in sides):
            out.too_long += 1
            key = f"{pair.get('src_lang')}-{pair['tgt_lang']}"
            out.too_long_by[key] = out.too_long_by.get(key, 0) + 1
            continue
        out.src.append(sides[0])
        out.tgt.append(sides[1])
        if with_neg:
            out.neg.append(sides[2])
        out.langs.append(pair["tgt_lang"])
        out.kept.append(index)
    return out


@dataclass
class TokenizedLM:
    examples: list[dict]
    #: Samples whose prompt was cut at the start to fit max_length.
    truncated: int = 0
    #: Index in the input of each sample kept.
    kept: list[int] = field(default_factory=list)
    #: Samples dropped because the response alone (with EOS) does not fit max_length (a
    #: cut response would teach the model to stop mid-answer), by "src->tgt".
    too_long_by: dict[str, int] = field(default_factory=dict)


def tokenize_lm(tokenizer, samples: Sequence[LMSample], *, max_length: int) -> TokenizedLM:
    """Prompt tokens are cut from the start when a sample is too long; response tokens
    never are: a sample whose response alone does not fit is dropped and counted."""
    out = TokenizedLM([])
    for index, sample in enumerate(samples):
        prompt = encode(tokenizer, sample.prompt)
        if not prompt:  # plain text (replay) with a tokenizer that has no BOS: EOS opens it
            prompt = [tokenizer.eos_token_id]
        response = tokenizer(" " + sample.response, add_special_tokens=False)["input_ids"]
        if len(response) + 2 > max_length:          # + EOS, + at least one prompt token
            key = f"{sample.src_lang}->{sample.tgt_lang}"
            out.too_long_by[key] = out.too_long_by.get(key, 0) + 1
            continue
        ex = build_lm_example(prompt, response, max_length=max_length, eos_id=tokenizer.eos_token_id,
                              truncate_prompt=True)
        out.truncated += ex["prompt_truncated"] > 0
        ex.update(kind=sample.kind, src_lang=sample.src_lang, tgt_lang=sample.tgt_lang)   # for stats and checks
        out.examples.append(ex)
        out.kept.append(index)
    return out


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def collate_pairs(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], pad_id: int,
                  neg: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
    batch = {}
    for side, rows in (("src", src), ("tgt", tgt), ("neg", neg)):
        if rows is not None:
            batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"] = _pad(rows, pad_id)
    return batch


def collate_lm_batch(examples: Sequence[dict], pad_id: int, *, pack: bool, max_length: int) -> dict[str, torch.Tensor]:
    """LM micro-batch: one row per example, or packed rows (sample boundaries kept)."""
    batch = pack_examples(examples, max_length, pad_id=pad_id) if pack else collate_lm(examples, pad_id)
    out = {"lm_input_ids": batch["input_ids"], "lm_labels": batch["labels"],
           "lm_attention_mask": batch["attention_mask"], "lm_position_ids": batch["position_ids"],
           "lm_num_tokens": torch.tensor(sum(len(ex["input_ids"]) for ex in examples))}
    return out


def num_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real (non-pad) tokens in a collated micro-batch, pairs and LM rows together."""
    total = 0
    for key in ("src_attention_mask", "tgt_attention_mask", "neg_attention_mask"):
        if key in batch:
            total += int(batch[key].sum())
    if "lm_num_tokens" in batch:
        total += int(batch["lm_num_tokens"])
    return total
