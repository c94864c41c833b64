"""Real data through the training-data path: the PAWS-X and XCOPA samples of
../shared/data/real (or $XALIGN_REAL_DATA) as translation pairs (PAWS-X rows are parallel
across languages by `id`, XCOPA items by `idx` with English COPA), Bactrian-X-shaped
instruction files per language, the data cache, bad input, streaming. Tests that need the
real samples skip when the folder is absent; its files are read in place, never copied into
the repository. Seconds in all: a byte-level BPE trained here on the test texts, no model
download."""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from pathlib import Path

import pytest

from xalign.config import ConfigError, RunConfig, flatten, from_overrides
from xalign.config.schema import SourceConfig
from xalign.data import build_alignment_data, mix_metrics
from xalign.data.sources import SourceError, load_source
from xalign.errors import XalignError
from xalign.data.collate import IGNORE_INDEX

REPO = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("XALIGN_REAL_DATA", REPO.parent / "shared" / "data" / "real"))
needs_real = pytest.mark.skipif(not (REAL / "pawsx").is_dir() or not (REAL / "xcopa").is_dir(),
                                reason=f"the real data samples are not at {REAL} (set XALIGN_REAL_DATA)")
PAWSX = ("de", "fr", "zh")
XCOPA = ("vi", "zh")


# --- helpers: real files -> the formats xalign reads ----------------------------------------

def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_tsv(path: Path) -> dict[str, dict]:
    """A PAWS-X TSV by id (no quote handling: sentences contain quotes)."""
    with open(path, encoding="utf-8", newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}


