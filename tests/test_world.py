"""The synthetic world: formats, leakage rules, determinism, reuse and errors."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pydantic
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from xalign.synthetic import (WorldConfig, WorldError, build_world,  # noqa: E402
                              content_hash, load_manifest)
from xalign.synthetic.lexicon import PUNCTUATION, SCRIPTS  # noqa: E402

SMALL = {"corpus": {"tokens": 200_000}}
TINY = {"corpus": {"tokens": 5_000},
        "pairs": {"train_per_language": 50, "heldout_per_language": 20},
        "instructions": {"items": 40}, "tasks": {"dev_items": 10, "test_items": 20}}


def config(overrides: dict, **top) -> WorldConfig:
    return WorldConfig.model_validate({**overrides, **top})


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def instruction_texts(world: Path, code: str) -> list[str]:
    """Each instruction item as one text: instruction, input and output."""
    return [" ".join([r["instruction"], r["input"], r["output"]])
            for r in read_jsonl(world / "instructions" / f"{code}.jsonl")]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(config(SMALL), tmp_path_factory.mktemp("w") / "world").path


@pytest.fixture(scope="module")
def manifest(world) -> dict:
    return load_manifest(world)


@pytest.fixture(scope="module")
def lexicon(world) -> dict:
    return json.loads((world / "lexicon.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def facts(world) -> list[dict]:
    return json.loads((world / "facts.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def codes(manifest) -> list[str]:
    return [lang["code"] for lang in manifest["languages"]]


def test_languages_codes_scripts_and_word_orders(manifest, world, lexicon):
    langs = manifest["languages"]
    assert [lang["code"] for lang in langs] == ["qaa", "qab", "qac", "qad"]
    assert [(lang["script"], lang["order"]) for lang in langs] == [
        ("Latin", "SVO"), ("Latin", "SVO"), ("Greek", "SVO"), ("Latin", "SOV")]
    assert manifest["pivot"] == "qaa"
    assert [lang["is_pivot"] for lang in langs] == [True, False, False, False]
    assert langs[2]["name_in_itself"] == lexicon["language_qac"]["qac"]
    greek = set(SCRIPTS["Greek"].values())
    assert all(ch in greek for word in lexicon["city_00"]["qac"] for ch in word)
    assert all(len(set(table.values())) == len(table) for table in SCRIPTS.values())


def test_word_order_of_facts(world, lexicon, facts):
    """The verb-final language says NAME VALUE REL, the pivot NAME REL VALUE."""
    anchor = [f for f in facts if f["status"] == "anchor"]
    for code, order in (("qaa", "svo"), ("qad", "sov")):
        text = (world / "corpus" / f"{code}.txt").read_text(encoding="utf-8")
        found = {"svo": 0, "sov": 0}
        for f in anchor:
            rel, value = lexicon[f["relation"]][code], lexicon[f["value"]][code]
            found["svo"] += f" {f['person']} {rel} {value} . " in text
            found["sov"] += f" {f['person']} {value} {rel} . " in text
        assert found[order] > 0 and found["svo" if order == "sov" else "sov"] == 0


def test_vocabularies_disjoint_except_names_and_punctuation(world, codes, facts):
    names = {f["person"] for f in facts}
    vocab = {}
    for code in codes:
        words = set((world / "corpus" / f"{code}.txt").read_text(encoding="utf-8").split())
        for text in instruction_texts(world, code):
            words.update(text.split())
        vocab[code] = words - names - set(PUNCTUATION)
    for i, a in enumerate(codes):
        for b in codes[i + 1:]:
            assert not vocab[a] & vocab[b], (a, b, sorted(vocab[a] & vocab[b])[:5])


def test_lexicon_words_unique_across_languages(lexicon):
    words = [w for concept, forms in lexicon.items() if not concept.startswith("person_")
             for w in forms.values()]
    assert len(words) == len(set(words))


def test_realised_corpus_shares_close_to_configured(world, manifest, codes):
    corpus = manifest["parts"]["corpus"]
    for code in codes:
        text = (world / "corpus" / f"{code}.txt").read_text(encoding="utf-8")
        assert len(text.split()) == corpus["tokens"][code]
        assert abs(corpus["shares"][code] - corpus["configured_shares"][code]) < 0.005
        lines = text.splitlines()
        assert all(line.endswith(" .") for line in lines)
    assert corpus["configured_shares"]["qaa"] == 0.85
    assert abs(sum(corpus["tokens"].values()) - 200_000) < 200


def test_pairs_have_exactly_four_columns_and_pivot_source(world, codes):
    for code in codes[1:]:
        for split in ("train", "heldout"):
            rows = read_jsonl(world / "pairs" / split / f"qaa-{code}.jsonl")
            assert rows and all(sorted(r) == ["src", "src_lang", "tgt", "tgt_lang"] for r in rows)
            assert {(r["src_lang"], r["tgt_lang"]) for r in rows} == {("qaa", code)}
    assert not (world / "pairs" / "train" / "qaa-qaa.jsonl").exists()


def test_heldout_parallel_across_languages_and_disjoint_from_train(world, codes):
    heldout = {c: read_jsonl(world / "pairs" / "heldout" / f"qaa-{c}.jsonl") for c in codes[1:]}
    sources = [[r["src"] for r in rows] for rows in heldout.values()]
    assert len(sources[0]) == 500 and len(set(sources[0])) == 500
    assert all(s == sources[0] for s in sources)
    for code in codes[1:]:
        train = {r["src"] for r in read_jsonl(world / "pairs" / "train" / f"qaa-{code}.jsonl")}
        assert len(train) == 5000 and not train & set(sources[0])


def test_instruction_items_parallel_by_id(world, codes):
    rows = {c: read_jsonl(world / "instructions" / f"{c}.jsonl") for c in codes}
    ids = [r["id"] for r in rows["qaa"]]
    assert len(ids) == 2000 and len(set(ids)) == 2000
    for code in codes:
        assert [r["id"] for r in rows[code]] == ids
        assert all(sorted(r) == ["id", "input", "instruction", "output"] for r in rows[code])
    assert rows["qaa"][0]["output"] != rows["qab"][0]["output"]


def fact_mentions(units: list[str], triples: set[tuple[str, str, str]], names: set[str]) -> int:
    """How many units mention a (name, relation word, value word) triple together."""
    by_name: dict[str, list[tuple[str, str]]] = {}
    for name, rel, value in triples:
        by_name.setdefault(name, []).append((rel, value))
    hits = 0
    for unit in units:
        tokens = set(unit.split())
        for name in tokens & names:
            hits += any(rel in tokens and value in tokens for rel, value in by_name.get(name, ()))
    return hits


def sentences(text: str) -> list[str]:
    return text.replace(" ? ", " ?\n").replace(" . ", " .\n").splitlines()


def test_pivot_only_facts_never_stated_outside_the_pivot(world, codes, lexicon, facts):
    names = {f["person"] for f in facts}
    pivot_only = [f for f in facts if f["status"] == "pivot_only"]
    assert len(pivot_only) == 600

    def triples(code):
        return {(f["person"], lexicon[f["relation"]][code], lexicon[f["value"]][code])
                for f in pivot_only}

    pivot_text = (world / "corpus" / "qaa.txt").read_text(encoding="utf-8")
    assert fact_mentions(sentences(pivot_text), triples("qaa"), names) > 1000  # the check bites
    for code in codes[1:]:
        units = sentences((world / "corpus" / f"{code}.txt").read_text(encoding="utf-8"))
        units += [r["tgt"] for split in ("train", "heldout")
                  for r in read_jsonl(world / "pairs" / split / f"qaa-{code}.jsonl")]
        units += instruction_texts(world, code)
        assert fact_mentions(units, triples(code), names) == 0, code
    pivot_side = [r["src"] for r in read_jsonl(world / "pairs" / "train" / "qaa-qab.jsonl")]
    pivot_side += instruction_texts(world, "qaa")
    assert fact_mentions(pivot_side, triples("qaa"), names) == 0


def test_pawsx_files(world, codes, manifest):
    per_lang = {}
    for code in codes:
        for split, n in (("dev", 100), ("test", 500)):
            path = world / "tasks" / "pawsx" / code / f"{split}.tsv"
            lines = path.read_text(encoding="utf-8").splitlines()
            assert lines[0] == "id\tsentence1\tsentence2\tlabel" and len(lines) == n + 1
            rows = [line.split("\t") for line in lines[1:]]
            assert all(len(r) == 4 and r[1] != r[2] for r in rows)
            labels = [int(r[3]) for r in rows]
            assert set(labels) == {0, 1} and abs(sum(labels) / n - 0.5) <= 0.01
            per_lang[code, split] = labels
    assert all(per_lang[c, "test"] == per_lang["qaa", "test"] for c in codes)
    assert manifest["tasks"]["pawsx"]["test"] == {"items": 500, "stderr_at_p50": 0.0224}


def test_xcopa_files(world, codes):
    first = None
    for code in codes:
        rows = read_jsonl(world / "tasks" / "xcopa" / code / "test.jsonl")
        assert len(rows) == 500
        assert all(sorted(r) == ["choice1", "choice2", "idx", "label", "premise", "question"]
                   for r in rows)
        assert all(r["question"] in ("cause", "effect") and r["label"] in (0, 1)
                   and r["choice1"] != r["choice2"] for r in rows)
        # the wrong choice is done by the same person as the right one
        assert all(r["choice1"].split()[0] == r["choice2"].split()[0] == r["premise"].split()[0]
                   for r in rows)
        assert abs(sum(r["label"] for r in rows) / 500 - 0.5) <= 0.01
        keys = [(r["idx"], r["question"], r["label"]) for r in rows]
        assert first is None or keys == first
        first = keys


def test_fact_task_asks_pivot_only_facts_with_distinct_options(world, codes, lexicon, facts):
    status = {(f["person"], f["relation"]): f for f in facts}
    first = None
    for code in codes:
        for split, n in (("dev", 100), ("test", 500)):
            rows = read_jsonl(world / "tasks" / "facts" / code / f"{split}.jsonl")
            assert len(rows) == n
            for r in rows:
                fact = status[r["person"], r["relation"]]
                assert fact["status"] == "pivot_only"
                assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
                assert r["choices"][r["label"]] == lexicon[fact["value"]][code]
                assert r["question"].endswith(" ?") and r["person"] in r["question"].split()
            counts = Counter(r["label"] for r in rows)
            assert set(counts) == {0, 1, 2, 3} and max(counts.values()) - min(counts.values()) <= 1
            if split == "test":
                keys = [(r["person"], r["relation"], r["label"]) for r in rows]
                assert first is None or keys == first
                first = keys


def test_tokenizer_loads_offline_and_covers_every_language(world, manifest, codes):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert len(tok) == manifest["parts"]["tokenizer"]["vocab_size"]
    for code in codes:
        texts = (world / "corpus" / f"{code}.txt").read_text(encoding="utf-8").splitlines()[:50]
        texts += instruction_texts(world, code)[:50]
        texts += [" ".join([r["question"], *r["choices"]])
                  for r in read_jsonl(world / "tasks" / "facts" / code / "dev.jsonl")]
        for text in texts:
            ids = tok(text)["input_ids"]
            assert tok.unk_token_id not in ids and ids[0] != tok.bos_token_id
            assert tok.decode(ids) == text


def test_same_seed_is_byte_identical_other_seed_differs(world, tmp_path):
    again = build_world(config(SMALL), tmp_path / "again")
    assert not again.reused and file_hashes(again.path) == file_hashes(world)
    other = file_hashes(build_world(config(SMALL, seed=1), tmp_path / "other").path)
    assert other.keys() == file_hashes(world).keys()
    assert other["corpus/qaa.txt"] != file_hashes(world)["corpus/qaa.txt"]
    assert other["manifest.json"] != file_hashes(world)["manifest.json"]


def test_existing_world_is_reused_untouched(world):
    before = {p: p.stat().st_mtime_ns for p in world.rglob("*")}
    result = build_world(config(SMALL), world)
    assert result.reused and result.manifest == load_manifest(world)
    assert {p: p.stat().st_mtime_ns for p in world.rglob("*")} == before


def test_default_directory_is_named_by_content_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("XALIGN_HOME", str(tmp_path))
    cfg = config(TINY)
    first = build_world(cfg)
    assert first.path == tmp_path / "worlds" / content_hash(cfg)[:16] and not first.reused
    assert first.manifest["content_hash"] == content_hash(cfg)
    assert build_world(cfg).reused
    assert [p.name for p in (tmp_path / "worlds").iterdir()] == [first.path.name]


def test_extra_stage_appends_a_part(tmp_path):
    def base_model(world_dir: Path, cfg: WorldConfig) -> dict:
        (world_dir / "base_model").mkdir()
        (world_dir / "base_model" / "weights.bin").write_bytes(b"\0" * 8)
        return {"parameters": 8}

    result = build_world(config(TINY), tmp_path / "w", extra_stages=[("base_model", base_model)])
    part = result.manifest["parts"]["base_model"]
    assert part["parameters"] == 8 and list(part["files"]) == ["base_model/weights.bin"]
    assert result.manifest["stages"][-1] == "base_model"
    assert result.manifest["content_hash"] != content_hash(config(TINY))


def test_failed_build_leaves_nothing(tmp_path):
    def broken(world_dir: Path, cfg: WorldConfig) -> dict:
        raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError, match="stage failed"):
        build_world(config(TINY), tmp_path / "w", extra_stages=[("broken", broken)])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("what", ["file", "foreign dir", "other world"])
def test_occupied_out_raises_and_writes_nothing(tmp_path, what):
    out = tmp_path / "w"
    if what == "file":
        out.write_text("keep me")
    elif what == "foreign dir":
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    else:
        build_world(config(TINY, seed=5), out)
    before = file_hashes(tmp_path)
    with pytest.raises(WorldError, match=str(out)):
        build_world(config(TINY), out)
    assert file_hashes(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["w"]


@pytest.mark.parametrize("overrides, key", [
    ({"languages": 0}, "languages"),
    ({"languages": 1}, "languages"),
    ({"corpus": {"pivot_share": 1.5}}, "corpus.pivot_share"),
    ({"corpus": {"shares": [0.5, 0.2, 0.2, 0.05]}}, "corpus.shares"),
    ({"corpus": {"shares": [0.5, 0.5]}}, "corpus.shares"),
    ({"facts": {"people": 40, "anchor_people": 50}}, "facts.anchor_people"),
    ({"facts": {"people": 40, "anchor_people": 20, "pivot_only_share": 0.9}},
     "facts.pivot_only_share"),
    ({"tasks": {"fact_choices": 13}}, "tasks.fact_choices"),
    ({"events": {"causal_rules": 40, "event_verbs": 5, "event_objects": 5}}, "events.causal_rules"),
    ({"corpus": {"tokenz": 5}}, "tokenz"),
])
def test_bad_parameters_name_the_key(overrides, key):
    with pytest.raises(pydantic.ValidationError) as err:
        WorldConfig.model_validate(overrides)
    assert key in str(err.value)


def test_fact_task_is_capped_by_pivot_only_facts(tmp_path):
    cfg = config(TINY, facts={"people": 10, "anchor_people": 2, "pivot_only_share": 0.2})
    tasks = build_world(cfg, tmp_path / "w").manifest["tasks"]["facts"]
    assert tasks["dev"]["items"] + tasks["test"]["items"] == 10
    assert tasks["dev"]["items"] == 3
    assert tasks["test"]["stderr_at_p50"] == pytest.approx(0.189, abs=1e-3)
