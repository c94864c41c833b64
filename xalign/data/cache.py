"""The tokenised data of a run, kept on disk (Arrow, through ``datasets``) and reused.

The key is a hash of everything the tokenised data depends on: the content of every source
read (``sources.source_fingerprint``: file bytes, ``datasets`` fingerprints; the synthetic
world by its manifest), the tokenizer (its full serialised form, not its name), the data
section of the config (sources, languages, names, max_length, the mix) and the seed. Any
change misses; the same inputs load the entry instead of reading and tokenising again.

    $XALIGN_HOME/cache/data/<key[:24]>/   (default ~/.cache/xalign/cache/data)
        pairs/   a save_to_disk dataset: src, tgt (token ids), lang, kept (and neg)
        lm/      a save_to_disk dataset: input_ids, labels, prompt_truncated, kind, src_lang, tgt_lang
        meta.json   the key, the data stats, the pairs' too-long counts

Entries are written to a temporary folder and renamed into place, so concurrent workers
building the same entry never see half of one. Delete the folder to clear the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from xalign.paths import data_cache_home

#: Bump when the built data changes for the same inputs (a change of the builders).
CACHE_VERSION = 1
#: The fields of an LM example kept in the cache (``xalign.data.batches.tokenize_lm``).
LM_COLUMNS = ("input_ids", "labels", "prompt_truncated", "kind", "src_lang", "tgt_lang")


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what the tokenizer does: its class, special tokens and, for a fast
    tokenizer, its whole serialised pipeline (vocabulary, merges, normaliser,
    pre-tokeniser, post-processor); else its sorted vocabulary."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(tokenizer).__name__.encode())
    special = {name: getattr(tokenizer, name, None) for name in
               ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "padding_side")}
    h.update(json.dumps(special, sort_keys=True, default=str).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(sorted(map(str, getattr(tokenizer, "all_special_tokens", []) or []))).encode())
    return h.hexdigest()


def cache_key(parts: dict) -> str:
    payload = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@contextlib.contextmanager
def _quiet_datasets():
    """No progress bars from ``datasets`` while the cache reads or writes."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def entry_path(key: str) -> Path:
    return data_cache_home() / key[:24]


def load_entry(key: str) -> Optional[dict]:
    """The cached parts of ``key`` (pairs columns, LM columns, meta), or None on a miss."""
    path = entry_path(key)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if meta.get("key") != key:
        return None
    import datasets

    with _quiet_datasets():
        pairs = datasets.load_from_disk(str(path / "pairs")).to_dict()
        lm = datasets.load_from_disk(str(path / "lm")).to_dict()
    return {"pairs": pairs, "lm": lm, "meta": meta, "path": str(path)}


def save_entry(key: str, pairs: dict, lm: dict, meta: dict) -> Path:
    """Write the entry (columns as lists) atomically; an entry already there is kept."""
    import datasets

    path = entry_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)     # mkdtemp's 0700 would hide a shared cache from other users
    try:
        ids = (getattr(datasets, "List", None) or datasets.Sequence)(datasets.Value("int32"))
        pair_features = {"src": ids, "tgt": ids, "lang": datasets.Value("string"), "kept": datasets.Value("int64")}
        if "neg" in pairs:
            pair_features["neg"] = ids
        text = datasets.Value("string")
        lm_features = {"input_ids": ids, "labels": ids, "prompt_truncated": datasets.Value("int32"),
                       "kind": text, "src_lang": text, "tgt_lang": text}
        with _quiet_datasets():
            datasets.Dataset.from_dict(pairs, features=datasets.Features(pair_features)).save_to_disk(str(tmp / "pairs"))
            datasets.Dataset.from_dict(lm, features=datasets.Features(lm_features)).save_to_disk(str(tmp / "lm"))
        (tmp / "meta.json").write_text(json.dumps({"key": key, **meta}, indent=1), encoding="utf-8")
        try:
            os.rename(tmp, path)
        except OSError:            # another worker wrote it first (or a stale entry): keep that one
            if (path / "meta.json").is_file():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                shutil.rmtree(path, ignore_errors=True)
                os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
