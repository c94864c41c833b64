"""What a run trains on, built from its config: sources read and checked, pairs filtered
and resampled, instruction samples mixed, everything tokenised (or loaded from the data
cache), served as deterministic sharded micro-batches (``AlignmentData``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from xalign import progress
from xalign.config.schema import RunConfig, bitext_only
from xalign.data.batches import (
    TokenizedPairs,
    collate_lm_batch,
    collate_pairs,
    num_tokens,
    tokenize_lm,
    tokenize_pairs,
)
from xalign.data.cache import (
    LM_COLUMNS,
    cache_key,
    load_entry,
    save_entry,
    tokenizer_fingerprint,
)
from xalign.data.bitext import bitext_fingerprint, read_bitext, split_heldout
from xalign.data.instructions import InstructionBuild, cross_lingual_samples
from xalign.data.languages import LANGUAGE_NAMES, known_name
from xalign.data.mix import (
    DROP_REASONS,
    add_replay,
    filter_pairs,
    lm_stats,
    mix_lm_samples,
    mix_metrics,
    pair_key,
    resample_by_language,
    translation_samples,
)
from xalign.data.prompts import english_words, world_words
from xalign.data.sources import (
    SourceError,
    file_digest,
    load_source,
    source_fingerprint,
)
from xalign.data.stream import ShardedOrder
from xalign.data.world_files import load_world_data


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
    #: The data cache entry: {"hit": loaded from it?, "path", "key"}; None = not cached.
    cache: dict | None = None

    def shard(self, *, seed: int, local_batch: int, world_size: int, rank: int,
              group_window: int = 0) -> "AlignmentData":
        """Fix this worker's slice of every global micro-batch; ``group_window`` > 0 groups
        samples of similar length into micro-batches (xalign.data.stream)."""
        if self.pairs.src:
            lengths = [max(len(s), len(t)) for s, t in zip(self.pairs.src, self.pairs.tgt)] if group_window else None
            self.pair_order = ShardedOrder(len(self.pairs.src), seed=seed, local_batch=local_batch,
                                           world_size=world_size, rank=rank, lengths=lengths,
                                           group_window=group_window)
        if self.lm_examples:
            lengths = [len(ex["input_ids"]) for ex in self.lm_examples] if group_window else None
            self.lm_order = ShardedOrder(len(self.lm_examples), seed=seed + 1, local_batch=local_batch,
                                         world_size=world_size, rank=rank, lengths=lengths,
                                         group_window=group_window)
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


@dataclass
class Sources:
    pivot: str
    others: list[str]
    pairs: list[dict]
    items: dict                     # lang -> id -> instruction item
    words: object                   # PromptWords
    bad_lines: dict[str, int] = field(default_factory=dict)   # source -> malformed lines skipped
    #: Pairs of data.pairs held out (``heldout``): never trained on, for retrieval and MEXA.
    heldout: list[dict] = field(default_factory=list)
    #: Bitext: pairs dropped per language for an empty line on either side.
    bitext_empty: dict[str, int] = field(default_factory=dict)


def check_language_names(cfg: RunConfig, languages) -> None:
    """Real data names target languages in English ("Answer in {name}:"): every language
    needs a name, built in or from ``data.language_names``."""
    missing = [lang for lang in languages if known_name(lang, cfg.data.language_names) is None]
    if missing:
        example = ", ".join(f"{lang}: <English name>" for lang in missing)
        raise SourceError(f"data.languages: no English name is known for {missing}, needed for the prompt "
                          f"\"... Answer in {{name}}:\" (and \"Translate into {{name}}:\"); name them in the config: "
                          f"data.language_names: {{{example}}}. Built-in names cover the 52 Bactrian-X languages: "
                          f"{', '.join(sorted(LANGUAGE_NAMES))}")


def read_sources(cfg: RunConfig, world_dir: Path | None) -> Sources:
    """Pivot, other languages, pairs, instruction items by language and id, and prompt words
    from the configured real sources, the synthetic world filling in what is not configured."""
    bitext = bitext_only(cfg)
    world = (load_world_data(world_dir) if world_dir is not None and cfg.data.instructions is None and not bitext
             else None)
    pivot = cfg.data.pivot or (world.pivot if world else None)
    languages = cfg.data.languages or (world.languages if world else None)
    if world is not None:
        unknown = sorted(set(languages) - set(world.languages))
        if unknown:
            raise SourceError(f"data.languages: {unknown} are not languages of the world; it has {world.languages}")
        if pivot != world.pivot:
            raise SourceError(f"data.pivot: the world's pivot is {world.pivot!r}, got {pivot!r}")
    others = [lang for lang in languages if lang != pivot]
    bad_lines: dict[str, int] = {}
    if cfg.data.instructions is not None:
        check_language_names(cfg, [pivot, *others])
        items = {}
        for lang in [pivot, *others]:
            rows = load_source(cfg.data.instructions, required=INSTRUCTION_COLUMNS, lang=lang, key="data.instructions")
            items[lang] = {str(row["id"]): row for row in rows}
            bad_lines[f"instructions/{lang}"] = rows.bad_lines
        words = english_words(cfg.data.mix.target_name_in, cfg.data.language_names)
    elif bitext:                     # no instructions: the LM term trains on translations of the pairs
        check_language_names(cfg, [pivot, *others])
        items, words = {}, english_words(cfg.data.mix.target_name_in, cfg.data.language_names)
    else:
        items, words = world.instructions, world_words(world, cfg.data.mix.target_name_in)
    if cfg.objective.hard_negatives and cfg.data.pairs is None:
        raise SourceError("objective.hard_negatives: only a data.pairs source can bring hard negatives (a "
                          "`hard_negative` column, in the target language); the configured pairs have none")
    heldout: list[dict] = []
    empty: dict[str, int] = {}
    if cfg.data.pairs is not None and cfg.data.pairs.format == "bitext":
        if cfg.objective.hard_negatives:
            raise SourceError("objective.hard_negatives: bitext files (data.pairs.format: bitext) hold no hard "
                              "negatives; give the pairs as JSONL/CSV with a `hard_negative` column, or turn it off")
        read = read_bitext(cfg.data.pairs, pivot=pivot, languages=others, key="data.pairs")
        bad_lines["pairs"], empty = read.bad_lines, read.empty
        pairs, heldout = split_heldout(read.pairs, cfg.data.pairs.heldout, seed=cfg.seed)
    elif cfg.data.pairs is not None:
        required = PAIR_COLUMNS + (("hard_negative",) if cfg.objective.hard_negatives else ())
        rows = load_source(cfg.data.pairs, required=required, key="data.pairs")
        bad_lines["pairs"] = rows.bad_lines
        pairs = [p for p in rows if p["tgt_lang"] in others and p["src_lang"] == pivot]
        pairs, heldout = split_heldout(pairs, cfg.data.pairs.heldout, seed=cfg.seed)
    elif world is not None:
        pairs = [p for p in world.pairs if p["tgt_lang"] in others]
    else:
        pairs = pairs_from_instructions(items, pivot=pivot, others=others)
    return Sources(pivot, others, pairs, items, words, bad_lines, heldout, empty)


def heldout_pairs(cfg: RunConfig) -> dict[str, dict[str, list[str]]]:
    """The held-out pairs of ``data.pairs`` (``heldout``) by language: {lang: {"pivot": [...],
    "tgt": [...]}}, row i of one the translation of row i of the other; {} when none are held
    out. The same split as the training data's (same files, same seed), so never trained on."""
    if cfg.data.pairs is None or not cfg.data.pairs.heldout or cfg.data.pivot is None:
        return {}
    others = [lang for lang in cfg.data.languages or [] if lang != cfg.data.pivot]
    if cfg.data.pairs.format == "bitext":
        pairs = read_bitext(cfg.data.pairs, pivot=cfg.data.pivot, languages=others, key="data.pairs").pairs
    else:
        rows = load_source(cfg.data.pairs, required=PAIR_COLUMNS, key="data.pairs")
        pairs = [p for p in rows if p["tgt_lang"] in others and p["src_lang"] == cfg.data.pivot]
    out: dict[str, dict[str, list[str]]] = {}
    for pair in split_heldout(pairs, cfg.data.pairs.heldout, seed=cfg.seed)[1]:
        entry = out.setdefault(pair["tgt_lang"], {"pivot": [], "tgt": []})
        entry["pivot"].append(pair["src"])
        entry["tgt"].append(pair["tgt"])
    return out


