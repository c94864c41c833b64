"""data.mix realised in the training data: language sampling (alpha, pair_weights),
translation samples (translation_share, translation_template), target_name_in, pair
filtering, the stats that describe the realised mix. No model: a tiny world's text and
tokenizer only (a few seconds in all)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from xalign.config import ConfigError, RunConfig, from_overrides
from xalign.config.world import WorldConfig
from xalign.data import build_alignment_data, mix_metrics
from xalign.data.batches import tokenize_pairs
from xalign.data.instructions import cross_lingual_samples
from xalign.data.mix import filter_pairs, language_quotas, translation_samples
from xalign.data.prompts import english_words, world_words
from xalign.data.world_files import load_world_data, read_jsonl

OTHERS = ("qab", "qac", "qad")
SKEW = {"qab": 300, "qac": 100, "qad": 25}          # pairs per language in the skewed source


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_world_overrides):
    """(world directory, tokenizer, WorldData) of the tiny world, text only (no base model)."""
    from transformers import AutoTokenizer

    from xalign.synthetic import build_world

    cfg = from_overrides(WorldConfig, tiny_world_overrides)
    world_dir = build_world(cfg, out=tmp_path_factory.mktemp("mix") / "w").path
    return world_dir, AutoTokenizer.from_pretrained(str(world_dir / "tokenizer")), load_world_data(world_dir)


@pytest.fixture(scope="module")
def skewed_pairs(world, tmp_path_factory) -> Path:
    """The world's pairs cut to 300 / 100 / 25 per language, as a local real source."""
    world_dir, _, _ = world
    rows = [row for lang, n in SKEW.items()
            for row in read_jsonl(world_dir / "pairs" / "train" / f"qaa-{lang}.jsonl")[:n]]
    path = tmp_path_factory.mktemp("skew") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def config(tiny_world_overrides):
    """config(*overrides) -> the run config on the tiny world."""
    def make(*extra: str) -> RunConfig:
        return from_overrides(RunConfig, [f"data.world.{o}" for o in tiny_world_overrides]
                              + ["data.max_length=64", *extra])
    return make


@pytest.fixture(scope="module")
def skewed(config, skewed_pairs):
    """skewed(*overrides) -> a run config on the skewed pairs (300 / 100 / 25 per language)."""
    def make(*extra: str) -> RunConfig:
        return config(f"data.pairs.path={skewed_pairs}", "data.pivot=qaa", "data.languages=[qab,qac,qad]", *extra)
    return make


def build(world, cfg: RunConfig):
    world_dir, tokenizer, _ = world
    return build_alignment_data(cfg, tokenizer, world_dir)


def lang_counts(data) -> dict[str, int]:
    return dict(Counter(data.pairs.langs))


# --- language sampling -------------------------------------------------------------------

def test_alpha_one_keeps_the_proportions_and_alpha_zero_makes_languages_uniform(world, skewed):
    total = sum(SKEW.values())
    kept = build(world, skewed())
    assert lang_counts(kept) == SKEW and kept.stats["pairs"] == {f"qaa-{k}": v for k, v in SKEW.items()}
    uniform = build(world, skewed("data.mix.alpha=0"))
    assert len(uniform.pairs.src) == total                     # an epoch means the same
    assert sorted(lang_counts(uniform).values()) == [141, 142, 142]
    assert all(abs(s - 1 / 3) < 0.01 for s in uniform.stats["pair_shares"].values())
    assert uniform.stats["pairs_available"] == kept.stats["pairs"]
    # qad (25 pairs, quota 141) repeats every pair 5 or 6 times; qab (300, quota 142) is subsampled
    copies = Counter(tuple(s) for s, lang in zip(uniform.pairs.tgt, uniform.pairs.langs) if lang == "qad")
    assert len(copies) == 25 and set(copies.values()) <= {5, 6}
    qab = [tuple(s) for s, lang in zip(uniform.pairs.tgt, uniform.pairs.langs) if lang == "qab"]
    assert len(set(qab)) == len(qab) == 142
    half = lang_counts(build(world, skewed("data.mix.alpha=0.5")))
    assert SKEW["qab"] > half["qab"] > 142 and SKEW["qad"] < half["qad"] < 141
    assert sum(half.values()) == total