def read_xcopa(lang: str) -> dict[str, dict]:
    path = REAL / "xcopa" / ("en/test.jsonl" if lang == "en" else f"data/{lang}/test.{lang}.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {str(row["idx"]): row for row in rows}


def real_pairs(out: Path, *, pawsx=PAWSX, xcopa=XCOPA, split: str = "dev_2k") -> Path:
    """src/tgt/src_lang/tgt_lang JSONL: PAWS-X sentence1 of en vs the same id in each
    language; XCOPA premise and choices of English COPA vs the same idx in each language."""
    rows = []
    en = read_tsv(REAL / "pawsx" / "en" / f"{split}.tsv")
    for lang in pawsx:
        other = read_tsv(REAL / "pawsx" / lang / f"{split}.tsv")
        rows += [{"src": en[i]["sentence1"], "tgt": other[i]["sentence1"], "src_lang": "en", "tgt_lang": lang}
                 for i in sorted(set(en) & set(other))]
    en_copa = read_xcopa("en")
    for lang in xcopa:
        other = read_xcopa(lang)
        rows += [{"src": en_copa[i][field], "tgt": other[i][field], "src_lang": "en", "tgt_lang": lang}
                 for i in sorted(set(en_copa) & set(other)) for field in ("premise", "choice1", "choice2")]
    return write_jsonl(out / "pairs.jsonl", rows)


def real_instructions(out: Path, langs, *, items: int = 300) -> Path:
    """Bactrian-X-shaped files ({lang}.jsonl: id, instruction, input, output), parallel by
    id: PAWS-X dev rows, the input the row's sentence1, the output its sentence2 (so every
    response really is in its file's language)."""
    for lang in langs:
        rows = list(read_tsv(REAL / "pawsx" / lang / "dev_2k.tsv").values())[:items]
        write_jsonl(out / f"{lang}.jsonl", [{"id": r["id"], "instruction": "Rewrite the sentence.",
                                             "input": r["sentence1"], "output": r["sentence2"]} for r in rows])
    return out / "{lang}.jsonl"


def byte_bpe(texts, vocab_size: int = 1200):
    """A lossless byte-level BPE tokenizer trained here (decode(encode(x)) == x)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def texts_by_language(files: dict[str, Path]) -> dict[str, set]:
    """Every text of the real files by language: instruction outputs and pair sides."""
    out: dict[str, set] = {}
    for path in files.values():
        for row in (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()):
            if "output" in row:
                out.setdefault(path.stem, set()).add(row["output"])
            else:
                out.setdefault(row["src_lang"], set()).add(row["src"])
                out.setdefault(row["tgt_lang"], set()).add(row["tgt"])
    return out


def response_text(tokenizer, example: dict) -> str:
    """The trained part of an LM example (labels not masked), without its EOS."""
    ids = [t for t in example["labels"][1:] if t != IGNORE_INDEX]
    assert ids[-1] == tokenizer.eos_token_id
    return tokenizer.decode(ids[:-1])


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    """(folder, pairs.jsonl, instruction pattern) made from the real samples."""
    if not (REAL / "pawsx").is_dir() or not (REAL / "xcopa").is_dir():
        pytest.skip(f"the real data samples are not at {REAL}")
    out = tmp_path_factory.mktemp("real")
    pairs = real_pairs(out)
    pattern = real_instructions(out / "instructions", ["en", *PAWSX])
    return out, pairs, pattern


@pytest.fixture(scope="module")
def tokenizer(real_files):
    out, pairs, _ = real_files
    texts = [t for texts in texts_by_language({"pairs": pairs, **{p.stem: p for p in (out / "instructions").glob("*.jsonl")}}).values()
             for t in texts]
    return byte_bpe(sorted(texts))


def real_config(real_files, *extra: str, languages=PAWSX) -> RunConfig:
    _, pairs, pattern = real_files
    return from_overrides(RunConfig, [f"data.pairs.path={pairs}", f"data.instructions.path={pattern}",
                                      "data.pivot=en", f"data.languages=[{','.join(languages)}]",
                                      "data.max_length=128", *extra])


# --- the same run on the world or on real files --------------------------------------------

@needs_real
def test_the_same_run_trains_on_the_world_or_on_real_files_changing_only_the_data_section(
        tiny_world, tiny_world_overrides, real_files):
    import torch

    from xalign.optim import Dist
    from xalign.train.setup import setup_run

    _, world_dir = tiny_world
    _, pairs, pattern = real_files
    common = [f"data.world.{o}" for o in tiny_world_overrides] + [
        "data.max_length=64", "optim.batch_size=4", "optim.max_steps=2", "objective.layer=0.5",
        "objective.pooler=mean", "data.mix.repeat=1"]
    on_world = from_overrides(RunConfig, common)
    on_real = from_overrides(RunConfig, common + [f"data.pairs.path={pairs}", f"data.instructions.path={pattern}",
                                                  "data.pivot=en", "data.languages=[de,zh]"])
    changed = {k for k, v in flatten(on_real).items() if flatten(on_world).get(k) != v}
    assert changed and all(k.startswith("data.") for k in changed), changed
    for cfg, langs in ((on_world, None), (on_real, {"de", "zh"})):
        run = setup_run(cfg, str(world_dir), Dist(), torch.device("cpu"))
        assert len(run.data.pairs.src) > 0 and len(run.data.lm_examples) > 0
        if langs:
            assert set(run.data.pairs.langs) == langs
            assert run.data.stats["pairs"]["en-de"] > 1000            # the real PAWS-X rows, not the world's
        assert all(math.isfinite(v) for v in run.step(0).values() if isinstance(v, float))


# --- the realised mix -------------------------------------------------------------------------

def within(share: float, expected: float, n: int, sigmas: float = 4.0) -> bool:
    return abs(share - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n) + 1e-9


@needs_real
def test_realised_mix_shares_match_the_mix_within_sampling_error(real_files, tokenizer):
    data = build_alignment_data(real_config(real_files, "data.mix.alpha=0", "data.mix.pair_weights={de: 2}",
                                            "data.mix.cross_probability=0"), tokenizer, None)
    total = len(data.pairs.src)
    counts = Counter(data.pairs.langs)
    for lang, weight in (("de", 2), ("fr", 1), ("zh", 1)):            # quotas: exact up to rounding
        assert abs(counts[lang] - total * weight / 4) <= 1, counts
        assert data.stats["pair_shares"][f"en-{lang}"] == pytest.approx(weight / 4, abs=1 / total)
    # Instruction languages are drawn: de has weight 2 of 5 (en, de, fr, zh), within sampling error.
    examples = [ex for ex in data.lm_examples if ex["kind"] == "instruction"]
    share_de = sum(ex["src_lang"] == "de" for ex in examples) / len(examples)
    assert within(share_de, 2 / 5, len(examples)), share_de
    assert mix_metrics(data.stats)["data/pair_share/en-de"] == pytest.approx(0.5, abs=1 / total)


@needs_real
def test_cross_probability_half_gives_about_half_cross_lingual_samples(real_files, tokenizer):
    data = build_alignment_data(real_config(real_files, "data.mix.cross_probability=0.5"), tokenizer, None)
    examples = [ex for ex in data.lm_examples if ex["kind"] == "instruction"]
    assert len(examples) == 300 * 3                                      # items x repeat
    cross = sum(ex["src_lang"] != ex["tgt_lang"] for ex in examples) / len(examples)
    assert within(cross, 0.5, len(examples)), cross
    stats = data.stats["instructions"]
    assert sum(n for d, n in stats.items() if d.split("->")[0] != d.split("->")[1]) == round(cross * len(examples))


@needs_real
def test_no_response_is_in_the_wrong_language(real_files, tokenizer):
    """Every trained response (instruction or translation sample) is a text of its target
    language's file; prompts ask for that language by name."""
    out, pairs, _ = real_files
    data = build_alignment_data(real_config(real_files, "data.mix.translation_share=0.3", "data.mix.cross_probability=0.5"),
                                tokenizer, None)
    texts = texts_by_language({"pairs": pairs, **{p.stem: p for p in (out / "instructions").glob("*.jsonl")}})
    names = {"en": "English", "de": "German", "fr": "French", "zh": "Chinese"}
    kinds = Counter()
    for ex in data.lm_examples:
        kinds[ex["kind"]] += 1
        response = response_text(tokenizer, ex)
        assert response.startswith(" ") and response[1:] in texts[ex["tgt_lang"]], (ex["tgt_lang"], response)
        prompt = tokenizer.decode([t for t, label in zip(ex["input_ids"], ex["labels"]) if label == IGNORE_INDEX])
        word = "Answer in" if ex["kind"] == "instruction" else "Translate into"
        assert prompt.rstrip().endswith(f"{word} {names[ex['tgt_lang']]}:"), prompt
    assert kinds["translation"] == round(0.3 * 900) and kinds["instruction"] == 900 - kinds["translation"]


# --- the data cache -----------------------------------------------------------------------------

@needs_real
def test_the_data_cache_hits_on_the_same_inputs_and_misses_on_any_change(real_files, tokenizer, tmp_path):
    small = ("seed=7", "data.pairs.max_rows=600", "data.instructions.max_rows=100")   # a small build: many are made
    cfg = real_config(real_files, *small)
    first = build_alignment_data(cfg, tokenizer, None)
    again = build_alignment_data(cfg, tokenizer, None)
    assert first.cache["hit"] is False and again.cache["hit"] is True and again.cache["path"] == first.cache["path"]
    assert Path(again.cache["path"]).is_relative_to(Path(os.environ["XALIGN_HOME"]) / "cache" / "data")
    assert (again.pairs.src, again.pairs.tgt, again.pairs.langs, again.lm_examples, again.stats) == \
           (first.pairs.src, first.pairs.tgt, first.pairs.langs, first.lm_examples, first.stats)

    def hit(c, tok=tokenizer) -> bool:
        return build_alignment_data(c, tok, None).cache["hit"]

    for change in ("seed=8", "data.max_length=96", "data.mix.cross_probability=0.25", "data.mix.alpha=0.5",
                   "data.languages=[de,fr]", "data.language_names={de: Deutsch}"):
        assert not hit(real_config(real_files, *small, change)), change
    assert not hit(cfg, byte_bpe(["a different tokenizer", "trained on other text"], vocab_size=300))
    assert hit(real_config(real_files, *small, "data.pack=true"))          # collation only: same data
    # The same content elsewhere hits (content, not paths, is the key); changed content misses.
    _, pairs, pattern = real_files
    moved = tmp_path / "moved"
    for lang in ("en", *PAWSX):
        write_jsonl(moved / f"{lang}.jsonl", [json.loads(x) for x in Path(str(pattern).format(lang=lang)).read_text(
            encoding="utf-8").splitlines()])
    (moved / "pairs.jsonl").write_bytes(pairs.read_bytes())
    relocated = from_overrides(RunConfig, [f"data.pairs.path={moved}/pairs.jsonl", f"data.instructions.path={moved}/{{lang}}.jsonl",
                                           "data.pivot=en", "data.languages=[de,fr,zh]", "data.max_length=128", *small])
    assert hit(relocated)
    with open(moved / "pairs.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"src": "One more.", "tgt": "Noch einer.", "src_lang": "en", "tgt_lang": "de"}) + "\n")
    assert not hit(relocated)
    assert build_alignment_data(real_config(real_files, *small, "data.cache=false"), tokenizer, None).cache is None


def test_the_world_data_is_cached_too(tiny_world, tiny_world_overrides):
    from transformers import AutoTokenizer

    _, world_dir = tiny_world
    tok = AutoTokenizer.from_pretrained(str(world_dir / "tokenizer"))
    cfg = from_overrides(RunConfig, [f"data.world.{o}" for o in tiny_world_overrides] + ["data.max_length=64", "seed=3"])
    first, second = build_alignment_data(cfg, tok, world_dir), build_alignment_data(cfg, tok, world_dir)
    assert (first.cache["hit"], second.cache["hit"]) == (False, True)
    assert second.lm_examples == first.lm_examples and second.pairs.src == first.pairs.src


# --- bad input: clear errors before training ----------------------------------------------------

PAIR = {"src": "Hello.", "tgt": "Hallo.", "src_lang": "en", "tgt_lang": "de"}


def pairs_source(path: Path, **extra) -> SourceConfig:
    return SourceConfig(path=str(path), **extra)


def load_pairs(path: Path, **extra):
    return load_source(pairs_source(path, **extra), required=("src", "tgt", "src_lang", "tgt_lang"), key="data.pairs")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"`path` does not exist: '.*/nowhere.jsonl'"):
        from_overrides(RunConfig, [f"data.pairs.path={tmp_path}/nowhere.jsonl", "data.pivot=en", "data.languages=[de]"])
    write_jsonl(tmp_path / "en.jsonl", [{"id": "1", "instruction": "a", "input": "", "output": "b"}])
    src = SourceConfig(path=f"{tmp_path}/{{lang}}.jsonl")
    with pytest.raises(SourceError, match=r"data.instructions.path: no file matches '.*/de.jsonl' for language 'de': "
                                          r"it does not exist \(.* holds en.jsonl\)"):
        load_source(src, required=("id",), lang="de", key="data.instructions")


def test_a_hub_id_offline_says_so_and_shows_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError) as info:
        load_source(SourceConfig(hub="xalign-tests/no-such-dataset", name="{lang}"), required=("id",), lang="en",
                    key="data.instructions")
    text = str(info.value)
    assert "data.instructions.hub: cannot load hub dataset 'xalign-tests/no-such-dataset' (name='en'" in text
    assert "HF_HUB_OFFLINE=1" in text and "point `path:` at them" in text and "{lang}.jsonl" in text
    assert isinstance(info.value, XalignError)