def pairs_from_instructions(items, *, pivot: str, others) -> list[dict]:
    """Translation pairs from instruction data parallel by id (as the released AFP data did):
    the pivot's "instruction input" against the same id's text in each other language."""
    def text(item: dict) -> str:
        return " ".join(part for part in (item["instruction"], item.get("input", "")) if part)

    return [{"src": text(items[pivot][i]), "tgt": text(items[lang][i]), "src_lang": pivot, "tgt_lang": lang}
            for lang in others for i in sorted(set(items[pivot]) & set(items[lang]))]


def replay_texts(cfg: RunConfig, world_dir: Path | None, pivot: str, bad_lines: dict,
                 pairs: Sequence[dict] = ()) -> list[str]:
    """Pivot pre-training text for replay: ``data.replay`` (a ``text`` column), else, with
    bitext and no instructions, the pivot side of the training pairs, else the world's pivot
    corpus (one document per line)."""
    if cfg.data.replay is not None:
        rows = load_source(cfg.data.replay, required=("text",), key="data.replay")
        bad_lines["replay"] = rows.bad_lines
        return [row["text"] for row in rows if row["text"]]
    if bitext_only(cfg):
        return list(dict.fromkeys(p["src"] for p in pairs if p["src_lang"] == pivot))
    if world_dir is None:
        return []
    path = Path(world_dir) / "corpus" / f"{pivot}.txt"
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def data_cache_key(cfg: RunConfig, tokenizer, world_dir: Path | None) -> str:
    """The content hash that names a run's tokenised data (``xalign.data.cache``): the
    sources' content, the world's manifest, the tokenizer, the data config and the seed."""
    d = cfg.data
    sources: dict[str, str] = {}
    if d.pairs is not None and d.pairs.format == "bitext":
        sources["pairs"] = bitext_fingerprint(d.pairs, pivot=d.pivot, languages=d.languages, key="data.pairs")
    elif d.pairs is not None:
        sources["pairs"] = source_fingerprint(d.pairs, key="data.pairs")
    if d.instructions is not None:
        for lang in dict.fromkeys([d.pivot, *d.languages]):
            sources[f"instructions/{lang}"] = source_fingerprint(d.instructions, lang=lang, key="data.instructions")
    if d.replay is not None and d.mix.replay_share > 0:
        sources["replay"] = source_fingerprint(d.replay, key="data.replay")
    if world_dir is not None:
        sources["world"] = file_digest(str(Path(world_dir) / "manifest.json"))
    return cache_key({
        "sources": sources,
        # Local paths are left out: the sources' content is what counts (the same files
        # mounted elsewhere, e.g. on another node, hit the same entry).
        "data": d.model_dump(mode="json", exclude={"world": True, "pack": True, "cache": True, "group_by_length": True,
                                                   "group_window": True, "num_workers": True,
                                                   **{s: {"path"} for s in ("pairs", "instructions", "replay")}}),
        "seed": cfg.seed,
        "hard_negatives": cfg.objective.hard_negatives,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    })