def test_pair_weights_shift_the_shares(world, skewed):
    weighted = build(world, skewed("data.mix.alpha=0", "data.mix.pair_weights={qad: 4}"))
    shares = weighted.stats["pair_shares"]
    assert shares["qaa-qad"] == pytest.approx(4 / 6, abs=0.01) and shares["qaa-qab"] == pytest.approx(1 / 6, abs=0.01)
    dropped = build(world, skewed("data.mix.pair_weights={qac: 0}"))
    assert "qac" not in lang_counts(dropped) and len(dropped.pairs.src) == sum(SKEW.values())
    assert lang_counts(dropped) == {"qab": 392, "qad": 33}       # 425 x 300/325 and 425 x 25/325, rounded
    with pytest.raises(ValueError, match=r"pair_weights: \['qzz'\] are not languages of this run"):
        build(world, skewed("data.mix.pair_weights={qzz: 2}"))
    with pytest.raises(ValueError, match="weight 0"):
        language_quotas({"a": 3, "b": 4}, alpha=1.0, weights={"a": 0, "b": 0})


def test_pair_weights_weigh_the_languages_of_instruction_samples(world, config):
    plain = build(world, config("data.mix.cross_probability=0"))
    heavy = build(world, config("data.mix.cross_probability=0", "data.mix.pair_weights={qab: 5}"))

    def source_share(data, lang):
        counts = data.stats["instructions"]
        return sum(n for k, n in counts.items() if k.startswith(lang)) / sum(counts.values())

    assert source_share(plain, "qab") == pytest.approx(1 / 4, abs=0.06)
    assert source_share(heavy, "qab") == pytest.approx(5 / 8, abs=0.06)
    # a weighted cross draw never picks a weight-0 language, nor the source itself
    items = {lang: {str(i): {"instruction": f"i{i}", "input": "", "output": f"o{i} {lang}"} for i in range(100)}
             for lang in ("en", "de", "zh")}
    crossed = cross_lingual_samples(items, languages=["en", "de", "zh"], answer_in=lambda s, t: t,
                                    cross_probability=1.0, repeat=3, seed=0, language_weights={"zh": 0})
    assert {(s.src_lang, s.tgt_lang) for s in crossed.samples} == {("en", "de"), ("de", "en")}


# --- translation samples -----------------------------------------------------------------

@pytest.mark.parametrize("template", ["translate", "equals"])
def test_translation_share_is_realised_and_samples_are_well_formed(world, template, config):
    _, tokenizer, wd = world
    data = build(world, config("data.mix.translation_share=0.3", f"data.mix.translation_template={template}"))
    lm = data.stats["lm"]
    plain = build(world, config())
    assert lm["total"] == len(data.lm_examples) == len(plain.lm_examples)        # same number of LM samples
    assert lm["translation"] == round(0.3 * lm["total"]) and abs(lm["translation_share"] - 0.3) < 0.01
    assert lm["instruction"] + lm["translation"] == lm["total"]
    assert sum(data.stats["translations"].values()) == lm["translation"]
    assert mix_metrics(data.stats)["data/lm/translation_share"] == pytest.approx(lm["translation_share"])
    # every sample's tokens are known words (no <unk>): the fixed words are the world's
    assert all(tokenizer.unk_token_id not in ex["input_ids"] for ex in data.lm_examples)

    # the samples themselves: a pair's two sides, either way round, around the world's words
    texts = {(pair["src"], pair["tgt"]) for pair in wd.pairs}
    samples = translation_samples(wd.pairs, 400, words=world_words(wd), template=template, seed=0)
    p = wd.pivot
    flipped = 0
    for s in samples:
        src_text = s.prompt.rsplit(" ", 4 if template == "translate" else 1)[0]
        assert (src_text, s.response) in texts or (s.response, src_text) in texts
        flipped += s.src_lang != p
        assert s.kind == "translation" and (s.src_lang == p) != (s.tgt_lang == p)
        if template == "translate":
            ending = f"{wd.lexicon['translate'][p]} {wd.lexicon['into'][p]} {wd.lexicon['language_' + s.tgt_lang][p]} :"
        else:
            ending = ":"
        assert s.prompt == f"{src_text} {ending}"
    assert 0.4 < flipped / len(samples) < 0.6                       # both directions, about half each


def test_real_data_translation_samples_use_english_words():
    pairs = [{"src": f"hello {i}", "tgt": f"hallo {i}", "src_lang": "en", "tgt_lang": "de"} for i in range(50)]
    words = english_words()
    out = translation_samples(pairs, 100, words=words, template="translate", seed=1)
    assert len(out) == 100 and Counter(s.item_id for s in out) == Counter({str(i): 2 for i in range(50)})
    for s in out:
        name = {"de": "German", "en": "English"}[s.tgt_lang]
        assert re.fullmatch(rf"(hello|hallo) \d+ Translate into {name}:", s.prompt)
        assert s.response.split()[1] == s.prompt.split()[1] and s.response.split()[0] != s.prompt.split()[0]
    assert {s.tgt_lang for s in out} == {"de", "en"}
    equals = translation_samples(pairs, 10, words=words, template="equals", seed=1)
    assert all(re.fullmatch(r"(hello|hallo) \d+ =", s.prompt) for s in equals)
    assert words.answer_in("de", "en") == "Answer in English:"