def test_a_missing_column_names_the_columns_that_exist(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"source": "Hello.", "target": "Hallo.", "src_lang": "en", "tgt_lang": "de"}])
    with pytest.raises(SourceError, match=r"data.pairs: .*pairs.jsonl \(line 1\) has no column \['src', 'tgt'\]; it has "
                                          r"\['source', 'target', 'src_lang', 'tgt_lang'\]. Map them with data.pairs.columns"):
        load_pairs(path)
    assert load_pairs(path, columns={"src": "source", "tgt": "target"})[0]["tgt"] == "Hallo."
    with pytest.raises(SourceError, match=r"data.pairs.columns: .* has no column \['sentence1'\]; it has"):
        load_pairs(path, columns={"src": "sentence1", "tgt": "target"})


def test_malformed_lines_are_named_by_file_and_line_and_can_be_skipped_and_counted(tmp_path, tiny_world,
                                                                                  tiny_world_overrides):
    lines = [json.dumps(PAIR), json.dumps({**PAIR, "src": "Bye."}), '{"src": "broken', "[1, 2]",
             json.dumps({**PAIR, "src": "Thanks."})]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SourceError, match=rf"{path}:3: not valid JSON \(Unterminated string.*\); expected one JSON "
                                          r"object per line. Fix the line, or set `data.pairs.max_bad_lines`"):
        load_pairs(path)
    with pytest.raises(SourceError, match=rf"{path}:4: a JSON list, expected one JSON object per line \(1 earlier "
                                          r"malformed line\(s\) were skipped"):
        load_pairs(path, max_bad_lines=1)
    rows = load_pairs(path, max_bad_lines=2)
    assert [r["src"] for r in rows] == ["Hello.", "Bye.", "Thanks."] and rows.bad_lines == 2
    # A TSV line with a wrong number of fields; quotes are text, not quoting.
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text('src\ttgt\tsrc_lang\ttgt_lang\n"Hi," she said.\t"Hallo", sagte sie.\ten\tde\nonly\ttwo\n',
                   encoding="utf-8")
    with pytest.raises(SourceError, match=rf"{tsv}:3: 2 tab-separated fields, expected 4 as in the header "
                                          r"\(src, tgt, src_lang, tgt_lang\)"):
        load_pairs(tsv)
    assert load_pairs(tsv, max_bad_lines=1)[0] == {"src": '"Hi," she said.', "tgt": '"Hallo", sagte sie.',
                                                     "src_lang": "en", "tgt_lang": "de"}
    # The count reaches the run's data stats and metrics.
    from transformers import AutoTokenizer

    _, world_dir = tiny_world
    rows = [json.loads(r) for r in (world_dir / "pairs/train/qaa-qab.jsonl").read_text().splitlines()[:30]]
    bad = tmp_path / "world_pairs.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows[:10]) + "not json\n"
                   + "".join(json.dumps(r) + "\n" for r in rows[10:]), encoding="utf-8")
    cfg = from_overrides(RunConfig, [f"data.world.{o}" for o in tiny_world_overrides]
                         + [f"data.pairs.path={bad}", "data.pairs.max_bad_lines=3", "data.pivot=qaa",
                            "data.languages=[qab]", "data.max_length=64"])
    data = build_alignment_data(cfg, AutoTokenizer.from_pretrained(str(world_dir / "tokenizer")), world_dir)
    assert data.stats["bad_lines"] == {"pairs": 1} and data.stats["pairs_read"] == {"qaa-qab": 30}
    assert mix_metrics(data.stats)["data/bad_lines/pairs"] == 1.0


