"""Read a built synthetic world's files into the shapes the trainer uses. The world writes
the same formats as real data (pairs: src/tgt/src_lang/tgt_lang; instructions: Bactrian-X
id/instruction/input/output), so only the language-name table is world-specific."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass(frozen=True)
class WorldData:
    pivot: str
    languages: list[str]           # every language, pivot first
    pairs: list[dict]              # training translation pairs, pivot -> each other language
    instructions: dict[str, dict[str, dict]]   # lang -> id -> item
    lexicon: dict[str, dict[str, str]]         # concept -> lang -> word

    def word(self, concept: str, lang: str) -> str:
        """``lang``'s word for ``concept`` (a lexicon concept such as ``translate`` or
        ``language_qab``)."""
        try:
            return self.lexicon[concept][lang]
        except KeyError:
            raise ValueError(f"the world's lexicon has no word for {concept!r} in {lang!r}") from None

    def answer_in(self, src: str, tgt: str) -> str:
        """The world's "Answer in {name of tgt} :" in the pivot's words (as released: fixed
        words in the pivot, whatever the source language)."""
        p = self.pivot
        return f"{self.word('answer_in', p)} {self.word('language_' + tgt, p)} :"


def load_world_data(world_dir: Path | str) -> WorldData:
    world_dir = Path(world_dir)
    manifest = json.loads((world_dir / "manifest.json").read_text(encoding="utf-8"))
    languages = [lang["code"] for lang in manifest["languages"]]
    pivot = next(lang["code"] for lang in manifest["languages"] if lang["is_pivot"])
    pairs = []
    for lang in languages:
        if lang != pivot:
            pairs += read_jsonl(world_dir / "pairs" / "train" / f"{pivot}-{lang}.jsonl")
    instructions = {lang: {item["id"]: item for item in read_jsonl(world_dir / "instructions" / f"{lang}.jsonl")}
                    for lang in languages}
    lexicon = json.loads((world_dir / "lexicon.json").read_text(encoding="utf-8"))
    return WorldData(pivot, languages, pairs, instructions, lexicon)