# --- the target's name -------------------------------------------------------------------

def test_target_name_in_source_names_the_target_in_the_source_language(world, config):
    _, tokenizer, wd = world
    p, lex = wd.pivot, wd.lexicon
    owner = {word: (concept, lang) for concept, forms in lex.items() for lang, word in forms.items()}

    def names(data) -> list[tuple[str, str, str]]:
        """(target named, language the name is written in, language of the prompt's words)."""
        out = []
        for ex in data.lm_examples:
            words = tokenizer.decode([t for t, y in zip(ex["input_ids"], ex["labels"]) if y == -100],
                                     skip_special_tokens=True).split()
            assert words[-1] == ":"
            concept, written_in = owner[words[-2]]
            fixed = 4 if words[-4:-2] == [lex["translate"][p], lex["into"][p]] else 3
            text_langs = Counter(owner[w][1] for w in words[:-fixed]      # person names are shared: skip
                                 if w in owner and not owner[w][0].startswith("person"))
            out.append((concept.removeprefix("language_"), written_in, text_langs.most_common(1)[0][0]))
        return out

    pivot_named = names(build(world, config("data.mix.cross_probability=1")))
    assert {written for _, written, _ in pivot_named} == {p}
    source_named = names(build(world, config("data.mix.cross_probability=1", "data.mix.target_name_in=source",
                                             "data.mix.translation_share=0.5")))
    assert all(written == src for _, written, src in source_named)
    assert {written for _, written, _ in source_named} == set(wd.languages)
    assert all(tgt != src for tgt, _, src in source_named)          # cross_probability 1, and flipped pairs
    with pytest.raises(ConfigError, match="target_name_in"):
        from_overrides(RunConfig, ["data.instructions.path=/tmp/{lang}.jsonl", "data.pivot=en",
                                   "data.languages=[de]", "data.mix.target_name_in=source"])
    with pytest.raises(ValueError, match="English only"):
        english_words("source")


# --- filtering ---------------------------------------------------------------------------

def test_filters_drop_and_count_each_bad_kind_per_language_pair(world, tmp_path, config):
    world_dir, tokenizer, _ = world
    good = read_jsonl(world_dir / "pairs" / "train" / "qaa-qab.jsonl")[:20]
    good_c = read_jsonl(world_dir / "pairs" / "train" / "qaa-qac.jsonl")[:10]
    long_text = " ".join([good[0]["src"]] * 30)
    bad = [
        {**good[0], "tgt": ""}, {**good[1], "src": "   "},                     # empty x2
        {**good[2], "tgt": good[2]["src"]},                                      # identical
        dict(good[3]), {**good[4], "tgt": good[4]["tgt"] + "  "},                # duplicates (whitespace too)
        {**good[5], "src": long_text},                                           # too long
        {**good_c[0], "tgt": good_c[0]["src"]},                                  # identical, qac
    ]
    rows = good + good_c + bad
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    data = build(world, config(f"data.pairs.path={path}", "data.pivot=qaa", "data.languages=[qab,qac]"))
    stats = data.stats
    assert stats["pairs_dropped"] == {
        "qaa-qab": {"empty": 2, "identical": 1, "duplicate": 2, "too_long": 1},
        "qaa-qac": {"empty": 0, "identical": 1, "duplicate": 0, "too_long": 0}}
    assert stats["pairs_read"] == {"qaa-qab": 26, "qaa-qac": 11}
    assert stats["pairs"] == stats["pairs_available"] == {"qaa-qab": 20, "qaa-qac": 10}
    assert stats["pairs_dropped_too_long"] == 1
    metrics = mix_metrics(stats)
    assert metrics["data/pairs_dropped/qaa-qab/duplicate"] == 2.0 and metrics["data/pairs_dropped/identical"] == 2.0
    # the released filters alone: tokenize_pairs still drops only the too-long
    assert tokenize_pairs(tokenizer, rows, max_length=64).too_long == 1
    assert filter_pairs([{"src": None, "tgt": "x", "src_lang": "a", "tgt_lang": "b"}]).dropped == {"a-b": {"empty": 1}}


