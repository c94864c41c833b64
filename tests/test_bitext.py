"""Bitext as a pairs source: the line-aligned reader (Tatoeba and Moses/OPUS layouts), the
ISO 639-3 table, refusals (line counts differ, no files, unknown code), empty lines dropped
and counted, the held-out split, and the run's data built from bitext alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xalign.config.schema import SourceConfig
from xalign.data.bitext import count_lines, read_bitext, split_heldout
from xalign.data.iso639 import ISO639_3, file_code_candidates, iso_to_run_code
from xalign.data.sources import SourceError

REPO = Path(__file__).resolve().parents[1]
TATOEBA = Path(os.environ.get("XALIGN_REAL_DATA", REPO.parent / "shared" / "data" / "real")) / "tatoeba"


def write(path: Path, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def bitext(tmp: Path, template: str, **extra) -> SourceConfig:
    return SourceConfig(format="bitext", path=str(tmp / template), **extra)


def test_iso_table_covers_the_task_languages_and_prefers_individual_languages():
    xcopa = ["et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh"]
    pawsx = ["de", "en", "es", "fr", "ja", "ko", "zh"]
    for code in xcopa + pawsx:
        assert file_code_candidates(code, {}), code
    assert file_code_candidates("zh", {})[0] == "cmn" and "zho" in file_code_candidates("zh", {})
    assert file_code_candidates("sw", {})[0] == "swh"
    assert [iso_to_run_code(c, {}) for c in ("deu", "cmn", "swh", "tur", "vie", "ind", "ita", "est", "tha", "tam",
                                             "hat", "spa", "fra", "jpn", "kor", "eng")] == \
        ["de", "zh", "sw", "tr", "vi", "id", "it", "et", "th", "ta", "ht", "es", "fr", "ja", "ko", "en"]
    assert all(len(k) == 3 and len(v) == 2 for k, v in ISO639_3.items())


def test_config_entries_come_first_and_extend_the_table():
    assert file_code_candidates("zh", {"yue": "zh"})[0] == "yue"
    assert file_code_candidates("qaa", {"xyz": "qaa"}) == ["xyz"]
    assert file_code_candidates("qaa", {}) == []
    assert iso_to_run_code("xyz", {"xyz": "qaa"}) == "qaa"


def test_tatoeba_layout_with_iso_codes(tmp_path):
    write(tmp_path / "deu-eng.eng", ["I see.", "", "Hello."])
    write(tmp_path / "deu-eng.deu", ["Ich sehe.", "Leer", "Hallo."])
    write(tmp_path / "cmn-eng.eng", ["Thanks."])
    write(tmp_path / "cmn-eng.cmn", ["谢谢。"])
    src = bitext(tmp_path, "{lang}-{pivot}.{side}", file_codes="iso639-3")
    out = read_bitext(src, pivot="en", languages=["en", "de", "zh"])
    assert out.pairs == [
        {"src": "I see.", "tgt": "Ich sehe.", "src_lang": "en", "tgt_lang": "de"},
        {"src": "Hello.", "tgt": "Hallo.", "src_lang": "en", "tgt_lang": "de"},
        {"src": "Thanks.", "tgt": "谢谢。", "src_lang": "en", "tgt_lang": "zh"}]
    assert out.empty == {"de": 1, "zh": 0}
    assert out.files["zh"] == (str(tmp_path / "cmn-eng.eng"), str(tmp_path / "cmn-eng.cmn"))


def test_moses_opus_layout_with_sorted_pair_names(tmp_path):
    write(tmp_path / "europarl.de-en.de", ["Guten Tag", "Danke"])
    write(tmp_path / "europarl.de-en.en", ["Good day", "Thanks"])
    write(tmp_path / "europarl.en-fr.en", ["Yes"])
    write(tmp_path / "europarl.en-fr.fr", ["Oui"])
    out = read_bitext(bitext(tmp_path, "europarl.{pair}.{side}"), pivot="en", languages=["de", "fr"])
    assert [(p["tgt_lang"], p["src"], p["tgt"]) for p in out.pairs] == [
        ("de", "Good day", "Guten Tag"), ("de", "Thanks", "Danke"), ("fr", "Yes", "Oui")]


def test_line_counts_that_differ_are_refused_with_both_counts_and_paths(tmp_path):
    a = write(tmp_path / "de-en.en", ["a", "b", "c"])
    b = write(tmp_path / "de-en.de", ["x", "y"])
    with pytest.raises(SourceError) as err:
        read_bitext(bitext(tmp_path, "{lang}-{pivot}.{side}"), pivot="en", languages=["de"])
    message = str(err.value)
    assert str(a) in message and str(b) in message and "3 lines" in message and "2" in message


def test_a_last_line_without_newline_counts(tmp_path):
    (tmp_path / "x").write_text("a\nb", encoding="utf-8")
    (tmp_path / "y").write_text("a\nb\n", encoding="utf-8")
    assert count_lines(str(tmp_path / "x")) == count_lines(str(tmp_path / "y")) == 2


def test_missing_files_name_what_was_tried_and_unknown_codes_say_how_to_add_one(tmp_path):
    write(tmp_path / "deu-eng.eng", ["a"])
    with pytest.raises(SourceError, match=r"no bitext files for en-de: tried .*deu-eng\.deu"):
        read_bitext(bitext(tmp_path, "{lang}-{pivot}.{side}", file_codes="iso639-3"), pivot="en", languages=["de"])
    with pytest.raises(SourceError, match=r"iso639_3.*'qaa'.*\{<xxx>: qaa\}"):
        read_bitext(bitext(tmp_path, "{lang}-{pivot}.{side}", file_codes="iso639-3"), pivot="en", languages=["qaa"])


def test_a_non_utf8_line_drops_the_pair_on_both_sides_within_max_bad_lines(tmp_path):
    (tmp_path / "de-en.en").write_bytes(b"one\ntwo\nthree\n")
    (tmp_path / "de-en.de").write_bytes(b"eins\nzw\xff\ndrei\n")
    with pytest.raises(SourceError, match=r"de-en\.de:2: not UTF-8"):
        read_bitext(bitext(tmp_path, "{lang}-{pivot}.{side}"), pivot="en", languages=["de"])
    out = read_bitext(bitext(tmp_path, "{lang}-{pivot}.{side}", max_bad_lines=1), pivot="en", languages=["de"])
    assert [(p["src"], p["tgt"]) for p in out.pairs] == [("one", "eins"), ("three", "drei")]
    assert out.bad_lines == 1


def test_max_rows_caps_each_language(tmp_path):
    write(tmp_path / "de-en.en", list("abcdef"))
    write(tmp_path / "de-en.de", list("ABCDEF"))
    out = read_bitext(bitext(tmp_path, "{lang}-{pivot}.{side}", max_rows=2), pivot="en", languages=["de"])
    assert [p["tgt"] for p in out.pairs] == ["A", "B"]


def test_heldout_split_is_per_language_seeded_and_disjoint():
    pairs = [{"src": f"s{i}", "tgt": f"t{i}", "src_lang": "en", "tgt_lang": lang}
             for lang in ("de", "zh") for i in range(10)]
    train, held = split_heldout(pairs, 3, seed=0)
    assert len(held) == 6 and len(train) == 14
    assert {p["tgt_lang"] for p in held} == {"de", "zh"}
    assert not {id(p) for p in train} & {id(p) for p in held}
    assert split_heldout(pairs, 3, seed=0) == (train, held)
    assert split_heldout(pairs, 3, seed=1)[1] != held
    _, share = split_heldout(pairs, 0.2, seed=0)
    assert len(share) == 4
    with pytest.raises(SourceError, match=r"heldout.*none to train on for de"):
        split_heldout(pairs, 10, seed=0)


def test_config_requires_side_placeholder_and_no_hub(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"\{side\}"):
        SourceConfig(format="bitext", path=str(tmp_path / "{lang}.txt"))
    with pytest.raises(ValidationError, match="bitext"):
        SourceConfig(format="bitext", hub="org/name")


@pytest.mark.skipif(not TATOEBA.is_dir(), reason=f"no real data at {TATOEBA}")
def test_real_tatoeba_files_for_the_xcopa_languages():
    src = SourceConfig(format="bitext", path=str(TATOEBA / "{lang}-{pivot}.{side}"), file_codes="iso639-3")
    out = read_bitext(src, pivot="en", languages=["en", "sw", "zh", "tr"])
    counts = {lang: sum(p["tgt_lang"] == lang for p in out.pairs) for lang in ("sw", "zh", "tr")}
    assert counts == {"sw": 390 - out.empty["sw"], "zh": 1000 - out.empty["zh"], "tr": 1000 - out.empty["tr"]}
    first_sw = next(p for p in out.pairs if p["tgt_lang"] == "sw")
    assert first_sw == {"src": "He brought me coffee.", "tgt": "Alinileta kahawa.", "src_lang": "en", "tgt_lang": "sw"}


# --- a run's data from bitext alone ---------------------------------------------------------------

def byte_tokenizer(texts):
    """A small byte-level BPE tokenizer trained on ``texts`` (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def bitext_run(tmp: Path, *extra: str):
    from xalign.config import from_overrides
    from xalign.config.schema import RunConfig

    en_de = [f"the house number {i}" for i in range(12)]
    write(tmp / "deu-eng.eng", en_de[:5] + [""] + en_de[5:])
    write(tmp / "deu-eng.deu", [f"das Haus Nummer {i}" for i in range(5)] + ["leer"]
          + [f"das Haus Nummer {i}" for i in range(5, 12)])
    write(tmp / "fra-eng.eng", [f"the cat {i}" for i in range(8)])
    write(tmp / "fra-eng.fra", [f"le chat {i}" for i in range(8)])
    return from_overrides(RunConfig, [
        "model.name_or_path=org/unused", "data.pivot=en", "data.languages=[en,de,fr]", "data.cache=false",
        "data.pairs.format=bitext", f"data.pairs.path={tmp}/{{lang}}-{{pivot}}.{{side}}",
        "data.pairs.file_codes=iso639-3", "data.pairs.heldout=2", "data.max_length=32", *extra])


def test_bitext_without_instructions_trains_the_lm_term_on_translations_of_the_same_pairs(tmp_path):
    from xalign.config.schema import uses_world
    from xalign.data import build_alignment_data, mix_metrics
    from xalign.data.build import heldout_pairs, read_sources

    cfg = bitext_run(tmp_path)
    assert not uses_world(cfg)
    src = read_sources(cfg, None)
    assert src.bitext_empty == {"de": 1, "fr": 0}
    assert len(src.pairs) == 12 - 2 + 8 - 2 and len(src.heldout) == 4
    held = heldout_pairs(cfg)
    assert {lang: len(v["pivot"]) for lang, v in held.items()} == {"de": 2, "fr": 2}
    trained = {p["src"] for p in src.pairs}
    assert not trained & set(held["de"]["pivot"] + held["fr"]["pivot"])     # never trained on
    assert all(t.replace("das Haus Nummer", "the house number") == s for s, t in zip(held["de"]["pivot"], held["de"]["tgt"]))

    tokenizer = byte_tokenizer([p["src"] for p in src.pairs] + [p["tgt"] for p in src.pairs])
    data = build_alignment_data(cfg, tokenizer, None)
    lm = data.stats["lm"]
    assert lm["translation"] == lm["total"] == len(src.pairs) and lm["instruction"] == 0
    directions = lm["by_direction"]["translation"]
    assert set(directions) <= {"en->de", "de->en", "en->fr", "fr->en"} and "de->en" in directions and "en->de" in directions
    prompts = [tokenizer.decode([t for t, y in zip(ex["input_ids"], ex["labels"]) if y == -100], skip_special_tokens=True)
               for ex in data.lm_examples]
    assert all(" Translate into " in p for p in prompts)
    assert any(p.endswith("Translate into German:") for p in prompts) and any(p.endswith("Translate into English:") for p in prompts)
    metrics = mix_metrics(data.stats)
    assert metrics["data/bitext_empty/de"] == 1 and metrics["data/heldout/fr"] == 2 and metrics["data/lm/n_translation"] == 16


def test_bitext_replay_comes_from_the_pivot_side_of_the_training_pairs(tmp_path):
    from xalign.data import build_alignment_data

    cfg = bitext_run(tmp_path, "data.mix.replay_share=0.3")
    from xalign.data.build import read_sources

    src = read_sources(cfg, None)
    tokenizer = byte_tokenizer([p["src"] for p in src.pairs] + [p["tgt"] for p in src.pairs])
    data = build_alignment_data(cfg, tokenizer, None)
    replay = [ex for ex in data.lm_examples if ex["kind"] == "replay"]
    assert data.stats["lm"]["replay"] == len(replay) == round(0.3 * 16)
    pivot_sides = {p["src"] for p in src.pairs}
    for ex in replay:
        text = tokenizer.decode(ex["input_ids"], skip_special_tokens=True)
        assert text.strip() in pivot_sides


def test_alignment_by_pair_scores_each_language_against_its_own_pivot_rows():
    import torch

    from xalign.eval.representations import Embeddings, alignment_by_pair

    torch.manual_seed(0)
    layers, n, hidden = 3, 6, 8
    en_de, en_fr = torch.randn(layers, n, hidden), torch.randn(layers, n, hidden)
    de = en_de + 0.01 * torch.randn(layers, n, hidden)          # row i translates row i of en_de
    fr = en_de.clone()                                          # matches the OTHER pair's English
    emb = Embeddings({"en>de": en_de, "de": de, "en>fr": en_fr, "fr": fr})
    out = alignment_by_pair(emb, {"de": "en>de", "fr": "en>fr"}, pivot="en", layer=2)
    assert out["align/retrieval/de/top1"] == 1.0 and out["align/mexa/de"] == 1.0
    assert out["align/retrieval/fr/top1"] < 1.0
    assert out["align/mexa"] == (out["align/mexa/de"] + out["align/mexa/fr"]) / 2
    assert "align/mexa/de/layer0" in out