def test_text_that_is_not_utf8_is_named_by_file_and_byte_offset(tmp_path):
    path = tmp_path / "pairs.jsonl"
    head = (json.dumps(PAIR) + "\n").encode()
    path.write_bytes(head + json.dumps({**PAIR, "tgt": "Grüße"}, ensure_ascii=False).encode("latin-1") + b"\n")
    offset = len(head) + (json.dumps({**PAIR, "tgt": "Grüße"}, ensure_ascii=False).index("ü"))
    with pytest.raises(SourceError, match=rf"{path}:2: not UTF-8: byte offset {offset} \(0xfc, column \d+ of the "
                                          r"line\) cannot be decoded; save the file as UTF-8"):
        load_pairs(path)
    assert load_pairs(path, max_bad_lines=1).bad_lines == 1


@needs_real
def test_a_language_without_an_english_name_asks_for_data_language_names(real_files, tokenizer, tmp_path):
    """XCOPA's Quechua (qu) is no Bactrian-X language: the prompt needs its name from the config."""
    en_copa, qu = read_xcopa("en"), read_xcopa("qu")
    for lang, rows in (("en", en_copa), ("qu", qu)):
        write_jsonl(tmp_path / f"{lang}.jsonl", [{"id": i, "instruction": "Continue.", "input": r["premise"],
                                                  "output": r["choice1"]} for i, r in sorted(rows.items())[:50]])
    base = [f"data.instructions.path={tmp_path}/{{lang}}.jsonl", "data.pivot=en", "data.languages=[qu]",
            "data.max_length=128", "data.mix.cross_probability=1", "data.mix.repeat=1"]
    with pytest.raises(SourceError, match=r"data.languages: no English name is known for \['qu'\].*name them in the "
                                          r"config: data.language_names: \{qu: <English name>\}"):
        build_alignment_data(from_overrides(RunConfig, base), tokenizer, None)
    data = build_alignment_data(from_overrides(RunConfig, base + ["data.language_names={qu: Quechua}"]), tokenizer, None)
    to_qu = [ex for ex in data.lm_examples if ex["tgt_lang"] == "qu"]
    assert to_qu and all(tokenizer.decode(ex["input_ids"]).split(":")[0].endswith("Answer in Quechua") for ex in to_qu)


