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
from xalign.data.mix import (
    DROP_REASONS,
    add_replay,
    filter_pairs,
    lm_stats,
    mix_lm_samples,
    mix_metrics,
    pair_key,
    resample_by_language,
)
from xalign.data.prompts import english_words, world_words
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
    """(pivot, other languages, pairs, instruction items by language and id, prompt words)
    from the configured real sources, the synthetic world filling in what is not configured."""
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
        words = english_words(cfg.data.mix.target_name_in)
    else:
        items, words = world.instructions, world_words(world, cfg.data.mix.target_name_in)
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
    return pivot, others, pairs, items, words


def pairs_from_instructions(items, *, pivot: str, others) -> list[dict]:
    """Translation pairs from instruction data parallel by id (as the released AFP data did):
    the pivot's "instruction input" against the same id's text in each other language."""
    def text(item: dict) -> str:
        return " ".join(part for part in (item["instruction"], item.get("input", "")) if part)

    return [{"src": text(items[pivot][i]), "tgt": text(items[lang][i]), "src_lang": pivot, "tgt_lang": lang}
            for lang in others for i in sorted(set(items[pivot]) & set(items[lang]))]


def replay_texts(cfg: RunConfig, world_dir: Path | None, pivot: str) -> list[str]:
    """Pivot pre-training text for replay: ``data.replay`` (a ``text`` column), else the
    world's pivot corpus (one document per line)."""
    if cfg.data.replay is not None:
        return [row["text"] for row in load_source(cfg.data.replay, required=("text",), key="data.replay")
                if row["text"]]
    if world_dir is None:
        return []
    path = Path(world_dir) / "corpus" / f"{pivot}.txt"
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_alignment_data(cfg: RunConfig, tokenizer, world_dir: Path | None) -> AlignmentData:
    """Pairs and LM samples of the run, with the realised mix in ``stats`` (see
    ``xalign.data.mix``; ``mix_metrics(stats)`` flattens it for MLflow)."""
    mix = cfg.data.mix
    pivot, others, pairs, items, words = read_sources(cfg, world_dir)
    languages = [pivot, *others]
    unknown = sorted(set(mix.pair_weights) - set(languages))
    if unknown:
        raise ValueError(f"data.mix.pair_weights: {unknown} are not languages of this run; it has {languages}")

    # Contrastive pairs: filter (empty, identical, duplicate, too long), then the language mix.
    filtered = filter_pairs(pairs)
    clean = tokenize_pairs(tokenizer, filtered.kept, max_length=cfg.data.max_length)
    for key, n in clean.too_long_by.items():
        filtered.drop(key, "too_long", n)
    clean_keys = [pair_key(filtered.kept[i]) for i in clean.kept]
    order, _ = resample_by_language(clean_keys, alpha=mix.alpha, seed=cfg.seed,
                                    weights={f"{pivot}-{lang}": w for lang, w in mix.pair_weights.items()})
    tokenized = clean.select(order)
    pair_texts = [filtered.kept[i] for i in tokenized.kept]

    # LM samples: cross-lingual instructions, a share of them replaced by translation samples.
    build = cross_lingual_samples(items, languages=languages, answer_in=words.answer_in,
                                  cross_probability=mix.cross_probability, repeat=mix.repeat,
                                  seed=cfg.seed, language_weights=mix.pair_weights or None)
    samples = mix_lm_samples(build.samples, pair_texts, share=mix.translation_share, words=words,
                             template=mix.translation_template, seed=cfg.seed)
    if mix.replay_share > 0:
        samples = add_replay(samples, replay_texts(cfg, world_dir, pivot), share=mix.replay_share, pivot=pivot,
                             seed=cfg.seed, tokenizer=tokenizer, max_length=cfg.data.max_length)
    examples, truncated = tokenize_lm(tokenizer, samples, max_length=cfg.data.max_length)

    realised, available = Counter(pair_key(p) for p in pair_texts), Counter(clean_keys)
    read_keys = sorted(filtered.read)
    lm = lm_stats(samples)
    stats = {
        "pairs": {k: realised[k] for k in read_keys if realised[k]},
        "pairs_read": {k: filtered.read[k] for k in read_keys},
        "pairs_available": {k: available[k] for k in read_keys if available[k]},
        "pair_shares": {k: realised[k] / len(pair_texts) for k in read_keys if realised[k]},
        "pairs_dropped": {k: {r: int(filtered.dropped.get(k, {}).get(r, 0)) for r in DROP_REASONS}
                          for k in read_keys},
        "pairs_dropped_too_long": clean.too_long,
        "instructions": lm["by_direction"].get("instruction", {}),
        "translations": lm["by_direction"].get("translation", {}),
        "lm": lm,
        "instruction_ids_dropped": build.dropped_ids,
        "prompts_truncated": truncated,
    }
    return AlignmentData(tokenized, examples, tokenizer.pad_token_id, cfg.data.pack, cfg.data.max_length, stats)


__all__ = ["AlignmentData", "build_alignment_data", "mix_metrics", "pairs_from_instructions", "read_sources"]