# --- determinism, defaults, stats --------------------------------------------------------

def test_the_mix_is_deterministic_for_a_seed_and_differs_across_seeds(world, skewed):
    args = ("data.mix.alpha=0", "data.mix.translation_share=0.4", "data.mix.pair_weights={qac: 2}")
    a = build(world, skewed(*args))
    b = build(world, skewed(*args))
    c = build(world, skewed(*args, "seed=1"))
    assert (a.pairs.src, a.pairs.tgt, a.lm_examples, a.stats) == (b.pairs.src, b.pairs.tgt, b.lm_examples, b.stats)
    assert a.pairs.tgt != c.pairs.tgt and a.lm_examples != c.lm_examples
    assert lang_counts(a) == lang_counts(c)            # the quotas are the config's, not the seed's


def test_defaults_leave_the_data_as_released(world, config):
    _, tokenizer, wd = world
    cfg = config()
    assert (cfg.data.mix.alpha, cfg.data.mix.translation_share, cfg.data.mix.target_name_in) == (1.0, 0.0, "pivot")
    data = build(world, cfg)
    released = tokenize_pairs(tokenizer, wd.pairs, max_length=64)
    assert (data.pairs.src, data.pairs.tgt, data.pairs.langs) == (released.src, released.tgt, released.langs)
    samples = cross_lingual_samples(wd.instructions, languages=wd.languages, answer_in=wd.answer_in,
                                    cross_probability=0.5, repeat=3, seed=cfg.seed)
    assert data.stats["instructions"] == samples.counts and data.stats["lm"]["translation"] == 0
    assert len(data.lm_examples) == len(samples.samples)
    assert all(sum(r.values()) == 0 for r in data.stats["pairs_dropped"].values())     # the world's pairs are clean


def test_stats_are_json_and_flatten_to_mlflow_names(world, skewed):
    data = build(world, skewed("data.mix.alpha=0.3", "data.mix.translation_share=0.2"))
    assert json.loads(json.dumps(data.stats)) == data.stats
    metrics = mix_metrics(data.stats)
    assert all(re.fullmatch(r"data/[\w./\- ]+", k) for k in metrics), [k for k in metrics if ">" in k]
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["data/pairs/total"] == sum(SKEW.values())
    assert metrics["data/pairs/qaa-qab"] == data.stats["pairs"]["qaa-qab"]
    assert metrics["data/lm/n_translation"] + metrics["data/lm/n_instruction"] == metrics["data/lm/total"]
    leaves = set(metrics)
    assert not any(name.startswith(other + "/") for name in leaves for other in leaves)   # file-store safe
    assert any(k.startswith("data/lm/translation/qab-qaa") for k in metrics)
    assert metrics["data/pair_share/qaa-qad"] == pytest.approx(data.stats["pair_shares"]["qaa-qad"])


def test_replay_share_replaces_lm_samples_with_pivot_text(tiny_world, tiny_world_overrides):
    from transformers import AutoTokenizer

    from xalign.config import RunConfig, from_overrides
    from xalign.data import build_alignment_data, mix_metrics

    _, world_dir = tiny_world
    tokenizer = AutoTokenizer.from_pretrained(world_dir / "tokenizer")
    base = [f"data.world.{o}" for o in tiny_world_overrides] + ["data.max_length=32"]
    plain = build_alignment_data(from_overrides(RunConfig, base), tokenizer, world_dir)
    mixed = build_alignment_data(from_overrides(RunConfig, base + ["data.mix.replay_share=0.25"]), tokenizer, world_dir)
    lm = mixed.stats["lm"]
    assert lm["total"] == plain.stats["lm"]["total"] and lm["replay"] == round(0.25 * lm["total"])
    assert mix_metrics(mixed.stats)["data/lm/replay_share"] == pytest.approx(0.25, abs=0.01)
    assert set(mixed.stats["lm"]["by_direction"]["replay"]) == {"qaa->qaa"}
    pivot_words = set((world_dir / "corpus" / "qaa.txt").read_text().split())
    replayed = [ex for ex in mixed.lm_examples if sum(label != -100 for label in ex["labels"]) == len(ex["labels"]) - 1]
    assert len(replayed) >= lm["replay"]                         # loss on every token after the first
    for ex in replayed[:20]:
        assert len(ex["input_ids"]) <= 32
        words = set(tokenizer.decode(ex["input_ids"], skip_special_tokens=True).split())
        assert words <= pivot_words                              # pivot text only