def test_bad_sources_fail_in_the_driver_before_any_worker_starts(tiny_world, tmp_path):
    from xalign.train.driver import prepare_data

    _, world_dir = tiny_world
    write_jsonl(tmp_path / "en.jsonl", [{"id": "1", "instruction": "a", "input": "", "output": "b"}])
    cfg = from_overrides(RunConfig, [f"data.instructions.path={tmp_path}/{{lang}}.jsonl", "data.pivot=en",
                                     "data.languages=[de]"])
    with pytest.raises(SourceError, match="no file matches .*de.jsonl"):
        prepare_data(cfg, world_dir)       # in the driver: before Ray and its workers start


# --- streaming and max_rows -----------------------------------------------------------------------

def test_max_rows_stops_reading_before_the_rest_of_the_file(tmp_path):
    rows = [{**PAIR, "src": f"Sentence {i}."} for i in range(300)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write("this line is never read\n")
    got = load_pairs(path, streaming=True, max_rows=100)
    assert [r["src"] for r in got] == [f"Sentence {i}." for i in range(100)]
    with pytest.raises(SourceError, match=":301: not valid JSON"):
        load_pairs(path, streaming=True)


def test_parquet_and_save_to_disk_sources_stream_with_max_rows(tmp_path):
    import datasets

    rows = [{**PAIR, "src": f"Sentence {i}.", "extra": i} for i in range(1000)]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "pairs.parquet"))
    ds.save_to_disk(str(tmp_path / "pairs_disk"))
    for extra in ({"streaming": True, "max_rows": 50}, {"max_rows": 50}):
        got = load_pairs(tmp_path / "pairs.parquet", **extra)
        assert [r["src"] for r in got] == [f"Sentence {i}." for i in range(50)] and set(got[0]) == {
            "src", "tgt", "src_lang", "tgt_lang"}
        assert len(load_pairs(tmp_path / "pairs_disk", format="disk", **extra)) == 50
    assert len(load_pairs(tmp_path / "pairs.parquet", streaming=True)) == 1000
    with pytest.raises(SourceError, match=r"pairs.parquet has no column \['nope'\]; it has \['src', 'tgt', 'src_lang', "
                                          r"'tgt_lang', 'extra'\]"):
        load_source(pairs_source(tmp_path / "pairs.parquet", streaming=True), required=("src", "nope"), key="data.pairs")


@needs_real
def test_streamed_capped_real_pairs_build_training_data(real_files, tokenizer):
    data = build_alignment_data(real_config(real_files, "data.pairs.streaming=true", "data.pairs.max_rows=500",
                                            "data.instructions.max_rows=100"), tokenizer, None)
    assert sum(data.stats["pairs_read"].values()) == 500
    assert len([ex for ex in data.lm_examples if ex["kind"] == "instruction"]) == 100 * 3


@needs_real
def test_pawsx_tsv_is_read_exactly_as_written():
    """PAWS-X sentences contain quotes; a quoting CSV reader would alter them."""
    path = REAL / "pawsx" / "fr" / "dev_2k.tsv"
    rows = load_source(SourceConfig(path=str(path), columns={"src": "sentence1", "tgt": "sentence2"}),
                       required=("id", "src", "tgt"), key="data.pairs")
    raw = [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    assert len(rows) == len(raw) == 2000
    assert [(r["id"], r["src"], r["tgt"]) for r in rows] == [(x[0], x[1], x[2]) for x in raw]
    assert any('"' in r["src"] for r in rows)