def build_alignment_data(cfg: RunConfig, tokenizer, world_dir: Path | None) -> AlignmentData:
    """Pairs and LM samples of the run, with the realised mix in ``stats`` (see
    ``xalign.data.mix``; ``mix_metrics(stats)`` flattens it for MLflow). With
    ``data.cache`` (the default) the tokenised data is loaded from the cache when the same
    inputs were built before, else built and stored there; ``AlignmentData.cache`` says which."""
    with progress.bar("data: checking the cache", total=BUILD_STEPS + bool(cfg.data.cache), unit="step") as shown:
        if not cfg.data.cache:
            return _build(cfg, tokenizer, world_dir, shown)
        key = data_cache_key(cfg, tokenizer, world_dir)
        entry = load_entry(key)
        if entry is not None:
            shown.set_description("data: loaded from the cache")
            shown.set(shown.total)
            return _from_entry(cfg, tokenizer, entry)
        data = _build(cfg, tokenizer, world_dir, shown)
        shown.set_description("data: writing the cache")
        pairs = {"src": data.pairs.src, "tgt": data.pairs.tgt, "lang": data.pairs.langs, "kept": data.pairs.kept}
        if data.pairs.neg is not None:
            pairs["neg"] = data.pairs.neg
        lm = {name: [ex[name] for ex in data.lm_examples] for name in LM_COLUMNS}
        path = save_entry(key, pairs, lm, {"stats": data.stats, "too_long": data.pairs.too_long,
                                            "too_long_by": data.pairs.too_long_by})
        shown.update(1)
        data.cache = {"hit": False, "path": str(path), "key": key}
        return data


