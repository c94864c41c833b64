"""Build a world into a directory named by its content hash, atomically, or reuse it.

A world is built stage by stage into a temporary sibling directory, which is renamed into
place only when everything (manifest last) is written: a failed build leaves nothing, and
an existing directory is never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from xalign import progress
from xalign.config.schema import WORLD_MODEL, RunConfig, evaluates_world, uses_world
from xalign.config.world import WorldConfig
from xalign.errors import XalignError
from xalign.paths import worlds_home
from xalign.synthetic.parts import (
    write_corpus,
    write_instructions,
    write_lexicon,
    write_pairs,
    write_tasks,
    write_tokenizer,
)
from xalign.synthetic.generate import make_world

#: Bump when the generator's output changes for the same config: it is part of the hash.
GENERATOR_VERSION = "1"
MANIFEST = "manifest.json"

#: A stage writes its files under the world directory and returns its manifest summary.
Stage = Callable[[Path, WorldConfig], dict]
#: The built-in stages, in build order; ``build_world(extra_stages=...)`` appends more.
STAGES: tuple[tuple[str, Stage], ...] = (
    ("lexicon", write_lexicon),
    ("corpus", write_corpus),
    ("pairs", write_pairs),
    ("instructions", write_instructions),
    ("tasks", write_tasks),
    ("tokenizer", write_tokenizer),
)


class WorldError(XalignError):
    """A world cannot be built or read where asked."""


@dataclass(frozen=True)
class WorldResult:
    path: Path
    manifest: dict
    reused: bool


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def content_hash(cfg: WorldConfig, extra_stage_names: Sequence[str] = ()) -> str:
    """sha256 of the config and the generator version (and the names of extra stages, if
    any: a world with a base model is not the same directory as one without)."""
    key = {"config": cfg.model_dump(mode="json"), "generator_version": GENERATOR_VERSION}
    if extra_stage_names:
        key["extra_stages"] = list(extra_stage_names)
    return hashlib.sha256(canonical_json(key).encode()).hexdigest()


def load_manifest(path: Path) -> dict:
    """The manifest of the world at ``path`` (its directory or its manifest.json)."""
    path = Path(path)
    file = path / MANIFEST if path.is_dir() else path
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorldError(f"no world manifest at {file}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise WorldError(f"cannot read the world manifest {file}: {e}") from None


def existing_world(target: Path, digest: str) -> Optional[dict]:
    """The manifest if ``target`` already holds this world; None if ``target`` is free
    (missing or an empty directory); WorldError if something else is there."""
    if not target.exists():
        return None
    if not target.is_dir():
        raise WorldError(f"cannot build a world at {target}: it exists and is not a directory")
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return None
    if MANIFEST not in entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise WorldError(f"cannot build a world at {target}: it is a non-empty directory "
                         f"with no {MANIFEST} (found {shown})")
    manifest = load_manifest(target)
    if manifest.get("content_hash") != digest:
        raise WorldError(f"cannot build a world at {target}: it holds another world "
                         f"(content hash {str(manifest.get('content_hash'))[:16]}, this config "
                         f"has {digest[:16]})")
    return manifest


def file_records(root: Path, paths: Sequence[Path]) -> dict:
    """{relative path: {bytes, sha256}} for ``paths`` under ``root``."""
    return {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size,
                                             "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in sorted(paths)}


def run_stages(world_dir: Path, cfg: WorldConfig, stages: Sequence[tuple[str, Stage]]) -> dict:
    """Run the stages in order; each part's summary gets the files that stage wrote."""
    parts, seen = {}, set()
    with progress.bar("world: building", total=len(stages), unit="part") as shown:
        for name, stage in stages:
            shown.set_description(f"world: {name.replace('_', ' ')}")
            summary = stage(world_dir, cfg)
            written = [p for p in world_dir.rglob("*") if p.is_file() and p not in seen]
            seen.update(written)
            parts[name] = {**summary, "files": file_records(world_dir, written)}
            shown.update(1)
    return parts


