"""Data for alignment: translation pairs for the contrastive loss and cross-lingual
instruction samples for the LM loss, tokenised once, served as deterministic sharded
micro-batches. Knows nothing of Ray."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from xalign.config.schema import RunConfig
from xalign.data.batches import (
    collate_lm_batch,
    collate_pairs,
    num_tokens,
    tokenize_lm,
    tokenize_pairs,
)
from xalign.data.instructions import cross_lingual_samples
from xalign.data.languages import answer_in_english
from xalign.data.sources import load_source
from xalign.data.stream import ShardedOrder
from xalign.data.world import load_world_data


@dataclass
class AlignmentData:
    pairs: object                 # TokenizedPairs
    lm_examples: list[dict]
    pad_id: int
    pack: bool
    max_length: int
    stats: dict = field(default_factory=dict)
    pair_order: ShardedOrder | None = None
    lm_order: ShardedOrder | None = None

    def shard(self, *, seed: int, local_batch: int, world_size: int, rank: int) -> "AlignmentData":
        """Fix this worker's slice of every global micro-batch."""
        if self.pairs.src:
            self.pair_order = ShardedOrder(len(self.pairs.src), seed=seed, local_batch=local_batch,
                                           world_size=world_size, rank=rank)
        if self.lm_examples:
            self.lm_order = ShardedOrder(len(self.lm_examples), seed=seed + 1, local_batch=local_batch,
                                         world_size=world_size, rank=rank)
        return self

    def micro_batch(self, position: int, *, contrastive: bool, lm: bool) -> dict:
        """This worker's part of global micro-batch ``position`` (a pure function of it)."""
        batch: dict = {}
        if contrastive:
            idx = self.pair_order.indices(position)
            neg = [self.pairs.neg[i] for i in idx] if self.pairs.neg is not None else None
            batch.update(collate_pairs([self.pairs.src[i] for i in idx], [self.pairs.tgt[i] for i in idx],
                                       self.pad_id, neg))
        if lm:
            idx = self.lm_order.indices(position)
            batch.update(collate_lm_batch([self.lm_examples[i] for i in idx], self.pad_id,
                                          pack=self.pack, max_length=self.max_length))
        return batch

    count_tokens = staticmethod(num_tokens)


PAIR_COLUMNS = ("src", "tgt", "src_lang", "tgt_lang")
INSTRUCTION_COLUMNS = ("id", "instruction", "input", "output")


def read_sources(cfg: RunConfig, world_dir: Path | None):
    """(pivot, languages, pairs, instruction items by language and id, answer_in) from the
    configured real sources, the synthetic world filling in what is not configured."""
    world = load_world_data(world_dir) if world_dir is not None and cfg.data.instructions is None else None
    pivot = cfg.data.pivot or (world.pivot if world else None)
    languages = cfg.data.languages or (world.languages if world else None)
    if world is not None:
        unknown = sorted(set(languages) - set(world.languages))
        if unknown:
            raise ValueError(f"data.languages: {unknown} are not languages of the world; it has {world.languages}")
        if pivot != world.pivot:
            raise ValueError(f"data.pivot: the world's pivot is {world.pivot!r}, got {pivot!r}")
    others = [lang for lang in languages if lang != pivot]
    if cfg.data.instructions is not None:
        items = {lang: {str(row["id"]): row for row in load_source(
                    cfg.data.instructions, required=INSTRUCTION_COLUMNS, lang=lang, key="data.instructions")}
                 for lang in [pivot, *others]}
        answer_in = answer_in_english
    else:
        items, answer_in = world.instructions, world.answer_in
    if cfg.objective.hard_negatives and cfg.data.pairs is None:
        raise ValueError("objective.hard_negatives: only a data.pairs source can bring hard negatives (a "
                         "`hard_negative` column, in the target language); the configured pairs have none")
    if cfg.data.pairs is not None:
        required = PAIR_COLUMNS + (("hard_negative",) if cfg.objective.hard_negatives else ())
        pairs = [p for p in load_source(cfg.data.pairs, required=required, key="data.pairs")
                 if p["tgt_lang"] in others and p["src_lang"] == pivot]
    elif world is not None:
        pairs = [p for p in world.pairs if p["tgt_lang"] in others]
    else:
        pairs = pairs_from_instructions(items, pivot=pivot, others=others)
    return pivot, others, pairs, items, answer_in


def pairs_from_instructions(items, *, pivot: str, others) -> list[dict]:
    """Translation pairs from instruction data parallel by id (as the released AFP data did):
    the pivot's "instruction input" against the same id's text in each other language."""
    def text(item: dict) -> str:
        return " ".join(part for part in (item["instruction"], item.get("input", "")) if part)

    return [{"src": text(items[pivot][i]), "tgt": text(items[lang][i]), "src_lang": pivot, "tgt_lang": lang}
            for lang in others for i in sorted(set(items[pivot]) & set(items[lang]))]


def build_alignment_data(cfg: RunConfig, tokenizer, world_dir: Path | None) -> AlignmentData:
    """Pairs and LM samples of the run, with the realised mix in ``stats``."""
    pivot, others, pairs, items, answer_in = read_sources(cfg, world_dir)
    tokenized = tokenize_pairs(tokenizer, pairs, max_length=cfg.data.max_length)
    build = cross_lingual_samples(items, languages=[pivot, *others], answer_in=answer_in,
                                  cross_probability=cfg.data.mix.cross_probability, repeat=cfg.data.mix.repeat,
                                  seed=cfg.seed)
    examples, truncated = tokenize_lm(tokenizer, build.samples, max_length=cfg.data.max_length)
    stats = {
        "pairs": dict(sorted(Counter(f"{pivot}-{lang}" for lang in tokenized.langs).items())),
        "pairs_dropped_too_long": tokenized.too_long,
        "instructions": build.counts,
        "instruction_ids_dropped": build.dropped_ids,
        "prompts_truncated": truncated,
    }
    return AlignmentData(tokenized, examples, tokenizer.pad_token_id, cfg.data.pack, cfg.data.max_length, stats)