BUILD_STEPS = 4   # shown while building: sources read, pairs tokenised, LM samples built, tokenised


def _from_entry(cfg: RunConfig, tokenizer, entry: dict) -> AlignmentData:
    p, lm, meta = entry["pairs"], entry["lm"], entry["meta"]
    pairs = TokenizedPairs(src=p["src"], tgt=p["tgt"], neg=p.get("neg"), langs=p["lang"], kept=p["kept"],
                           too_long=meta["too_long"], too_long_by=meta["too_long_by"])
    examples = [dict(zip(LM_COLUMNS, row)) for row in zip(*(lm[name] for name in LM_COLUMNS))]
    return AlignmentData(pairs, examples, tokenizer.pad_token_id, cfg.data.pack, cfg.data.max_length, meta["stats"],
                         cache={"hit": True, "path": entry["path"], "key": meta["key"]})


def _build(cfg: RunConfig, tokenizer, world_dir: Path | None, shown: progress.Bar) -> AlignmentData:
    mix = cfg.data.mix
    shown.set_description("data: reading the sources")
    src = read_sources(cfg, world_dir)
    shown.update(1)
    pivot, others, pairs, items, words = src.pivot, src.others, src.pairs, src.items, src.words
    languages = [pivot, *others]
    unknown = sorted(set(mix.pair_weights) - set(languages))
    if unknown:
        raise SourceError(f"data.mix.pair_weights: {unknown} are not languages of this run; it has {languages}")

    # Contrastive pairs: filter (empty, identical, duplicate, too long), then the language mix.
    filtered = filter_pairs(pairs)
    shown.set_description(f"data: tokenising {len(filtered.kept):,} pairs")
    clean = tokenize_pairs(tokenizer, filtered.kept, max_length=cfg.data.max_length)
    shown.update(1)
    for key, n in clean.too_long_by.items():
        filtered.drop(key, "too_long", n)
    clean_keys = [pair_key(filtered.kept[i]) for i in clean.kept]
    order, _ = resample_by_language(clean_keys, alpha=mix.alpha, seed=cfg.seed,
                                    weights={f"{pivot}-{lang}": w for lang, w in mix.pair_weights.items()})
    tokenized = clean.select(order)
    pair_texts = [filtered.kept[i] for i in tokenized.kept]

    # LM samples: cross-lingual instructions, a share of them replaced by translation samples.
    shown.set_description("data: building LM samples")
    if items:
        build = cross_lingual_samples(items, languages=languages, answer_in=words.answer_in,
                                      cross_probability=mix.cross_probability, repeat=mix.repeat,
                                      seed=cfg.seed, language_weights=mix.pair_weights or None)
        samples = mix_lm_samples(build.samples, pair_texts, share=mix.translation_share, words=words,
                                 template=mix.translation_template, seed=cfg.seed)
    else:   # bitext without instructions: one translation sample per pair, its direction drawn
        build = InstructionBuild([], 0, {})
        samples = translation_samples(pair_texts, len(pair_texts), words=words, template=mix.translation_template,
                                      seed=cfg.seed)
    if mix.replay_share > 0:
        samples = add_replay(samples, replay_texts(cfg, world_dir, pivot, src.bad_lines, pair_texts),
                             share=mix.replay_share, pivot=pivot,
                             seed=cfg.seed, tokenizer=tokenizer, max_length=cfg.data.max_length)
    shown.update(1)
    shown.set_description(f"data: tokenising {len(samples):,} LM samples")
    tokenized_lm = tokenize_lm(tokenizer, samples, max_length=cfg.data.max_length)
    shown.update(1)
    examples, truncated = tokenized_lm.examples, tokenized_lm.truncated
    samples = [samples[i] for i in tokenized_lm.kept]

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
        "lm_dropped_too_long": sum(tokenized_lm.too_long_by.values()),
        "bad_lines": dict(src.bad_lines),
        "bitext_empty": dict(src.bitext_empty),
        "heldout": dict(Counter(p["tgt_lang"] for p in src.heldout)),
    }
    return AlignmentData(tokenized, examples, tokenizer.pad_token_id, cfg.data.pack, cfg.data.max_length, stats)


__all__ = ["AlignmentData", "SourceError", "build_alignment_data", "data_cache_key", "mix_metrics",
           "pairs_from_instructions", "read_sources"]