def language_table(cfg: WorldConfig, corpus: dict) -> list[dict]:
    world = make_world(cfg)
    table = []
    for lang in world.languages:
        name = world.words[f"language_{lang.code}"]
        table.append({"code": lang.code, "name_in_pivot": name[0],
                      "name_in_itself": name[lang.index],
                      "script": lang.script, "order": lang.order, "is_pivot": lang.is_pivot,
                      "corpus_tokens": corpus["tokens"][lang.code],
                      "corpus_share": corpus["shares"][lang.code]})
    return table


def make_manifest(cfg: WorldConfig, digest: str, parts: dict) -> dict:
    """What a user reads first: parameters, languages, fact and task counts; then every
    part's summary and files (bytes, sha256)."""
    languages = language_table(cfg, parts["corpus"])
    tasks = {task: counts for task, counts in parts["tasks"].items() if task != "files"}
    return {"generator_version": GENERATOR_VERSION, "content_hash": digest,
            "config": cfg.model_dump(mode="json"), "stages": list(parts),
            "languages": languages, "pivot": languages[0]["code"],
            "facts": parts["lexicon"]["facts"], "tasks": tasks, "parts": parts}


def move_into_place(tmp: Path, target: Path, digest: str) -> Optional[dict]:
    """Rename ``tmp`` to ``target``; if a concurrent build got there first with the same
    world, drop ours and return its manifest."""
    try:
        os.replace(tmp, target)
        return None
    except OSError:
        manifest = existing_world(target, digest)
        if manifest is None:
            raise
        shutil.rmtree(tmp)
        return manifest


def build_world(cfg: WorldConfig, out: Optional[Path] = None, *,
                extra_stages: Sequence[tuple[str, Stage]] = ()) -> WorldResult:
    """Build the world of ``cfg`` into ``out`` (default: ``worlds_home()/<hash[:16]>``), or
    reuse it if ``out`` already holds it. ``extra_stages`` run after the built-in ones."""
    stages = [*STAGES, *extra_stages]
    names = [name for name, _ in stages]
    if len(set(names)) != len(names):
        raise WorldError(f"stage names must be unique, got {names}")
    digest = content_hash(cfg, [name for name, _ in extra_stages])
    target = Path(out) if out is not None else worlds_home() / digest[:16]
    manifest = existing_world(target, digest)
    if manifest is not None:
        return WorldResult(target, manifest, reused=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        manifest = make_manifest(cfg, digest, run_stages(tmp, cfg, stages))
        (tmp / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=2,
                                               ensure_ascii=False) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a world is meant to be shared
        found = move_into_place(tmp, target, digest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if found is not None:
        return WorldResult(target, found, reused=True)
    return WorldResult(target, manifest, reused=False)


def ensure_world(cfg: WorldConfig, *, with_model: bool) -> Path:
    """The cached world of ``cfg`` (built if missing), with its base model when asked."""
    from xalign.synthetic.base_model import BASE_MODEL_STAGE

    with_stage = worlds_home() / content_hash(cfg, [BASE_MODEL_STAGE[0]])[:16]
    if not with_model and existing_world(with_stage, content_hash(cfg, [BASE_MODEL_STAGE[0]])) is not None:
        return with_stage  # the same world with its base model is already built: its data serves
    return build_world(cfg, extra_stages=[BASE_MODEL_STAGE] if with_model else []).path


def run_world(cfg: RunConfig, *, evaluating: bool = False) -> Optional[Path]:
    """The built world (made now or reused from the cache) that a run reads, or None: for
    training when it uses the world at all (``uses_world``), for a stand-alone evaluation
    when its tasks or its model come from the world."""
    with_model = cfg.model.name_or_path == WORLD_MODEL
    needed = (evaluates_world(cfg) or with_model) if evaluating else uses_world(cfg)
    return ensure_world(cfg.data.world, with_model=with_model) if needed else None


def evaluation_world(cfg: RunConfig, world_dir: Optional[Path]) -> tuple[Optional[Path], str]:
    """(the world whose tasks are evaluated, None for real tasks; the pivot): the world's
    own pivot (from its manifest) when its tasks are evaluated, else data.pivot or en."""
    eval_world = Path(world_dir) if world_dir is not None and evaluates_world(cfg) else None
    pivot = load_manifest(eval_world)["pivot"] if eval_world is not None else cfg.data.pivot or "en"
    return eval_world, pivot
